"""vfolder lifecycle for the control socket: create, delete, usage, mount path.

The daemon creates and removes vfolder directories on the backing side itself, so it charges
the ledger exactly as the FUSE handlers would. It walks the fan-out directories with
O_NOFOLLOW descriptors: a symlink planted in a scope through the mount cannot redirect it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import trio

from backends import QuotaLimits
from fusegw.errors import (
    GatewayError,
    InvalidSubpath,
    QuotaScopeExists,
    QuotaScopeNotFound,
    VFolderExists,
    VFolderNotFound,
)
from fusegw.ids import VFolderID
from fusegw.layout import VFOLDER_DEPTH, vfolder_names
from fusegw.ledger import Reservation, ScopeUsage
from fusegw.ledger.growth import mkdir_growth
from fusegw.scopes import Caller, ScopeService

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class VFolderConflict(GatewayError):
    kind = "vfolder/conflict"
    title = "The vfolder's path is taken by something else"
    status = 409
    errno = errno.ENOTDIR


def _opendir_raw(name: str, dir_fd: int | None = None) -> int:
    """Open a directory without following a symlink; anything else there is a conflict."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise VFolderConflict(f"{name} is not a directory") from None
        raise


@contextlib.contextmanager
def _opendir(name: str, dir_fd: int | None = None) -> Iterator[int]:
    fd = _opendir_raw(name, dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


MAX_SYMLINKS = 40  # as the kernel's path walk (ELOOP past it)


def confined_subpath(vfpath: Path, subpath: str) -> list[str]:
    """The names below the vfolder that `subpath` resolves to, walked on the backing side
    with O_NOFOLLOW descriptors: `..` and relative symlinks are followed within the
    vfolder, and an absolute symlink, or a `..` or link that would leave it, is
    InvalidSubpath. Where a name does not exist yet the rest is taken as written (as the
    storage proxy does), so it may not hold `..` or leave the vfolder either."""
    if not isinstance(subpath, str) or "\0" in subpath or subpath.startswith("/"):
        raise InvalidSubpath(f"subpath {subpath!r} must be a relative path",
                             data={"subpath": "not a relative path"})
    todo = [n for n in subpath.split("/") if n not in ("", ".")]
    names: list[str] = []
    fds = [_opendir_raw(str(vfpath))]
    hops = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == "..":
                if not names:
                    raise _escape(subpath)
                names.pop()
                os.close(fds.pop())
                continue
            try:
                st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
            except FileNotFoundError:
                if ".." in todo:
                    raise _escape(subpath) from None
                return [*names, name, *todo]
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                target = os.readlink(name, dir_fd=fds[-1])
                if target.startswith("/") or hops > MAX_SYMLINKS:
                    raise _escape(subpath)
                todo[:0] = [n for n in target.split("/") if n not in ("", ".")]
                continue
            names.append(name)
            if stat.S_ISDIR(st.st_mode):
                fds.append(_opendir_raw(name, fds[-1]))
            elif todo:
                raise InvalidSubpath(f"subpath {subpath!r}: {'/'.join(names)} is not a "
                                     "directory", data={"subpath": "not a directory"})
        return names
    finally:
        for fd in fds:
            os.close(fd)


def _escape(subpath: str) -> InvalidSubpath:
    return InvalidSubpath(f"subpath {subpath!r} leaves the vfolder",
                          data={"subpath": "leaves the vfolder"})


class VFolderService:
    def __init__(self, volume: Path, mountpoint: Path, scopes: ScopeService) -> None:
        self.volume = volume
        self.mountpoint = mountpoint
        self.scopes = scopes
        self.ledger = scopes.ledger

    async def _changed(self, vfid: VFolderID) -> None:
        """Let the mount forget what it cached of the vfolder's path (an absence looked up
        before the create, the directories a delete removed): visible at once, not when the
        kernel's entry timeout runs out."""
        await self.scopes.changed([vfid.quota_scope_id.pathname, *vfolder_names(vfid.hex)])

    def _scope(self, vfid: VFolderID) -> ScopeUsage:
        return self.scopes.get(vfid.quota_scope_id)

    def mount_path(self, vfid: VFolderID, subpath: str = ".") -> str:
        """The vfolder's path under the mount point, with `subpath` resolved inside it."""
        self._existing(vfid)
        inside = confined_subpath(self.volume / vfid.relpath(), subpath)
        return str(Path(self.mountpoint, vfid.relpath(), *inside))

    def usage(self, vfid: VFolderID) -> tuple[int, int]:
        """(used_bytes, file_count) from the ledger: O(1), whatever the backend."""
        scope = self._existing(vfid)
        vf = scope.vfolders.get(vfid.hex)
        return (vf.used_bytes, vf.used_inodes) if vf else (0, 0)

    def _existing(self, vfid: VFolderID) -> ScopeUsage:
        """The vfolder's scope, once its directory is found without following a symlink: a
        link planted at a fan-out level or in the vfolder's place is no vfolder."""
        scope = self._scope(vfid)
        fan1, fan2, leaf = vfolder_names(vfid.hex)
        try:
            with (_opendir(str(self.volume / scope.pathname)) as top,
                  _opendir(fan1, top) as mid, _opendir(fan2, mid) as low):
                st = os.stat(leaf, dir_fd=low, follow_symlinks=False)
        except (VFolderConflict, FileNotFoundError):
            raise VFolderNotFound(f"vfolder {vfid} does not exist") from None
        if not stat.S_ISDIR(st.st_mode):
            raise VFolderNotFound(f"vfolder {vfid} does not exist")
        return scope

    async def create(self, vfid: VFolderID, initial_limit: int, caller: Caller) -> None:
        qsid = vfid.quota_scope_id
        record = self.scopes.registry.scopes.get(qsid.pathname)
        if record is None:
            await self.scopes.create(qsid, QuotaLimits(limit_bytes=initial_limit), caller)
        elif record.qsid != qsid:
            raise QuotaScopeExists(f"quota scope {record.qsid} has the same UUID as {qsid}")
        scope = self._scope(vfid)
        names = vfolder_names(vfid.hex)
        if os.path.lexists(self.volume / vfid.relpath()):
            raise VFolderExists(f"vfolder {vfid} already exists")
        missing = sum(not os.path.lexists(self.volume / qsid.pathname / Path(*names[:i + 1]))
                      for i in range(3))
        blksize = os.stat(self.volume).st_blksize
        with (await self.ledger.reserve(scope, missing * mkdir_growth(blksize), missing) as r,
              _opendir(str(self.volume / qsid.pathname)) as top):
            self._mkdirs(r, top, names, vfid.hex)
        await self._changed(vfid)
        self.scopes.audit(caller, "vfolder.create", qsid, None, {"vfid": str(vfid)})

    def _mkdirs(self, r: Reservation, top: int, names: tuple[str, ...], hex_: str) -> None:
        """mkdir each level below the scope that is missing, charging what each one adds."""
        parent = os.dup(top)
        try:
            for depth, name in enumerate(names, start=2):
                before = os.fstat(parent).st_blocks
                try:
                    os.mkdir(name, 0o755, dir_fd=parent)
                    created = True
                except FileExistsError:
                    if depth == VFOLDER_DEPTH:
                        raise VFolderExists("vfolder already exists") from None
                    created = False
                child = _opendir_raw(name, parent)
                grown = (os.fstat(parent).st_blocks - before) * 512
                r.charge(None, grown, 0)  # fan-out directories belong to no vfolder
                if created:
                    r.charge(hex_ if depth == VFOLDER_DEPTH else None,
                             os.fstat(child).st_blocks * 512, 1, vf_root=True)
                os.close(parent)
                parent = child
        finally:
            os.close(parent)

    async def delete(self, vfid: VFolderID, caller: Caller) -> None:
        """Remove the vfolder's tree, then the fan-out directories it leaves empty. A vfolder
        already gone (its scope too) is done, as the storage proxy answers: the manager's
        background deletion retries, and a refusal would leave its row DELETING forever.
        Something else in its place (a symlink, a file) is no vfolder and stays a 404."""
        try:
            scope = self._existing(vfid)
        except QuotaScopeNotFound:
            return
        except VFolderNotFound:
            if os.path.lexists(self.volume / vfid.relpath()):
                raise
            return
        h = vfid.hex
        fan1, fan2, leaf = vfolder_names(h)
        with (await self.ledger.reserve(scope, growth=False) as r,
              contextlib.ExitStack() as stack):
            fds = [stack.enter_context(_opendir(str(self.volume / scope.pathname)))]
            for name in (fan1, fan2):
                fds.append(stack.enter_context(_opendir(name, fds[-1])))
            before = [os.fstat(fd).st_blocks for fd in fds]
            root_blocks = os.stat(leaf, dir_fd=fds[2], follow_symlinks=False).st_blocks
            tree = self.volume / scope.pathname / fan1 / fan2 / leaf
            if not await self.scopes.backend.remove_vfolder_tree(tree):
                await trio.to_thread.run_sync(lambda: shutil.rmtree(leaf, dir_fd=fds[2]))
            vf = scope.vfolders.pop(h, None)
            if vf is not None:
                r.charge(None, -vf.used_bytes, -vf.used_inodes - 1)
            else:
                r.charge(None, -root_blocks * 512, -1)
            kept = 3
            for parent, name in ((fds[1], fan2), (fds[0], fan1)):
                blocks = os.stat(name, dir_fd=parent, follow_symlinks=False).st_blocks
                try:
                    os.rmdir(name, dir_fd=parent)
                except OSError:  # another vfolder shares it
                    break
                r.charge(None, -blocks * 512, -1)
                kept -= 1
            # what the remaining directories grew or shrank by while entries went
            grown = sum(os.fstat(fd).st_blocks - b
                        for fd, b in zip(fds[:kept], before, strict=False))
            r.charge(None, grown * 512, 0)
        await self._changed(vfid)
        self.scopes.audit(caller, "vfolder.delete", vfid.quota_scope_id, {"vfid": str(vfid)},
                          None)

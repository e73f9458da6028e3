"""The pyfuse3 `Operations` of the gateway: a passthrough with quota admission.

Every handler acts on the backing volume through O_PATH descriptors and `*at` calls that never
follow a symlink, so no request reaches outside the volume. A change that can grow a scope is
admitted by the ledger first (EDQUOT if it would pass a limit), recorded as a change of the
scope, done, and then charged with what the backing filesystem really allocated (the `st_blocks`
difference), so usage stays what `du -s -B1` prints. Syscalls run inline on the event loop: on
a local disk they are shorter than a thread hop, and an admission check and the change it admits
cannot interleave with another request.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyfuse3
import trio

from fusegw.fs import syscalls
from fusegw.fs.attrs import entry_attributes, statvfs_data
from fusegw.fs.guard import REQUESTS, GuardedOperations
from fusegw.fs.inodes import O_PATH_FLAGS, InodeTable, Node
from fusegw.fs.privs import kills_privs, without_privs
from fusegw.fs.settle import LateAllocations
from fusegw.fs.xattrs import UsageXattrs
from fusegw.layout import STATE_DIR, VFOLDER_DEPTH, may_create, vfolder_hex
from fusegw.ledger import Ledger, ScopeUsage
from fusegw.ledger.growth import (
    entry_growth,
    mkdir_growth,
    symlink_growth,
    write_bound,
    xattr_growth,
)

log = logging.getLogger("fusegw.fs")

HIDDEN_AT_ROOT = STATE_DIR.encode()
RENAME_WHITEOUT = 4  # leaves a whiteout (a 0/0 character device) at the old name: an inode

__all__ = ["REQUESTS", "GatewayOperations"]


class UnknownHandle(OSError):
    """A file or directory handle the kernel never got from us (or already released)."""

    def __init__(self, fh: int) -> None:
        super().__init__(errno.EBADF, f"unknown handle {fh}")


@dataclass(slots=True)
class OpenFile:
    node: Node
    uid: int  # the opener: whether its writes keep SUID/SGID (fusegw.fs.privs)
    pid: int


@dataclass(slots=True)
class OpenDir:
    node: Node
    names: list[bytes] | None = None


class GatewayOperations(GuardedOperations):
    """FUSE operations over one volume. `ledger` holds the scopes; `xattrs` answers usage."""

    enable_writeback_cache = False  # a refused write must fail in write(), not at close()

    def __init__(self, root_fd: int, ledger: Ledger, xattrs: UsageXattrs,
                 timeout: float = 1.0) -> None:
        super().__init__()
        self.inodes = InodeTable(root_fd)
        self.blksize = os.fstat(root_fd).st_blksize  # for the growth bound of a new entry
        self.ledger = ledger
        self.xattrs = xattrs
        self.timeout = timeout
        self.late = LateAllocations(ledger)
        ledger.settlers.append(self.late)
        self.files: dict[int, OpenFile] = {}
        self.dirs: dict[int, OpenDir] = {}
        self._next_dir = 1
        self._negative = pyfuse3.EntryAttributes()  # st_ino 0: "no such entry", cacheable
        self._negative.entry_timeout = timeout

    # -- helpers ------------------------------------------------------------------------------

    def _scope(self, node: Node) -> ScopeUsage | None:
        return self.ledger.scopes.get(node.scope) if node.scope is not None else None

    def _attrs(self, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        return entry_attributes(node.ino, st, self.timeout, node.generation)

    def _file(self, fh: int) -> OpenFile:
        try:
            return self.files[fh]
        except KeyError:
            raise UnknownHandle(fh) from None

    def _dir(self, fh: int) -> OpenDir:
        try:
            return self.dirs[fh]
        except KeyError:
            raise UnknownHandle(fh) from None

    @staticmethod
    def _check_name(name: bytes) -> None:
        if name in (b".", b"..") or b"/" in name:
            raise pyfuse3.FUSEError(errno.EINVAL)

    @staticmethod
    def _check_parent(parent: Node, name: bytes) -> None:
        """The volume root is the gateway's: scopes come and go through the control socket."""
        if parent.depth == 0:
            raise pyfuse3.FUSEError(errno.EPERM)
        GatewayOperations._check_name(name)

    @staticmethod
    def _check_new(parent: Node, name: bytes, is_dir: bool) -> None:
        """A new entry must fit the layout: EPERM at the root and, inside a scope, for
        anything but the layout's own directories above a vfolder's root."""
        if not may_create(parent.depth, name, is_dir):
            raise pyfuse3.FUSEError(errno.EPERM)
        GatewayOperations._check_name(name)

    async def _begin(self, node: Node, nbytes: int = 0, ninodes: int = 0,
                     growth: bool = True) -> ScopeUsage | None:
        """Admit a change in node's scope (EDQUOT beyond a limit) and record it as begun."""
        scope = self._scope(node)
        if scope is None:
            return None
        if scope.rebuilding:
            await self.ledger.admit(scope, growth)
        if growth:
            scope.check_growth(nbytes, ninodes)
        self.ledger.begin_change(scope)
        return scope

    def _charge(self, scope: ScopeUsage | None, vf: str | None, nbytes: int, ninodes: int) -> None:
        if scope is not None and (nbytes or ninodes):
            scope.charge(scope.vfolder(vf) if vf else None, nbytes, ninodes)

    def _settle_dir(self, scope: ScopeUsage | None, parent: Node, before: os.stat_result) -> None:
        """Charge what a directory grew or shrank by while entries were added or removed."""
        if scope is not None:
            after = os.fstat(parent.fd)
            self._charge(scope, parent.vf, (after.st_blocks - before.st_blocks) * 512, 0)

    def _own(self, parent_st: os.stat_result, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        """Owner of a new entry: the caller, with the group of a setgid parent."""
        gid = parent_st.st_gid if parent_st.st_mode & stat.S_ISGID else ctx.gid
        return ctx.uid, gid

    def _new_entry(self, parent: Node, name: bytes, scope: ScopeUsage | None,
                   parent_before: os.stat_result) -> tuple[Node, os.stat_result]:
        """Adopt a just-created entry and charge it with the parent's growth."""
        fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        st = os.fstat(fd)
        node = self.inodes.adopt(parent, name, st, fd)
        self._charge_entry(scope, node.vf, node.depth == VFOLDER_DEPTH, st.st_blocks * 512, 1)
        self._settle_dir(scope, parent, parent_before)
        return node, st

    # -- lookup and attributes ----------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        if parent.depth == 0 and name == HIDDEN_AT_ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            return self._negative  # the kernel caches the absence as long as an entry
        return self._attrs(self.inodes.adopt(parent, name, st), st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        return self._attrs(node, os.stat(node.fd))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        if fields.update_size:
            # Shrinking is always allowed; an extending truncate allocates nothing.
            scope = await self._begin(node, growth=False)
            before = os.fstat(node.fd)
            if fh is not None:
                os.ftruncate(fh, attr.st_size)
            else:
                os.truncate(node.proc, attr.st_size)
            self._recharge(scope, node, before, os.fstat(node.fd))
        if fields.update_mode:
            if stat.S_ISLNK(node.mode):
                raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
            os.chmod(node.proc, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            syscalls.fchown_empty(node.fd, uid, gid)
        if fields.update_atime or fields.update_mtime:
            syscalls.utimens_empty(
                node.fd,
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        return self._attrs(node, os.stat(node.fd))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        # readlinkat(fd, "") reads the symlink an O_PATH descriptor refers to.
        return os.readlink(b"", dir_fd=self.inodes.get(inode).fd)

    # -- namespace changes --------------------------------------------------------------------

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, ctx, entry_growth(self.blksize), False,
                                lambda dir_fd: os.mknod(name, mode & ~ctx.umask, rdev,
                                                        dir_fd=dir_fd))

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, ctx, mkdir_growth(self.blksize), True,
                                lambda dir_fd: os.mkdir(name, mode & ~ctx.umask, dir_fd=dir_fd))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, ctx, symlink_growth(target, self.blksize),
                                False, lambda dir_fd: os.symlink(target, name, dir_fd=dir_fd))

    async def _make(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext,
                    growth: int, is_dir: bool,
                    make: Callable[[int], None]) -> pyfuse3.EntryAttributes:
        """Create an entry that is not opened (node, directory, symlink) owned by the caller.

        `growth` is what the new entry and its parent may allocate, for admission.
        """
        parent = self.inodes.get(parent_inode)
        self._check_new(parent, name, is_dir)
        scope = await self._begin(parent, growth, 1)
        pst = os.fstat(parent.fd)
        make(parent.fd)
        try:
            os.chown(name, *self._own(pst, ctx), dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            (os.rmdir if is_dir else os.unlink)(name, dir_fd=parent.fd)
            raise
        node, st = self._new_entry(parent, name, scope, pst)
        return self._attrs(node, st)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        parent = self.inodes.get(parent_inode)
        self._check_new(parent, name, False)
        scope = await self._begin(parent, entry_growth(self.blksize), 1)
        pst = os.fstat(parent.fd)
        fd = self._open_file(name, _backing_flags(flags) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             mode & ~ctx.umask, parent.fd)
        try:
            uid, gid = self._own(pst, ctx)
            if (uid, gid) != (0, 0):
                os.fchown(fd, uid, gid)
            node, st = self._new_entry(parent, name, scope, pst)
        except BaseException:
            os.close(fd)
            raise
        self.files[fd] = OpenFile(node, ctx.uid, ctx.pid)
        return pyfuse3.FileInfo(fh=fd, direct_io=_direct_io(flags)), self._attrs(node, st)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        parent = self.inodes.get(new_parent_inode)
        self._check_new(parent, new_name, False)
        if (node.scope, node.vf) != (parent.scope, parent.vf) or node.vf is None:
            raise pyfuse3.FUSEError(errno.EXDEV)
        scope = await self._begin(parent, entry_growth(self.blksize), 0)
        pst = os.fstat(parent.fd)
        os.link(node.proc, new_name, dst_dir_fd=parent.fd, follow_symlinks=True)
        self._settle_dir(scope, parent, pst)
        st = os.stat(node.fd)
        node.lookups += 1
        return self._attrs(node, st)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.inodes.get(parent_inode)
        self._check_parent(parent, name)
        await self._remove(parent, name, is_dir=False)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.inodes.get(parent_inode)
        self._check_parent(parent, name)
        await self._remove(parent, name, is_dir=True)

    async def _remove(self, parent: Node, name: bytes, is_dir: bool) -> None:
        scope = await self._begin(parent, growth=False)
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        pst = os.fstat(parent.fd)
        if is_dir:
            os.rmdir(name, dir_fd=parent.fd)
        else:
            os.unlink(name, dir_fd=parent.fd)
        self._release_entry(scope, parent, name, st)
        self._settle_dir(scope, parent, pst)

    def _release_entry(self, scope: ScopeUsage | None, parent: Node, name: bytes,
                       st: os.stat_result) -> None:
        """Uncharge an entry that left the tree; a hard link's inode leaves with its last name."""
        if scope is None:
            return
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            return
        vf_root = parent.depth + 1 == VFOLDER_DEPTH and stat.S_ISDIR(st.st_mode)
        vf = _child_vfolder(parent, name) if vf_root else parent.vf
        nbytes = st.st_blocks * 512 if stat.S_ISDIR(st.st_mode) else self.late.release(st)
        self._charge_entry(scope, vf, vf_root, -nbytes, -1)
        if vf_root and vf is not None:
            scope.vfolders.pop(vf, None)

    def _charge_entry(self, scope: ScopeUsage | None, vf: str | None, vf_root: bool,
                      nbytes: int, ninodes: int) -> None:
        """Charge an entry; a vfolder's root counts in the scope's inodes, not the vfolder's."""
        if scope is None:
            return
        if vf_root:
            self._charge(scope, vf, nbytes, 0)
            scope.used_inodes += ninodes
        else:
            self._charge(scope, vf, nbytes, ninodes)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old = self.inodes.get(parent_inode_old)
        new = self.inodes.get(parent_inode_new)
        self._check_parent(old, name_old)
        self._check_parent(new, name_new)
        # Only inside one vfolder, as XFS project quotas: tools fall back to copy and delete.
        if (old.scope, old.vf) != (new.scope, new.vf) or old.vf is None \
                or old.depth < VFOLDER_DEPTH:
            raise pyfuse3.FUSEError(errno.EXDEV)
        replaced = None
        if not flags & pyfuse3.RENAME_EXCHANGE:
            with contextlib.suppress(FileNotFoundError):
                replaced = os.stat(name_new, dir_fd=new.fd, follow_symlinks=False)
        whiteout = 1 if flags & RENAME_WHITEOUT else 0
        adds_entry = replaced is None and not flags & pyfuse3.RENAME_EXCHANGE
        scope = await self._begin(new, entry_growth(self.blksize) if adds_entry else 0, whiteout)
        old_st, new_st = os.fstat(old.fd), os.fstat(new.fd)
        syscalls.renameat2(old.fd, name_old, new.fd, name_new, flags)
        if replaced is not None:
            self._release_entry(scope, new, name_new, replaced)
        if whiteout:
            self._charge(scope, old.vf, 0, 1)
        self._settle_dir(scope, old, old_st)
        if new is not old:
            self._settle_dir(scope, new, new_st)

    # -- files --------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        if not stat.S_ISREG(node.mode):
            raise pyfuse3.FUSEError(errno.ELOOP if stat.S_ISLNK(node.mode) else errno.EPERM)
        if flags & os.O_TRUNC:  # atomic_o_trunc: the kernel truncates through open()
            scope = await self._begin(node, growth=False)
            before = os.stat(node.fd)
            fd = self._open_file(node.proc, _backing_flags(flags))
            self._recharge(scope, node, before, os.fstat(fd))
        else:
            fd = self._open_file(node.proc, _backing_flags(flags))
        self.files[fd] = OpenFile(node, ctx.uid, ctx.pid)
        # Keep the kernel's cached pages when the file has not changed since the last open.
        st = os.fstat(fd)
        stamp = (st.st_mtime_ns, st.st_size)
        keep, node.stamp = node.stamp == stamp, stamp
        return pyfuse3.FileInfo(fh=fd, direct_io=_direct_io(flags), keep_cache=keep)

    def _open_file(self, path: str | bytes, flags: int, mode: int = 0o777,
                   dir_fd: int | None = None) -> int:
        """os.open, giving back cached node descriptors once if the process runs out."""
        try:
            return os.open(path, flags, mode, dir_fd=dir_fd)
        except OSError as e:
            if e.errno != errno.EMFILE or not self.inodes.make_room():
                raise
        return os.open(path, flags, mode, dir_fd=dir_fd)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        of = self._file(fh)
        node = of.node
        scope = self._scope(node)
        if scope is not None and scope.rebuilding:
            await self.ledger.admit(scope, True)
        before = os.fstat(fh)
        if before.st_mode & (stat.S_ISUID | stat.S_ISGID) and kills_privs(of.uid, of.pid):
            self._drop_privs(fh, before)
        if scope is None:
            return os.pwrite(fh, buf, off)
        bound = write_bound(before, off, len(buf))
        scope.check_growth(bound.data + self.late.reserve(before, bound), 0)
        self.ledger.begin_change(scope)
        try:
            written = os.pwrite(fh, buf, off)
        except OSError as e:
            if e.errno == errno.EDQUOT:  # the storage's own limit (a native enforcer)
                scope.refusals += 1
            raise
        self.late.recharge(scope, node, before, os.fstat(fh), bound.extents)
        return written

    @staticmethod
    def _drop_privs(fh: int, st: os.stat_result) -> None:
        """A write by a caller without CAP_FSETID clears SUID (and SGID where it means
        set-group-ID), as the kernel does for local files; on direct-I/O opens it leaves this
        to the filesystem (FUSE_WRITE_KILL_SUIDGID, which pyfuse3 does not pass on)."""
        mode = without_privs(st.st_mode)
        if mode != stat.S_IMODE(st.st_mode):
            os.fchmod(fh, mode)

    async def flush(self, fh: int) -> None:
        # Nothing to do at close(): no writeback cache, no locks of our own. ENOSYS makes the
        # kernel stop sending FLUSH for this mount: one round trip less per close().
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        if self.files.pop(fh, None) is not None:
            os.close(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        self._file(fh)
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)

    # -- directories --------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.inodes.get(inode)
        fh = self._next_dir
        self._next_dir += 1
        self.dirs[fh] = OpenDir(node)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dir(fh)
        parent = handle.node
        if start_id == 0 or handle.names is None:
            handle.names = [b".", b"..", *self._list(parent)]
        names = handle.names
        for i in range(start_id, len(names)):
            name = names[i]
            if i < 2:  # `.` and `..`: the kernel takes no lookup for them
                attrs = self._dot_attrs(parent, name)
                if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                    break
                continue
            try:
                st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
                node = self.inodes.adopt(parent, name, st)
            except FileNotFoundError:
                continue  # gone since the listing; any other error fails the readdir
            if not pyfuse3.readdir_reply(token, name, self._attrs(node, st), i + 1):
                self.inodes.forget(node.ino, 1)  # not sent: the kernel took no lookup
                break

    def _dot_attrs(self, node: Node, name: bytes) -> pyfuse3.EntryAttributes:
        """The directory itself, or its parent (the root's parent is the root: the daemon
        never shows what lies outside the volume)."""
        if name == b"." or node.depth <= 1:
            target = node if name == b"." else self.inodes.root
            return self._attrs(target, os.fstat(target.fd))
        st = os.stat(b"..", dir_fd=node.fd, follow_symlinks=False)
        return entry_attributes(self.inodes.number(node.fd, b"..", st), st, self.timeout)

    @staticmethod
    def _list(parent: Node) -> list[bytes]:
        names = os.listdir(parent.proc.encode())
        if parent.depth == 0:
            names = [n for n in names if n != HIDDEN_AT_ROOT]
        return names

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        node = self._dir(fh).node
        fd = os.open(node.proc, os.O_RDONLY | os.O_DIRECTORY)
        try:
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return statvfs_data(os.statvfs(self.inodes.root.proc))

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True  # default_permissions: the kernel checks

    # -- extended attributes ------------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.inodes.get(inode)
        value = await self.xattrs.get(node, name)
        if value is not None:
            return value
        if self.xattrs.is_reserved(name) or stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return os.getxattr(node.proc, name)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self.inodes.get(inode)
        own = [] if stat.S_ISLNK(node.mode) else [n.encode() for n in os.listxattr(node.proc)]
        return own + self.xattrs.names(node)

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        node = self.inodes.get(inode)
        if self.xattrs.is_reserved(name):
            await self.xattrs.set(node, name, value, ctx)
            return
        if stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        before = os.stat(node.fd)
        scope = await self._begin(node, xattr_growth(before, name, value), 0)
        before = os.stat(node.fd)
        os.setxattr(node.proc, name, value)
        self._settle_node(scope, node, before)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self.inodes.get(inode)
        if self.xattrs.is_reserved(name):
            raise pyfuse3.FUSEError(errno.EPERM)
        if stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        scope = await self._begin(node, growth=False)
        before = os.stat(node.fd)
        os.removexattr(node.proc, name)
        self._settle_node(scope, node, before)

    def _settle_node(self, scope: ScopeUsage | None, node: Node, before: os.stat_result) -> None:
        """Charge an xattr block the backing filesystem added or freed for the node."""
        self._recharge(scope, node, before, os.stat(node.fd))

    def _recharge(self, scope: ScopeUsage | None, node: Node, before: os.stat_result,
                  after: os.stat_result) -> None:
        if scope is not None:
            self.late.recharge(scope, node, before, after)


def _backing_flags(flags: int) -> int:
    """Open flags for the backing file, which is reopened through /proc/self/fd.

    O_DIRECT would demand aligned buffers (and EINVAL); O_NOFOLLOW would refuse the magic
    link itself (ELOOP), while the node is known to be a regular file and the kernel has
    already refused O_NOFOLLOW opens of symlinks.
    """
    return (flags & ~(os.O_DIRECT | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW)) \
        | os.O_CLOEXEC


def _child_vfolder(parent: Node, name: bytes) -> str | None:
    prefix = parent.prefix
    return vfolder_hex(prefix[:2], prefix[2:], name.decode("ascii", "replace"))


def _direct_io(flags: int) -> bool:
    """Write-only opens bypass the kernel's page cache of the mount, as O_DIRECT ones do.

    A write-only descriptor cannot be mapped, so nothing needs the cached pages; in exchange
    the kernel writes straight from the caller's buffer (no second page cache beside the
    backing file's) and skips the `security.capability` GETXATTR it sends before every
    cached write. Read-write opens stay cached: MAP_SHARED is refused on direct-I/O files.
    """
    return bool(flags & os.O_DIRECT) or flags & os.O_ACCMODE == os.O_WRONLY

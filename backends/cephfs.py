"""`cephfs`: CephFS directory quotas, set and read through Ceph's virtual extended attributes.

CephFS keeps recursive statistics on every directory and enforces quotas set on any of them
(doc/cephfs/quota.rst in the Ceph tree): `ceph.quota.max_bytes` and `ceph.quota.max_files`
set a limit (0 removes it; reading a quota attribute of a directory with no quota at all
gives ENODATA), `ceph.dir.rbytes` is the recursive sum of file sizes below the directory,
`ceph.dir.rfiles`/`ceph.dir.rsubdirs` the recursive counts of files and directories. The
clients (kernel >= 4.17, ceph-fuse, libcephfs) refuse writes and creations past a limit with
EDQUOT, so the gateway leaves both limits to CephFS and reports these figures.

Inodes. CephFS counts a directory among its own `rsubdirs` (the MDS starts every new
directory's rstat at rsubdirs = 1, "itself"), and the clients refuse a creation once
`rfiles + rsubdirs >= max_files`. The gateway's ledger counts the entries *below* a scope.
So that a limit means the same on both sides, `max_files` is set to `limit_inodes + 1` and
`used_inodes` is reported as `rfiles + rsubdirs - 1` (= `ceph.dir.rentries - 1`), the limit as
`max_files - 1`.

Bytes are `ceph.dir.rbytes`, i.e. logical file sizes (what CephFS's quota counts), not
allocated blocks as the gateway's own ledger counts them; rstats propagate lazily up the tree,
so fresh writes may show in `describe_scope` only after a while (CephFS enforcement is likewise
"imprecise": writers are stopped shortly after crossing the limit).

All xattr access goes through `self.xattrs` (get(path, name) -> bytes, set(path, name, value)),
which defaults to os.getxattr/os.setxattr and is called off the event loop; tests substitute
an emulation. An OSError becomes BackendError with its errno (EACCES/EPERM typically mean the
client's cephx capability lacks the `p` flag needed to set quotas).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import trio

from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage
from backends.xfs import find_mount  # the shared /proc/self/mountinfo parser

log = logging.getLogger("backends.cephfs")

CEPH_SUPER_MAGIC = 0x00C36400
FUSE_SUPER_MAGIC = 0x65735546

MAX_BYTES = "ceph.quota.max_bytes"
MAX_FILES = "ceph.quota.max_files"
RBYTES = "ceph.dir.rbytes"
RFILES = "ceph.dir.rfiles"
RSUBDIRS = "ceph.dir.rsubdirs"


class XattrAccess(Protocol):
    """Blocking extended-attribute access; raises OSError like os.getxattr/os.setxattr."""

    def get(self, path: str, name: str) -> bytes: ...

    def set(self, path: str, name: str, value: bytes) -> None: ...


class OSXattrs:
    """The real thing: the kernel client or ceph-fuse answers the `ceph.*` names."""

    def get(self, path: str, name: str) -> bytes:
        return os.getxattr(path, name)

    def set(self, path: str, name: str, value: bytes) -> None:
        os.setxattr(path, name, value)


class _Statfs(ctypes.Structure):
    # struct statfs begins with f_type (__fsword_t, a long) on Linux; the rest is room.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


def fs_magic(path: str | os.PathLike[str]) -> int:
    """statfs(2) f_type of `path` (Python's os.statvfs does not expose it)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = _Statfs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int(buf.f_type) & 0xFFFFFFFF


def _oserror(op: str, path: str, name: str, e: OSError) -> BackendError:
    return BackendError(f"{op} {name} on {path}: {e.strerror or e}", e.errno or errno.EIO)


def _parse_int(raw: bytes, path: str, name: str) -> int:
    try:
        value = int(raw.decode().strip().rstrip("\0"))
    except (UnicodeDecodeError, ValueError):
        raise BackendError(f"{name} on {path} is not a number: {raw!r}") from None
    if value < 0:
        raise BackendError(f"{name} on {path} is negative: {value}")
    return value


class CephFSBackend(QuotaBackend):
    """Scopes are plain CephFS directories with quota xattrs; CephFS enforces both limits.

    Options: `emulated` (bool) skips the statfs check of `check_volume`, for tests that run
    the backend over an emulation of the xattrs on another filesystem.
    """

    name = "cephfs"
    enforces_bytes = True
    network = True
    enforces_inodes = True
    option_keys = frozenset({"emulated"})

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None, *,
                 xattrs: XattrAccess | None = None) -> None:
        super().__init__(volume, options)
        self.xattrs: XattrAccess = xattrs if xattrs is not None else OSXattrs()

    # -- helpers ---------------------------------------------------------------------------

    def _get_int(self, path: str, name: str, missing: int | None = None) -> int:
        """An integer attribute; ENODATA gives `missing` where that is how CephFS says 0."""
        try:
            raw = self.xattrs.get(path, name)
        except OSError as e:
            if e.errno == errno.ENODATA and missing is not None:
                return missing
            raise _oserror("getxattr", path, name, e) from None
        return _parse_int(raw, path, name)

    def _set_int(self, path: str, name: str, value: int) -> None:
        try:
            self.xattrs.set(path, name, str(value).encode())
        except OSError as e:
            raise _oserror(f"setxattr {value} as", path, name, e) from None

    def _set_limits(self, path: str, limits: QuotaLimits, fresh: bool) -> None:
        """Set both quota attributes. They are two calls: if the second fails, the first is
        put back, so a refused update leaves the old limits (the gateway keeps those too).
        `fresh`: a new directory, which has no quota, so zeros need not be written."""
        if limits.limit_bytes < 0 or limits.limit_inodes < 0:
            raise BackendError(f"negative limit: {limits}", errno.EINVAL)
        max_files = limits.limit_inodes + 1 if limits.limit_inodes else 0
        done: list[tuple[str, int]] = []
        try:
            for name, value in ((MAX_BYTES, limits.limit_bytes), (MAX_FILES, max_files)):
                if fresh and not value:
                    continue
                old = 0 if fresh else self._get_int(path, name, missing=0)
                self._set_int(path, name, value)
                done.append((name, old))
        except BaseException:
            for name, old in reversed(done):
                try:
                    self._set_int(path, name, old)
                except BackendError as e:
                    log.error("restoring %s on %s after a failed update: %s", name, path, e)
            raise

    def _existing_dir(self, pathname: str) -> str:
        path = str(self.scope_path(pathname))
        if not os.path.isdir(path):
            raise BackendError(f"scope directory {path} does not exist", errno.ENOENT)
        return path

    # -- QuotaBackend ----------------------------------------------------------------------

    async def check_volume(self) -> None:
        """The volume must be on CephFS (statfs magic 0x00C36400, or a ceph-fuse mount) and
        answer `ceph.dir.rbytes`; with `emulated` only the latter is asked."""
        volume = str(self.volume)
        if not os.path.isdir(volume):
            raise BackendError(f"volume {volume} is not a directory", errno.ENOENT)
        if not self.options.get("emulated"):
            try:
                magic = await trio.to_thread.run_sync(fs_magic, volume)
            except OSError as e:
                raise BackendError(f"statfs {volume}: {e.strerror}", e.errno or errno.EIO
                                   ) from None
            if magic != CEPH_SUPER_MAGIC and not (
                    magic == FUSE_SUPER_MAGIC and await _is_ceph_fuse(volume)):
                raise BackendError(
                    f"volume {volume} is not on CephFS (statfs type {magic:#010x}, CephFS is "
                    f"{CEPH_SUPER_MAGIC:#010x}): the cephfs backend needs a CephFS mount",
                    errno.EINVAL)
        await trio.to_thread.run_sync(self._get_int, volume, RBYTES)

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """mkdir, then the quota xattrs (a new directory has none, so zeros are not set);
        if setting one fails the directory goes again, taking any quota set with it."""
        path = str(self.scope_path(pathname))
        if limits.limit_bytes < 0 or limits.limit_inodes < 0:
            raise BackendError(f"negative limit: {limits}", errno.EINVAL)
        try:
            os.mkdir(path, 0o755)
        except OSError as e:
            raise BackendError(f"mkdir {path}: {e.strerror}", e.errno or errno.EIO) from None
        try:
            await trio.to_thread.run_sync(self._set_limits, path, limits, True)
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(os.rmdir, path)
                except OSError as e:
                    log.error("undo after failed create of %s: rmdir: %s", path, e)
            raise

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        path = str(self.scope_path(pathname))
        if not os.path.isdir(path):
            return None

        def read() -> QuotaUsage:
            rbytes = self._get_int(path, RBYTES)
            entries = self._get_int(path, RFILES) + self._get_int(path, RSUBDIRS)
            max_bytes = self._get_int(path, MAX_BYTES, missing=0)
            max_files = self._get_int(path, MAX_FILES, missing=0)
            return QuotaUsage(used_bytes=rbytes, limit_bytes=max_bytes or None,
                              used_inodes=max(entries - 1, 0),
                              limit_inodes=max_files - 1 if max_files else None)

        return await trio.to_thread.run_sync(read)

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        path = self._existing_dir(pathname)
        await trio.to_thread.run_sync(self._set_limits, path, limits, False)

    async def unset_scope(self, pathname: str) -> None:
        path = self._existing_dir(pathname)
        await trio.to_thread.run_sync(self._set_limits, path, QuotaLimits(), False)

    async def delete_scope(self, pathname: str) -> None:
        """Refuse (ENOTEMPTY) while the scope holds entries; the quota goes with the inode."""
        self.remove_empty_scope_dir(pathname)


async def _is_ceph_fuse(path: str) -> bool:
    try:
        entry = await trio.to_thread.run_sync(find_mount, path)
    except BackendError:
        return False
    return entry.fstype in ("fuse.ceph-fuse", "fuse.ceph", "ceph")

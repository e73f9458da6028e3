"""The pyfuse3 `Operations` of the gateway: a passthrough with quota admission.

Every handler acts on the backing volume through O_PATH descriptors and `*at` calls that never
follow a symlink, so no request reaches outside the volume. A change that can grow a scope
reserves its upper bound with the ledger first (EDQUOT if it would pass a limit; the bounds are
`fusegw.ledger.growth`'s), is made, and settles with what the backing filesystem really
allocated (the `st_blocks` difference), so usage stays what `du -s -B1` prints.

Requests are served concurrently. What may wait on the disk (a cold read, a write, a change
of the namespace, a listing, fsync) runs in a bounded pool of worker threads
(`fusegw.fs.offload`), so a slow request never holds up the others and the disk sees many at
once; a read the page cache can answer is served inline (`preadv2(RWF_NOWAIT)`), as are the
calls that only look at an inode the daemon holds open (getattr, getxattr). The inode table
and the ledger are touched only on the event loop's thread. A measured change holds the change
locks of the inodes it measures (`fusegw.fs.locks`); reservations keep admission exact however
many changes are in flight.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pyfuse3

from fusegw.fs import backing, syscalls
from fusegw.fs.attrs import entry_attributes, scope_statvfs, statvfs_data
from fusegw.fs.guard import IN_FLIGHT, REQUESTS, GuardedOperations
from fusegw.fs.inodes import InodeTable, Node
from fusegw.fs.locks import InodeLocks, Key
from fusegw.fs.offload import Offload
from fusegw.fs.privs import kills_privs, without_privs
from fusegw.fs.xattrs import UsageXattrs
from fusegw.layout import STATE_DIR, VFOLDER_DEPTH, may_create, vfolder_hex
from fusegw.ledger import Ledger, Reservation, ScopeUsage
from fusegw.ledger.growth import (
    EXTENTS_PER_WRITE,
    WriteBound,
    entry_growth,
    mkdir_growth,
    symlink_growth,
    write_bound,
    xattr_growth,
)
from fusegw.ledger.late import LateAllocations
from fusegw.ledger.usage import leaves_with_name

log = logging.getLogger("fusegw.fs")

HIDDEN_AT_ROOT = STATE_DIR.encode()
RENAME_WHITEOUT = 4  # leaves a whiteout (a 0/0 character device) at the old name: an inode
FALLOCATE_MODES = (0, syscalls.FALLOC_FL_KEEP_SIZE,
                   syscalls.FALLOC_FL_PUNCH_HOLE | syscalls.FALLOC_FL_KEEP_SIZE,
                   syscalls.FALLOC_FL_ZERO_RANGE,
                   syscalls.FALLOC_FL_ZERO_RANGE | syscalls.FALLOC_FL_KEEP_SIZE)
"""fallocate modes passed on: allocate (keeping the size or not), punch a hole, zero a range.
Collapsing or inserting a range moves data between vfolders' accounting rules no better than
a copy would; those answer EOPNOTSUPP, which tools take as "not here"."""

T = TypeVar("T")

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
    entries: list[tuple[bytes, os.stat_result]] | None = None


class _Pin:
    """Keeps nodes' descriptors open while a worker thread uses them (the LRU of the inode
    table skips busy nodes)."""

    __slots__ = ("nodes",)

    def __init__(self, *nodes: Node) -> None:
        self.nodes = nodes

    def __enter__(self) -> None:
        for node in self.nodes:
            node.busy += 1

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.busy -= 1


class GatewayOperations(GuardedOperations):
    """FUSE operations over one volume. `ledger` holds the scopes; `xattrs` answers usage."""

    enable_writeback_cache = False  # a refused write must fail in write(), not at close()
    # Readahead and asynchronous direct I/O are background requests; the kernel allows 12 in
    # flight unless told otherwise (pyfuse3 patch 0004), fewer than the 16 workers that serve
    # them on a slow disk. On this machine's fast disk 12 and 64 read alike (4-job sequential
    # read, 4 runs each: 535-1829 vs 659-2362 MiB/s; README, "Many readers").
    max_background = 64
    congestion_threshold = 48

    def __init__(self, root_fd: int, ledger: Ledger, xattrs: UsageXattrs,
                 timeout: float = 1.0, offload: Offload | None = None,
                 hidden_in_scope: frozenset[bytes] = frozenset()) -> None:
        super().__init__()
        # names hidden where they are: the gateway's state at the root, the storage's own
        # files in a scope directory (QuotaBackend.scope_hidden_names)
        self.hidden = {0: frozenset({HIDDEN_AT_ROOT}), 1: hidden_in_scope}
        self.inodes = InodeTable(root_fd)
        self.blksize = os.fstat(root_fd).st_blksize  # for the growth bound of a new entry
        self.ledger = ledger
        self.xattrs = xattrs
        self.timeout = timeout
        self.offload = offload or Offload(alone=lambda: IN_FLIGHT.n <= 1)
        self.locks = InodeLocks()
        self.late = LateAllocations(ledger)
        ledger.settlers.append(self.late)
        self.files: dict[int, OpenFile] = {}
        self._no_nowait: set[int] = set()  # open files whose backing refuses RWF_NOWAIT
        self.dirs: dict[int, OpenDir] = {}
        self._next_dir = 1
        self._negative = pyfuse3.EntryAttributes()  # st_ino 0: "no such entry", cacheable
        self._negative.entry_timeout = timeout

    # -- helpers ------------------------------------------------------------------------------

    def _scope(self, node: Node) -> ScopeUsage | None:
        return self.ledger.scope(node.scope)

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

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread, once more after giving back cached descriptors if
        the process ran out of them (EMFILE)."""
        try:
            return await self.offload.run(fn, *args)
        except OSError as e:
            if e.errno != errno.EMFILE or not self.inodes.make_room():
                raise
        return await self.offload.run(fn, *args)

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

    @staticmethod
    def _dir_grown(r: Reservation, parent: Node, before: os.stat_result,
                   after: os.stat_result) -> None:
        """Settle what a directory grew or shrank by while entries were added or removed."""
        r.charge(parent.vf, (after.st_blocks - before.st_blocks) * 512, 0)

    def _own(self, parent_st: os.stat_result, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        """Owner of a new entry: the caller, with the group of a setgid parent."""
        gid = parent_st.st_gid if parent_st.st_mode & stat.S_ISGID else ctx.gid
        return ctx.uid, gid

    def _adopt_new(self, r: Reservation, parent: Node, name: bytes, made: backing.Made,
                   parent_before: os.stat_result) -> tuple[Node, os.stat_result]:
        """Adopt a just-created entry and settle it and the parent's growth."""
        fd, st, parent_after = made
        node = self.inodes.adopt(parent, name, st, fd)
        r.charge(node.vf, st.st_blocks * 512, 1, vf_root=node.depth == VFOLDER_DEPTH)
        self._dir_grown(r, parent, parent_before, parent_after)
        return node, st

    async def _lock_entry(self, base: list[Key], parent: Node, name: bytes
                          ) -> tuple[list[Key], os.stat_result | None]:
        """Take the change locks of `base` and of the inode parent/name names now (its lstat,
        or None if there is none): a removal must not overlap a write it would uncharge."""
        held = await self.locks.acquire(base)
        try:
            while True:
                st = backing.stat_at(parent.fd, name)  # inline: the kernel just looked it up
                if st is None:
                    return held, None
                key = (st.st_dev, st.st_ino)
                if self.locks.try_add(held, key):
                    return held, st
                self.locks.release(held)
                held = []
                held = await self.locks.acquire([*base, key])
                again = backing.stat_at(parent.fd, name)
                if again is not None and (again.st_dev, again.st_ino) == key:
                    return held, again
                self.locks.release(held)  # the name went to another inode: once more
                held = []
                held = await self.locks.acquire(base)
        except BaseException:
            self.locks.release(held)
            raise

    # -- lookup and attributes ----------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        if name in self.hidden.get(parent.depth, ()):
            raise pyfuse3.FUSEError(errno.ENOENT)
        with _Pin(parent):
            st = await self.offload.run(backing.stat_at, parent.fd, name)
        if st is None:
            return self._negative  # the kernel caches the absence as long as an entry
        return self._attrs(self.inodes.adopt(parent, name, st), st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        return self._attrs(node, os.stat(node.fd))  # an inode we hold: never waits on disk

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        if fields.update_size:
            await self._truncate(node, fh, attr.st_size)
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

    async def _truncate(self, node: Node, fh: int | None, size: int) -> None:
        """Shrinking is always allowed; an extending truncate allocates nothing."""
        await self._shrink(node, backing.truncate, fh, node.proc, size)

    async def _shrink(self, node: Node, fn: Callable[..., tuple[T, os.stat_result]],
                      *args: Any) -> T:
        """A change that can only shrink the node (truncate, open with O_TRUNC), made under
        its change lock and charged as measured: fn(*args) returns (result, stat after)."""
        async with self.locks.hold(node.lockkey):
            scope = self._scope(node)
            with await self.ledger.reserve(scope, growth=False):
                before = os.stat(node.fd)
                with _Pin(node):
                    result, after = await self._run(fn, *args)
                self._recharge(scope, node, before, after)
        return result

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
        async with self.locks.hold(parent.lockkey):
            with await self.ledger.reserve(self._scope(parent), growth, 1) as r:
                pst = os.fstat(parent.fd)
                with _Pin(parent):
                    made = await self._run(backing.make_entry, parent.fd, name, make,
                                           self._own(pst, ctx), is_dir)
                node, st = self._adopt_new(r, parent, name, made, pst)
        return self._attrs(node, st)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        parent = self.inodes.get(parent_inode)
        self._check_new(parent, name, False)
        async with self.locks.hold(parent.lockkey):
            with await self.ledger.reserve(self._scope(parent), entry_growth(self.blksize),
                                           1) as r:
                pst = os.fstat(parent.fd)
                opening = _backing_flags(flags) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                with _Pin(parent):
                    fd, made = await self._run(backing.create_file, parent.fd, name, opening,
                                               mode & ~ctx.umask, self._own(pst, ctx))
                try:
                    node, st = self._adopt_new(r, parent, name, made, pst)
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
        async with self.locks.hold(parent.lockkey):
            with await self.ledger.reserve(self._scope(parent), entry_growth(self.blksize),
                                           0) as r:
                pst = os.fstat(parent.fd)
                with _Pin(node, parent):
                    after = await self.offload.run(backing.link, node.proc, parent.fd,
                                                   new_name)
                self._dir_grown(r, parent, pst, after)
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
        held, st = await self._lock_entry([parent.lockkey], parent, name)
        try:
            if st is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            with await self.ledger.reserve(self._scope(parent), growth=False) as r:
                pst = os.fstat(parent.fd)
                with _Pin(parent):
                    after = await self.offload.run(backing.remove, parent.fd, name, is_dir)
                self._release_entry(r, parent, name, st)
                self._dir_grown(r, parent, pst, after)
        finally:
            self.locks.release(held)

    def _release_entry(self, r: Reservation, parent: Node, name: bytes,
                       st: os.stat_result) -> None:
        """Uncharge an entry that left the tree; a hard link's inode leaves with its last name."""
        if r.scope is None or not leaves_with_name(st):
            return
        vf_root = parent.depth + 1 == VFOLDER_DEPTH and stat.S_ISDIR(st.st_mode)
        vf = vfolder_hex(parent.prefix, name.decode("ascii", "replace")) if vf_root \
            else parent.vf
        nbytes = st.st_blocks * 512 if stat.S_ISDIR(st.st_mode) else self.late.release(st)
        r.charge(vf, -nbytes, -1, vf_root)
        if vf_root and vf is not None:
            r.scope.vfolders.pop(vf, None)

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
        base = [old.lockkey, new.lockkey]
        if flags & pyfuse3.RENAME_EXCHANGE:
            held, replaced = await self.locks.acquire(base), None
        else:
            held, replaced = await self._lock_entry(base, new, name_new)
        try:
            await self._rename_locked(old, name_old, new, name_new, flags, replaced)
        finally:
            self.locks.release(held)

    async def _rename_locked(self, old: Node, name_old: bytes, new: Node, name_new: bytes,
                             flags: int, replaced: os.stat_result | None) -> None:
        whiteout = 1 if flags & RENAME_WHITEOUT else 0
        adds_entry = replaced is None and not flags & pyfuse3.RENAME_EXCHANGE
        growth = entry_growth(self.blksize) if adds_entry else 0
        with await self.ledger.reserve(self._scope(new), growth, whiteout) as r:
            old_st, new_st = os.fstat(old.fd), os.fstat(new.fd)
            with _Pin(old, new):
                old_after, new_after = await self.offload.run(
                    backing.rename, old.fd, name_old, new.fd, name_new, flags)
            if replaced is not None:
                self._release_entry(r, new, name_new, replaced)
            if whiteout:
                r.charge(old.vf, 0, 1)
            self._dir_grown(r, old, old_st, old_after)
            if new is not old:
                self._dir_grown(r, new, new_st, new_after)

    # -- files --------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        if not stat.S_ISREG(node.mode):
            raise pyfuse3.FUSEError(errno.ELOOP if stat.S_ISLNK(node.mode) else errno.EPERM)
        if flags & os.O_TRUNC:  # atomic_o_trunc: the kernel truncates through open()
            fd, st = await self._open_truncating(node, flags)
        else:  # an inode we hold: opening it reads nothing from the disk
            fd = self._open_file(node.proc, _backing_flags(flags))
            st = os.fstat(fd)
        self.files[fd] = OpenFile(node, ctx.uid, ctx.pid)
        # Keep the kernel's cached pages when the file has not changed since the last open.
        stamp = (st.st_mtime_ns, st.st_size)
        keep, node.stamp = node.stamp == stamp, stamp
        return pyfuse3.FileInfo(fh=fd, direct_io=_direct_io(flags), keep_cache=keep)

    async def _open_truncating(self, node: Node, flags: int) -> tuple[int, os.stat_result]:
        fd = await self._shrink(node, backing.open_file, node.proc, _backing_flags(flags))
        return fd, os.fstat(fd)

    def _open_file(self, path: str | bytes, flags: int) -> int:
        """os.open, giving back cached node descriptors once if the process runs out."""
        try:
            return os.open(path, flags)
        except OSError as e:
            if e.errno != errno.EMFILE or not self.inodes.make_room():
                raise
        return os.open(path, flags)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Inline while reads are quick (the disk's or the cache's, `fusegw.fs.offload`);
        once they wait, from the page cache inline when it holds the range (RWF_NOWAIT
        answers EAGAIN instead of waiting) and the rest from a worker thread. (pyfuse3 takes
        any buffer, whatever its stub says: no copy into bytes.)"""
        pool = self.offload
        if pool.inline_now(backing.pread):
            return pool.inline(os.pread, fh, size, off, key=backing.pread)
        buf = bytearray(size)
        try:
            n = 0 if fh in self._no_nowait else os.preadv(fh, [buf], off, os.RWF_NOWAIT)
        except BlockingIOError:  # nothing cached at `off`
            n = 0
        except OSError as e:  # a backing filesystem without RWF_NOWAIT (FUSE, NFS, ...)
            if e.errno != errno.EOPNOTSUPP:
                raise
            self._no_nowait.add(fh)
            n = 0
        else:
            if n == size:
                return cast(bytes, buf)
            if off + n >= os.fstat(fh).st_size:  # the end of the file, not a cache miss
                return cast(bytes, memoryview(buf)[:n])
        # the rest into the same buffer: no copy of what the cache gave
        n += await pool.in_thread(backing.pread_into, fh, memoryview(buf)[n:], off + n,
                                  key=backing.pread)
        return cast(bytes, buf if n == size else memoryview(buf)[:n])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        of = self._file(fh)
        node = of.node
        async with self.locks.hold(node.lockkey):
            before = os.fstat(fh)
            if before.st_mode & (stat.S_ISUID | stat.S_ISGID) and kills_privs(of.uid, of.pid):
                self._drop_privs(fh, before)
            scope = self._scope(node)
            if scope is None:
                return (await self.offload.run(backing.pwrite, fh, buf, off))[0]
            bound = write_bound(before, off, len(buf))
            with await self.ledger.reserve(scope, bound.data + self.late.reserve(before, bound)):
                try:
                    written, after = await self.offload.run(backing.pwrite, fh, buf, off)
                except OSError as e:
                    if e.errno == errno.EDQUOT:  # the storage's own limit (a native enforcer)
                        scope.refusals += 1
                    raise
                self.late.recharge(scope, node, before, after, bound.extents)
        return written

    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """Admitted and charged as a write of the range would be; a punched hole frees
        blocks but may split an extent, so it is admitted with room for that."""
        if mode not in FALLOCATE_MODES:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        node = self._file(fh).node
        async with self.locks.hold(node.lockkey):
            before = os.fstat(fh)
            scope = self._scope(node)
            if mode & syscalls.FALLOC_FL_PUNCH_HOLE:
                bound = WriteBound(0, EXTENTS_PER_WRITE)
            else:
                bound = write_bound(before, offset, length)
            with await self.ledger.reserve(scope, bound.data + self.late.reserve(before, bound)):
                after = await self.offload.run(backing.fallocate, fh, mode, offset, length)
                if scope is not None:
                    self.late.recharge(scope, node, before, after, bound.extents)

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
        handle = self.files.pop(fh, None)
        if handle is not None:
            self._no_nowait.discard(fh)
            os.close(fh)
            self.ledger.commit_soon(self._scope(handle.node))

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._file(fh)
        await self.offload.run(os.fdatasync if datasync else os.fsync, fh)
        self.ledger.commit_soon(self._scope(handle.node))

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
        if start_id == 0 or handle.entries is None:
            hidden = self.hidden.get(parent.depth, frozenset())
            with _Pin(parent):
                handle.entries = await self.offload.run(backing.list_dir, parent.fd, hidden)
        entries = handle.entries
        for i in range(start_id, len(entries) + 2):
            if i < 2:  # `.` and `..`: the kernel takes no lookup for them
                name = b"." if i == 0 else b".."
                if not pyfuse3.readdir_reply(token, name, self._dot_attrs(parent, name), i + 1):
                    break
                continue
            name, st = entries[i - 2]
            try:
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

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        node = self._dir(fh).node
        fd = os.open(node.proc, os.O_RDONLY | os.O_DIRECTORY)
        try:
            await self.offload.run(os.fsync, fd)
        finally:
            os.close(fd)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return statvfs_data(os.statvfs(self.inodes.root.proc))

    async def statfs_inode(self, inode: int, ctx: pyfuse3.RequestContext
                           ) -> pyfuse3.StatvfsData:
        """df of a path in a scope shows the scope (size = limit, used = usage, available =
        what is left), as XFS project quotas and ceph-fuse do; elsewhere the volume."""
        disk = os.statvfs(self.inodes.root.proc)
        node = self.inodes.by_ino.get(inode)
        scope = self._scope(node) if node is not None else None
        return scope_statvfs(scope, disk) if scope is not None else statvfs_data(disk)

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
        await self._set_xattr(node, name, value)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self.inodes.get(inode)
        if self.xattrs.is_reserved(name):
            raise pyfuse3.FUSEError(errno.EPERM)
        if stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        await self._set_xattr(node, name, None)

    async def _set_xattr(self, node: Node, name: bytes, value: bytes | None) -> None:
        """Set (or, for None, remove) a backing xattr, charging the block the backing
        filesystem added or freed for it."""
        async with self.locks.hold(node.lockkey):
            before = os.stat(node.fd)
            growth = xattr_growth(before, name, value) if value is not None else 0
            scope = self._scope(node)
            with await self.ledger.reserve(scope, growth, 0, growth=value is not None):
                with _Pin(node):
                    after = await self.offload.run(backing.set_xattr, node.proc, name, value)
                self._recharge(scope, node, before, after)

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


def _direct_io(flags: int) -> bool:
    """Write-only opens bypass the kernel's page cache of the mount, as O_DIRECT ones do.

    A write-only descriptor cannot be mapped, so nothing needs the cached pages; in exchange
    the kernel writes straight from the caller's buffer (no second page cache beside the
    backing file's) and skips the `security.capability` GETXATTR it sends before every
    cached write. Read-write opens stay cached: MAP_SHARED is refused on direct-I/O files.
    """
    return bool(flags & os.O_DIRECT) or flags & os.O_ACCMODE == os.O_WRONLY

"""The inode table: FUSE inode numbers ↔ backing inodes, with lookup counts and forget.

Each known inode holds an O_PATH descriptor of its backing inode, as libfuse's passthrough_ll
does, and every operation reaches the inode itself without resolving a path.

The FUSE number is derived from the backing inode (`fusegw.fs.numbers`), so `st_ino` through
the mount is the backing `st_ino` and stays the same across forget, drop_caches and restarts
(rsync -H, tar's incremental mode, git's index and backup tools depend on that). pyfuse3 sends
one number as both the node id and `st_ino`, so the node id is that number; the inode
generation from the file handle goes with it as the FUSE generation.

A descriptor per inode the kernel knows is unbounded (readdirplus hands the kernel every entry
of a listing), so where the backing filesystem has file handles a node keeps its handle and
only the most recently used nodes keep an open descriptor: the others are reopened from their
handle (open_by_handle_at), which still never resolves a path and answers ESTALE once the inode
is gone. The handle, which carries the inode generation, is also the node's key.
"""

from __future__ import annotations

import errno
import os
import resource
from collections import OrderedDict

import pyfuse3

from fusegw.fs import numbers, syscalls
from fusegw.layout import VFOLDER_DEPTH, vfolder_hex

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
Key = tuple[int, int | bytes]
"""A backing inode's identity: (st_dev, its file handle, or st_ino where there is none)."""


class StaleInode(OSError):
    """The kernel named an inode the table does not know (any more): ESTALE, as NFS does."""

    def __init__(self, ino: int) -> None:
        super().__init__(errno.ESTALE, f"unknown inode {ino}")


class Node:
    """One inode the kernel knows. `scope`/`vf` name where its usage is charged.

    depth is the distance from the volume root (capped above the vfolder depth); `prefix`
    carries the fan-out names while depth < 4 so the vfolder root can spell its folder hex.
    """

    __slots__ = ("_fd", "bino", "busy", "depth", "generation", "handle", "ino", "key",
                 "lookups", "mode", "natural", "prefix", "scope", "stamp", "table", "vf")

    def __init__(self, ino: int, fd: int, key: tuple[int, int | bytes], mode: int,
                 table: InodeTable | None = None, handle: bytes | None = None) -> None:
        self.ino = ino
        self._fd = fd  # -1 while closed; then `handle` reopens it
        self.table = table
        self.handle = handle
        self.key = key
        self.bino = 0  # the backing st_ino (st_dev is key[0])
        self.busy = 0  # calls in worker threads using its descriptor: it stays open
        self.mode = mode
        self.generation = numbers.generation(handle)
        self.natural = True  # `ino` is the number derived from the backing inode
        self.lookups = 0
        self.depth = 0
        self.prefix = ""
        self.scope: str | None = None
        self.vf: str | None = None
        self.stamp: tuple[int, int] | None = None  # (mtime_ns, size) at the last open

    @property
    def fd(self) -> int:
        """An O_PATH descriptor of the backing inode (reopened from its handle if closed)."""
        if self.table is None or self.handle is None:
            return self._fd
        return self.table.descriptor(self)

    @property
    def lockkey(self) -> tuple[int, int]:
        """(st_dev, st_ino) of the backing inode: the key of its change lock (fusegw.fs.locks)."""
        return self.key[0], self.bino

    @property
    def proc(self) -> str:
        return f"/proc/self/fd/{self.fd}"


def place(node: Node, parent: Node, name: bytes) -> None:
    """Set where a child of `parent` named `name` sits in the layout and who pays for it."""
    depth = parent.depth + 1
    node.depth = min(depth, VFOLDER_DEPTH + 1)
    node.scope = parent.scope
    node.vf = parent.vf
    if depth == 1:
        node.scope = name.decode("ascii", "replace")
    elif depth in (2, 3):
        node.prefix = parent.prefix + name.decode("ascii", "replace")
    elif depth == VFOLDER_DEPTH:
        prefix = parent.prefix
        node.vf = vfolder_hex(prefix, name.decode("ascii", "replace"))


def _open_budget() -> int:
    """How many evictable descriptors to keep: three quarters of the descriptor limit.

    Reopening by handle costs far more than a descriptor (the kernel reconnects the dentry's
    path), so keep as many as we may; the quarter left is for open files and sockets, and
    `make_room` gives back more when opening a file runs out (EMFILE).
    """
    return max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] * 3 // 4)


class InodeTable:
    def __init__(self, root_fd: int, max_open: int | None = None) -> None:
        st = os.fstat(root_fd)
        root = Node(pyfuse3.ROOT_INODE, root_fd, (st.st_dev, st.st_ino), st.st_mode)
        root.lookups = 1
        root.bino = st.st_ino
        self.root = root
        self.numbers = numbers.Numbering(st)
        self.by_ino: dict[int, Node] = {root.ino: root}
        self.by_key: dict[Key, Node] = {root.key: root}
        self.max_open = max_open or _open_budget()
        self._open: OrderedDict[int, Node] = OrderedDict()  # reopenable nodes, LRU first
        self.mount_id = -1
        self._mount_fd = self._handles_usable(root_fd)

    def _handles_usable(self, root_fd: int) -> int:
        """A descriptor for open_by_handle_at, or -1 where handles do not work (no export
        support, no CAP_DAC_READ_SEARCH): then every node keeps its descriptor."""
        try:
            mount_fd = os.open(f"/proc/self/fd/{root_fd}",
                               os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return -1
        try:
            handle, mount_id = syscalls.name_to_handle(root_fd, b"")
            os.close(syscalls.open_by_handle(mount_fd, handle, O_PATH_FLAGS))
        except OSError:
            os.close(mount_fd)
            return -1
        self.mount_id = mount_id
        return mount_fd

    def __len__(self) -> int:
        return len(self.by_ino)

    def get(self, ino: int) -> Node:
        try:
            return self.by_ino[ino]
        except KeyError:
            raise StaleInode(ino) from None

    def descriptor(self, node: Node) -> int:
        if node._fd >= 0:
            self._open.move_to_end(node.ino)
            return node._fd
        assert node.handle is not None
        node._fd = syscalls.open_by_handle(self._mount_fd, node.handle, O_PATH_FLAGS)
        self._track(node)
        return node._fd

    def _track(self, node: Node) -> None:
        self._open[node.ino] = node
        self._evict(len(self._open) - self.max_open)

    def _evict(self, count: int) -> int:
        """Close the `count` least recently used descriptors, skipping those a worker thread
        is using (closed under it, the number could name another file by the time it runs)."""
        evicted = 0
        for _ in range(len(self._open)):
            if evicted >= count:
                break
            _, old = self._open.popitem(last=False)
            if old.busy:
                self._open[old.ino] = old
                continue
            os.close(old._fd)
            old._fd = -1
            evicted += 1
        return evicted

    def make_room(self) -> bool:
        """Close the older half of the reopenable descriptors; False if there were none."""
        return self._evict(max(1, len(self._open) // 2)) > 0

    def _name_handle(self, parent_fd: int, name: bytes, fd: int | None
                     ) -> tuple[bytes | None, bytes | None]:
        """The entry's file handle (None where there is none), and the same handle if it can
        reopen the node through our mount descriptor.

        btrfs subvolumes have their own st_dev but share the mount, so the mount id decides:
        a filesystem mounted inside the volume keeps descriptors instead.
        """
        if self._mount_fd < 0:
            return None, None
        try:
            handle, mount_id = (syscalls.name_to_handle(fd, b"") if fd is not None
                                else syscalls.name_to_handle(parent_fd, name))
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EOVERFLOW, errno.EPERM, errno.EACCES):
                return None, None
            raise
        return handle, (handle if mount_id == self.mount_id else None)

    def find(self, dir_fd: int, name: bytes) -> Node | None:
        """The node of the backing entry dir_fd/name if the kernel knows it, else None (also
        when there is no such entry)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            _, handle = self._name_handle(dir_fd, name, None)
        except OSError:
            return None
        return self.by_key.get((st.st_dev, handle if handle is not None else st.st_ino))

    def number(self, dir_fd: int, name: bytes, st: os.stat_result) -> int:
        """The FUSE number of a backing entry without taking a lookup (readdir's `..`)."""
        if (st.st_dev, st.st_ino) == self.root.key:
            return self.root.ino
        known = self.find(dir_fd, name)
        if known is not None:
            return known.ino
        raw, _ = self._name_handle(dir_fd, name, None)
        return self.numbers.natural(st, raw) or self.numbers.spare(self.by_ino)

    def adopt(self, parent: Node, name: bytes, st: os.stat_result, fd: int | None = None) -> Node:
        """The node for a backing inode just seen under parent/name, one lookup taken.

        `fd`, if given, is an O_PATH descriptor the caller opened; it is closed when the inode
        is already known. Without one, a node with a file handle opens no descriptor until it
        is used.
        """
        try:
            raw, handle = self._name_handle(parent.fd, name, fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        key: Key = (st.st_dev, handle if handle is not None else st.st_ino)
        node = self.by_key.get(key)
        if node is not None:
            if fd is not None:
                os.close(fd)
            node.lookups += 1
            return node
        if fd is None and handle is None:
            fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        node = self._place_new(key, st, raw, handle, -1 if fd is None else fd)
        place(node, parent, name)
        if handle is not None and fd is not None:
            self._track(node)
        return node

    def _place_new(self, key: Key, st: os.stat_result, raw: bytes | None,
                   handle: bytes | None, fd: int) -> Node:
        """A node for a backing inode not in the table, under its natural number.

        The number is taken by another node only when the backing filesystem reused a freed
        inode's number (same device, same st_ino, another generation: the kernel's old inode
        of that number is dead, and it attaches the new entry to the same node id, so the node
        carries on with its lookups added up), or when two devices' numbers meet (then a
        spare number keeps them apart).
        """
        ino = self.numbers.natural(st, raw)
        old = self.by_ino.get(ino) if ino is not None else None
        lookups = 0
        if old is not None and old.natural and old.key[0] == key[0] and old is not self.root:
            lookups = old.lookups
            self._drop(old)
        elif old is not None or ino is None:
            ino = None
        node = Node(ino or self.numbers.spare(self.by_ino), fd, key, st.st_mode, self, handle)
        node.natural = ino is not None
        node.bino = st.st_ino
        node.lookups = lookups + 1
        ino = node.ino
        self.by_ino[ino] = node
        self.by_key[key] = node
        return node

    def forget(self, ino: int, count: int) -> None:
        node = self.by_ino.get(ino)
        if node is None or node is self.root:
            return
        node.lookups -= count
        if node.lookups <= 0:
            self._drop(node)

    def _drop(self, node: Node) -> None:
        if self.by_ino.get(node.ino) is node:
            del self.by_ino[node.ino]
        if self.by_key.get(node.key) is node:
            del self.by_key[node.key]
        self._open.pop(node.ino, None)
        if node._fd >= 0:
            os.close(node._fd)
            node._fd = -1

    def close_all(self) -> None:
        for node in self.by_ino.values():
            if node is not self.root and node._fd >= 0:
                os.close(node._fd)
                node._fd = -1
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1
        self._open.clear()
        self.by_ino = {self.root.ino: self.root}
        self.by_key = {self.root.key: self.root}

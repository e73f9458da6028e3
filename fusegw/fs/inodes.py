"""The inode table: FUSE inode numbers ↔ backing inodes, with lookup counts and forget.

Each known inode holds an O_PATH descriptor of its backing inode, as libfuse's passthrough_ll
does. The descriptor pins the backing inode, so (st_dev, st_ino) cannot be reused while the
kernel may still name the FUSE inode, and every operation reaches the inode itself without
resolving a path. The FUSE number is our own counter, never the backing st_ino: btrfs
subvolumes repeat inode numbers.

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

from fusegw.fs import syscalls
from fusegw.layout import VFOLDER_DEPTH, vfolder_hex

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Node:
    """One inode the kernel knows. `scope`/`vf` name where its usage is charged.

    depth is the distance from the volume root (capped above the vfolder depth); `prefix`
    carries the fan-out names while depth < 4 so the vfolder root can spell its folder hex.
    """

    __slots__ = ("_fd", "depth", "handle", "ino", "key", "lookups", "mode", "prefix", "scope",
                 "stamp", "table", "vf")

    def __init__(self, ino: int, fd: int, key: tuple[int, int | bytes], mode: int,
                 table: InodeTable | None = None, handle: bytes | None = None) -> None:
        self.ino = ino
        self._fd = fd  # -1 while closed; then `handle` reopens it
        self.table = table
        self.handle = handle
        self.key = key
        self.mode = mode
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
        node.vf = vfolder_hex(prefix[:2], prefix[2:], name.decode("ascii", "replace"))


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
        self.root = root
        self.by_ino: dict[int, Node] = {root.ino: root}
        self.by_key: dict[tuple[int, int | bytes], Node] = {root.key: root}
        self._next_ino = pyfuse3.ROOT_INODE + 1
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
        return self.by_ino[ino]

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
        evicted = 0
        while evicted < count and self._open:
            _, old = self._open.popitem(last=False)
            os.close(old._fd)
            old._fd = -1
            evicted += 1
        return evicted

    def make_room(self) -> bool:
        """Close the older half of the reopenable descriptors; False if there were none."""
        return self._evict(max(1, len(self._open) // 2)) > 0

    def _handle(self, parent: Node, name: bytes, st: os.stat_result,
                fd: int | None) -> bytes | None:
        """The node's file handle, where it can be reopened through our mount descriptor.

        btrfs subvolumes have their own st_dev but share the mount, so the mount id decides:
        a filesystem mounted inside the volume keeps descriptors instead.
        """
        if self._mount_fd < 0:
            return None
        try:
            handle, mount_id = (syscalls.name_to_handle(fd, b"") if fd is not None
                                else syscalls.name_to_handle(parent.fd, name))
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EOVERFLOW, errno.EPERM, errno.EACCES):
                return None
            raise
        return handle if mount_id == self.mount_id else None

    def find(self, dir_fd: int, name: bytes) -> Node | None:
        """The node of the backing entry dir_fd/name if the kernel knows it, else None (also
        when there is no such entry)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            handle = None
            if self._mount_fd >= 0:
                handle, mount_id = syscalls.name_to_handle(dir_fd, name)
                handle = handle if mount_id == self.mount_id else None
        except OSError:
            return None
        return self.by_key.get((st.st_dev, handle if handle is not None else st.st_ino))

    def adopt(self, parent: Node, name: bytes, st: os.stat_result, fd: int | None = None) -> Node:
        """The node for a backing inode just seen under parent/name, one lookup taken.

        `fd`, if given, is an O_PATH descriptor the caller opened; it is closed when the inode
        is already known. Without one, a node with a file handle opens no descriptor until it
        is used.
        """
        try:
            handle = self._handle(parent, name, st, fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        key: tuple[int, int | bytes] = (st.st_dev, handle if handle is not None else st.st_ino)
        node = self.by_key.get(key)
        if node is not None:
            if fd is not None:
                os.close(fd)
            node.lookups += 1
            return node
        if fd is None and handle is None:
            fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        node = Node(self._next_ino, -1 if fd is None else fd, key, st.st_mode, self, handle)
        self._next_ino += 1
        place(node, parent, name)
        node.lookups = 1
        self.by_ino[node.ino] = node
        self.by_key[key] = node
        if handle is not None and fd is not None:
            self._track(node)
        return node

    def forget(self, ino: int, count: int) -> None:
        node = self.by_ino.get(ino)
        if node is None or node is self.root:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self.by_ino[ino]
            if self.by_key.get(node.key) is node:
                del self.by_key[node.key]
            self._open.pop(ino, None)
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

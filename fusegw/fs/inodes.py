"""The inode table: FUSE inode numbers ↔ backing inodes, with lookup counts and forget.

Each known inode holds an O_PATH descriptor of its backing inode, as libfuse's passthrough_ll
does. The descriptor pins the backing inode, so (st_dev, st_ino) cannot be reused while the
kernel may still name the FUSE inode, and every operation reaches the inode itself without
resolving a path. The FUSE number is our own counter, never the backing st_ino: btrfs
subvolumes repeat inode numbers.
"""

from __future__ import annotations

import os

import pyfuse3

from fusegw.layout import VFOLDER_DEPTH, vfolder_hex

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Node:
    """One inode the kernel knows. `scope`/`vf` name where its usage is charged.

    depth is the distance from the volume root (capped above the vfolder depth); `prefix`
    carries the fan-out names while depth < 4 so the vfolder root can spell its folder hex.
    """

    __slots__ = ("depth", "fd", "ino", "key", "lookups", "mode", "prefix", "scope", "vf")

    def __init__(self, ino: int, fd: int, key: tuple[int, int], mode: int) -> None:
        self.ino = ino
        self.fd = fd
        self.key = key
        self.mode = mode
        self.lookups = 0
        self.depth = 0
        self.prefix = ""
        self.scope: str | None = None
        self.vf: str | None = None

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


class InodeTable:
    def __init__(self, root_fd: int) -> None:
        st = os.fstat(root_fd)
        root = Node(pyfuse3.ROOT_INODE, root_fd, (st.st_dev, st.st_ino), st.st_mode)
        root.lookups = 1
        self.root = root
        self.by_ino: dict[int, Node] = {root.ino: root}
        self.by_key: dict[tuple[int, int], Node] = {root.key: root}
        self._next_ino = pyfuse3.ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self.by_ino)

    def get(self, ino: int) -> Node:
        return self.by_ino[ino]

    def adopt(self, parent: Node, name: bytes, st: os.stat_result, fd: int | None = None) -> Node:
        """The node for a backing inode just seen under parent/name, one lookup taken.

        `fd`, if given, is an O_PATH descriptor the caller opened; it is closed when the inode
        is already known.
        """
        key = (st.st_dev, st.st_ino)
        node = self.by_key.get(key)
        if node is not None:
            if fd is not None:
                os.close(fd)
            node.lookups += 1
            return node
        if fd is None:
            fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        node = Node(self._next_ino, fd, key, st.st_mode)
        self._next_ino += 1
        place(node, parent, name)
        node.lookups = 1
        self.by_ino[node.ino] = node
        self.by_key[key] = node
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
            os.close(node.fd)

    def close_all(self) -> None:
        for node in self.by_ino.values():
            if node is not self.root:
                os.close(node.fd)
        self.by_ino = {self.root.ino: self.root}
        self.by_key = {self.root.key: self.root}

"""Stable FUSE inode numbers, derived from the backing inode.

On the volume's own filesystem (its `st_dev`), the number is the backing `st_ino` itself, so
`ls -i` through the mount and on the backing volume agree. Another device inside the volume
repeats inode numbers: every btrfs subvolume (a scope on the btrfs backend) numbers its inodes
from 256. There the number is composed from what tells the devices apart and the inode:

    bits 40..62  the device's tag: the btrfs subvolume id from the file handle (stable across
                 mounts and reboots), else a hash of st_dev (stable while the device number is)
    bits  0..39  st_ino

An inode that does not fit (a tag or st_ino too large, or a number already held by another live
inode) gets a spare number from a reserved range: unique, though not stable. The volume root is
FUSE's root, 1.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Container

INO_BITS = 40
TAG_BITS = 23
SPARE_TAG = (1 << TAG_BITS) - 1
SPARE_BASE = SPARE_TAG << INO_BITS
BTRFS_HANDLE_TYPES = (0x4D, 0x4E, 0x4F)  # FILEID_BTRFS_{WITHOUT_PARENT,WITH_PARENT,_ROOT}


def _handle_type(handle: bytes) -> int:
    return int.from_bytes(handle[:4], "little", signed=True)


def generation(handle: bytes | None) -> int:
    """The inode generation a file handle carries, where its layout is known (else 0)."""
    if handle is None:
        return 0
    kind, body = _handle_type(handle), handle[4:]
    offset = {1: 4, 2: 4, 0x81: 8, 0x82: 8}.get(kind)  # FILEID_INO32_GEN*, FILEID_INO64_GEN*
    if kind in BTRFS_HANDLE_TYPES:
        offset = 16  # objectid u64, root_objectid u64, gen u32
    if offset is None or len(body) < offset + 4:
        return 0
    return int.from_bytes(body[offset:offset + 4], "little")


def device_tag(st: os.stat_result, handle: bytes | None) -> int:
    """What tells a foreign device's inodes apart from another's: btrfs's subvolume id."""
    if handle is not None and _handle_type(handle) in BTRFS_HANDLE_TYPES and len(handle) >= 20:
        return int.from_bytes(handle[12:20], "little")
    return 1 + (st.st_dev * 0x9E3779B1) % (SPARE_TAG - 1)


class Numbering:
    """The natural numbers of one volume, and spare ones where the natural one cannot be."""

    def __init__(self, root: os.stat_result) -> None:
        self.root_dev = root.st_dev
        self.root_ino = root.st_ino
        self._spare = itertools.count(SPARE_BASE + 1)

    def natural(self, st: os.stat_result, handle: bytes | None) -> int | None:
        """The stable number of a backing inode; None if it has none (then use `spare`)."""
        if st.st_dev == self.root_dev:
            if st.st_ino == self.root_ino:
                return 1
            return st.st_ino if st.st_ino != 1 else None
        tag = device_tag(st, handle)
        if tag >= SPARE_TAG or st.st_ino >> INO_BITS:
            return None
        return tag << INO_BITS | st.st_ino

    def spare(self, taken: Container[int]) -> int:
        """A number no live node holds."""
        while True:
            ino = next(self._spare)
            if ino not in taken:
                return ino

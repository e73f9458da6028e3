"""Upper bounds of what a change can allocate: what admission checks against the limit.

"No byte past the limit is ever stored" holds only if every change is admitted against at
least what it may allocate, including what the backing filesystem allocates on its own:
directory blocks for a new entry, an extended-attribute block, and extent-tree blocks that
ext4 allocates only at writeback. The actual change is measured afterwards (`st_blocks` before
and after) and charged; these bounds only decide admission, so they err on the large side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DIR_ENTRY_BLOCKS = 3
"""Blocks a directory may grow by when one entry is added: ext4 turning a full linear block
into an htree adds two (the root and a second leaf), a leaf split adds one, and a split of a
full index node one more."""

XATTR_OVERHEAD = 64
"""Header and entry bytes of an ext4 extended-attribute block around one name and value."""

EXTENTS_PER_WRITE = 2
"""Extents one write may add: writing into the middle of a hole or an unwritten extent splits
it into up to three."""

EXTENT_BYTES = 12
TRACK_SIZE = 64 * 2**20
"""Below this, a file written sequentially stays within ext4's four in-inode extents."""


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def write_growth(st: os.stat_result, offset: int, length: int) -> int:
    """Upper bound of the data bytes a write of `length` at `offset` can newly allocate.

    A write inside a file whose blocks are all allocated allocates nothing; otherwise every
    block the range touches beyond the allocated extent may be new (all of them when the file
    has holes).
    """
    if length <= 0:
        return 0
    blk = st.st_blksize or 4096
    end = offset + length
    covered = _round_up(st.st_size, blk)
    first = offset - offset % blk
    last = _round_up(end, blk)
    if st.st_blocks * 512 >= covered:  # no holes
        return max(0, last - max(first, covered))
    return last - first


def entry_growth(blksize: int) -> int:
    """Upper bound of what a directory grows by when an entry is added to it."""
    return DIR_ENTRY_BLOCKS * (blksize or 4096)


FAST_SYMLINK_MAX = 59
"""ext4 keeps symlink targets shorter than 60 bytes in the inode itself."""


def mkdir_growth(blksize: int) -> int:
    """A new directory's own first block, and its entry in the parent."""
    return (blksize or 4096) + entry_growth(blksize)


def symlink_growth(target: bytes, blksize: int) -> int:
    """A symlink's block where its target does not fit the inode, and its entry."""
    own = (blksize or 4096) if len(target) > FAST_SYMLINK_MAX else 0
    return own + entry_growth(blksize)


def xattr_growth(st: os.stat_result, name: bytes, value: bytes) -> int:
    """Upper bound of what setting one extended attribute allocates: the attribute block (a
    copy, where the block is shared), or, for a value larger than a block, the blocks of the
    inode ext4 keeps it in and the entry that names it."""
    blk = st.st_blksize or 4096
    need = _round_up(len(name) + len(value) + XATTR_OVERHEAD, blk)
    return need if need <= blk else need + blk


def is_sparse(st: os.stat_result) -> bool:
    return st.st_blocks * 512 < _round_up(st.st_size, st.st_blksize or 4096)


def extents_added(st: os.stat_result, offset: int, length: int) -> int:
    """Upper bound of the extents a write adds to the file's extent tree at writeback.

    Overwriting allocated blocks adds none; an append to a file without holes continues its
    last extent (below TRACK_SIZE ext4's four in-inode extents hold it; past it, count one per
    write); anything else (a hole made or filled) may split an extent.
    """
    if length <= 0:
        return 0
    if not is_sparse(st) and offset <= st.st_size:
        if offset + length <= st.st_size:
            return 0
        return 1 if offset + length > TRACK_SIZE else 0
    return EXTENTS_PER_WRITE


def tree_growth(extents: int, blksize: int) -> int:
    """Upper bound of the extent-tree bytes `extents` new extents can need: one leaf per
    leaf's worth (the first one when the inode's four in-place extents overflow), and an index
    block on top of them (when the inode's four in-place index entries overflow)."""
    if extents <= 0:
        return 0
    per_leaf = (blksize - EXTENT_BYTES) // EXTENT_BYTES
    leaves = -(-extents // per_leaf)
    return (leaves + 1) * blksize


@dataclass(frozen=True, slots=True)
class WriteBound:
    """What a write may allocate: its data blocks now, extent-tree blocks at writeback."""

    data: int
    extents: int


def write_bound(st: os.stat_result, offset: int, length: int) -> WriteBound:
    return WriteBound(write_growth(st, offset, length), extents_added(st, offset, length))

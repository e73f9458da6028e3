"""Blocks the backing filesystem allocates after write() returned.

ext4's delayed allocation counts a write's data blocks in `st_blocks` at once, but an
extent-tree block (a sparse file past four extents, a file past 512 MiB) is allocated only at
writeback, with no request to the gateway. Files written in a way that can need one are kept
here with the blocks the ledger has charged for them; when their scope has gone quiet they are
written back (fdatasync, in a worker thread) and re-measured, and only then may the scope's
dirty mark be cleared. Whatever is later charged or uncharged for such a file is measured
against what was charged, so the ledger and `du` meet again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio

from fusegw.fs.inodes import Node
from fusegw.ledger import Ledger, ScopeUsage

TRACK_SIZE = 64 * 2**20  # below this, sequential writes stay within ext4's in-inode extents


@dataclass(slots=True)
class Unsettled:
    node: Node
    scope: ScopeUsage
    vf: str | None
    blocks: int  # st_blocks the ledger has charged for this inode
    changes: int = 0


def may_allocate_later(before: os.stat_result, offset: int, after: os.stat_result) -> bool:
    """A write that made a hole, wrote into a sparse file, or grew a large file."""
    blk = after.st_blksize or 4096
    sparse = after.st_blocks * 512 < -(-after.st_size // blk) * blk
    return offset > before.st_size or sparse or after.st_size > TRACK_SIZE


class LateAllocations:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.entries: dict[tuple[int, int], Unsettled] = {}

    def recharge(self, scope: ScopeUsage, node: Node, before: os.stat_result,
                 after: os.stat_result, track: bool) -> None:
        """Charge a file's change in blocks, against what was charged for it if it is here."""
        if not after.st_nlink:  # an unlinked file no longer counts, as for du
            return
        key = (after.st_dev, after.st_ino)
        entry = self.entries.get(key)
        base = entry.blocks if entry is not None else before.st_blocks
        delta = (after.st_blocks - base) * 512
        if delta:
            scope.charge(scope.vfolder(node.vf) if node.vf else None, delta, 0)
        if entry is not None:
            entry.blocks = after.st_blocks
            entry.changes += 1
        elif track:
            self.entries[key] = Unsettled(node, scope, node.vf, after.st_blocks)

    def release(self, st: os.stat_result) -> int:
        """The blocks to uncharge for a file whose last name went."""
        entry = self.entries.pop((st.st_dev, st.st_ino), None)
        return entry.blocks if entry is not None else st.st_blocks

    def pending(self, scope: ScopeUsage) -> bool:
        return any(e.scope is scope for e in self.entries.values())

    async def settle(self, scope: ScopeUsage) -> None:
        """Write back the scope's tracked files and charge what writeback allocated."""
        for key, entry in list(self.entries.items()):
            if entry.scope is not scope:
                continue
            changes = entry.changes
            try:
                fd = os.open(entry.node.proc, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.entries.pop(key, None)  # gone beside the gateway
                continue
            try:
                await trio.to_thread.run_sync(os.fdatasync, fd)
                if self.entries.get(key) is entry:
                    self._measure(key, entry, changes, os.fstat(fd))
            finally:
                os.close(fd)

    def settle_now(self) -> None:
        """settle() for every scope, inline: at unmount, before the last snapshot."""
        for key, entry in list(self.entries.items()):
            try:
                fd = os.open(entry.node.proc, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.fdatasync(fd)
                self._measure(key, entry, entry.changes, os.fstat(fd))
            finally:
                os.close(fd)

    def forget_scope(self, scope: ScopeUsage) -> None:
        """After a rescan the scope's figures are the disk's: nothing to settle any more."""
        for key in [k for k, e in self.entries.items() if e.scope is scope]:
            del self.entries[key]

    def _measure(self, key: tuple[int, int], entry: Unsettled, changes: int,
                 st: os.stat_result) -> None:
        if st.st_nlink and st.st_blocks != entry.blocks:
            self.ledger.begin_change(entry.scope)
            vf = entry.scope.vfolder(entry.vf) if entry.vf else None
            entry.scope.charge(vf, (st.st_blocks - entry.blocks) * 512, 0)
            entry.blocks = st.st_blocks
        if entry.changes == changes:  # not written again while it was written back
            del self.entries[key]

"""Blocks the backing filesystem allocates after write() returned.

ext4's delayed allocation counts a write's data blocks in `st_blocks` at once, but an
extent-tree block (a sparse file past four extents, a file past 512 MiB) is allocated only at
writeback, with no request to the gateway. Files written in a way that can need one are kept
here with the blocks the ledger has charged for them; when their scope has gone quiet they are
written back (fdatasync, in a worker thread) and re-measured, and only then may the scope's
dirty mark be cleared. Whatever is later charged or uncharged for such a file is measured
against what was charged, so the ledger and `du` meet again.

So that writeback can never take a scope past its limit, such a write is admitted with room for
the extent-tree blocks it may cause (`fusegw.ledger.growth.tree_growth`), and that room is
charged as a reservation until the file is measured after writeback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import trio

from fusegw.ledger.growth import WriteBound, tree_growth
from fusegw.ledger.ledger import Ledger
from fusegw.ledger.usage import ScopeUsage


class Tracked(Protocol):
    """What a tracked file must offer: a path that reopens it, and the vfolder it counts in.
    (The FUSE layer's node; the ledger knows nothing else of it.)"""

    @property
    def proc(self) -> str: ...

    vf: str | None


@dataclass(slots=True)
class Unsettled:
    node: Tracked
    scope: ScopeUsage
    vf: str | None
    blocks: int  # st_blocks the ledger has charged for this inode
    reserved: int = 0  # bytes charged beyond `blocks` for extent-tree blocks to come
    extents: int = 0  # extents the writes since the last measurement may have added
    changes: int = 0


class LateAllocations:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.entries: dict[tuple[int, int], Unsettled] = {}

    def reserve(self, st: os.stat_result, bound: WriteBound) -> int:
        """Bytes to admit beyond a write's data for the extent-tree blocks it may cause."""
        if not bound.extents:
            return 0
        entry = self.entries.get((st.st_dev, st.st_ino))
        extents, reserved = (entry.extents, entry.reserved) if entry is not None else (0, 0)
        return max(0, tree_growth(extents + bound.extents, st.st_blksize or 4096) - reserved)

    def recharge(self, scope: ScopeUsage, node: Tracked, before: os.stat_result,
                 after: os.stat_result, extents: int = 0) -> None:
        """Charge a file's change in blocks, against what was charged for it if it is here;
        a write that may add `extents` is kept here, with its reservation charged."""
        if not after.st_nlink:  # an unlinked file no longer counts, as for du
            return
        key = (after.st_dev, after.st_ino)
        entry = self.entries.get(key)
        if entry is None and extents:
            entry = self.entries[key] = Unsettled(node, scope, node.vf, before.st_blocks)
        vf = scope.vfolder(node.vf) if node.vf else None
        if entry is None:
            delta = (after.st_blocks - before.st_blocks) * 512
            if delta:
                scope.charge(vf, delta, 0)
            return
        entry.extents += extents
        reserved = max(entry.reserved, tree_growth(entry.extents, after.st_blksize or 4096))
        delta = (after.st_blocks - entry.blocks) * 512 + reserved - entry.reserved
        if delta:
            scope.charge(vf, delta, 0)
        entry.blocks, entry.reserved = after.st_blocks, reserved
        entry.changes += 1

    def release(self, st: os.stat_result) -> int:
        """The bytes to uncharge for a file whose last name went."""
        entry = self.entries.pop((st.st_dev, st.st_ino), None)
        return entry.blocks * 512 + entry.reserved if entry is not None else st.st_blocks * 512

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
        """Charge what writeback allocated; the reservation goes unless written meanwhile."""
        unchanged = entry.changes == changes
        if st.st_nlink:
            reserved = 0 if unchanged else entry.reserved
            delta = (st.st_blocks - entry.blocks) * 512 + reserved - entry.reserved
            if delta:
                self.ledger.begin_change(entry.scope)
                vf = entry.scope.vfolder(entry.vf) if entry.vf else None
                entry.scope.charge(vf, delta, 0)
            entry.blocks, entry.reserved = st.st_blocks, reserved
        if unchanged:
            del self.entries[key]

"""The figures the ledger keeps for one scope and for each of its vfolders, and the rules of
what an entry charges where.

Admission is *reserve, then settle*: growth is reserved against the limits before the change
is made (`ScopeUsage.reserve`, EDQUOT if used + reserved + growth would pass a limit), and once
it is made the reservation is settled with what the disk really allocated. With changes running
concurrently (in worker threads) no two can be admitted against the same room.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Protocol

import trio

from fusegw.errors import GatewayError
from fusegw.ids import QuotaScopeID


class QuotaExceeded(GatewayError):
    kind = "quota/exceeded"
    title = "Disk quota exceeded"
    status = 409
    errno = errno.EDQUOT


class VFolderUsage:
    __slots__ = ("hex", "used_bytes", "used_inodes")

    def __init__(self, hex_: str, used_bytes: int = 0, used_inodes: int = 0) -> None:
        self.hex = hex_
        self.used_bytes = used_bytes
        self.used_inodes = used_inodes


def vfolder_share(vf_root: bool, ninodes: int) -> int:
    """The inodes an entry counts in its vfolder: a vfolder's root counts its blocks in the
    vfolder but its inode only in the scope (the vfolder's file count is what is inside it)."""
    return 0 if vf_root else ninodes


def leaves_with_name(st: os.stat_result) -> bool:
    """Whether removing this name takes the inode out of the scope: a directory always goes,
    a file with its last hard link (du counts an inode once, whichever name it is under)."""
    return stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1


class Journal(Protocol):
    """Told of every charge (the shared ledger commits them to Redis)."""

    def record(self, hex_: str | None, nbytes: int, ninodes: int, vf_inodes: int) -> None: ...


class ScopeUsage:
    """One quota scope: limits, usage, growth reserved by changes in flight, and whether its
    figures are being rebuilt.

    `used_*` follow `du -s -B1` of the scope directory: allocated bytes of the distinct inodes
    below it (the directory itself included) and the number of inodes below it.
    """

    def __init__(self, qsid: QuotaScopeID, limit_bytes: int = 0, limit_inodes: int = 0,
                 enforce_bytes: bool = True, enforce_inodes: bool = True) -> None:
        self.qsid = qsid
        # False where the storage enforces that limit itself (its EDQUOT passes through)
        self.enforce_bytes = enforce_bytes
        self.enforce_inodes = enforce_inodes
        self.pathname = qsid.pathname
        self.limit_bytes = limit_bytes
        self.limit_inodes = limit_inodes
        self.used_bytes = 0
        self.used_inodes = 0
        self.reserved_bytes = 0  # admitted growth of changes not yet settled
        self.reserved_inodes = 0
        self.inflight = 0  # changes begun and not yet settled
        self._idle: trio.Event | None = None  # set when inflight drops to 0
        self.vfolders: dict[str, VFolderUsage] = {}
        # Set while a rebuild runs: growth waits for it; shrinks wait only while `frozen`.
        self.ready = trio.Event()
        self.ready.set()
        self.frozen = False
        self.waiting = 0  # requests held until the rebuild ends
        self.refusals = 0  # EDQUOT answers, for metrics
        self.dirty = False
        self.generation = 0  # bumped by every change; a rebuild that saw it move scans again
        self.last_change = 0.0
        self.journal: Journal | None = None

    @property
    def rebuilding(self) -> bool:
        return not self.ready.is_set()

    def vfolder(self, hex_: str) -> VFolderUsage:
        vf = self.vfolders.get(hex_)
        if vf is None:
            vf = self.vfolders[hex_] = VFolderUsage(hex_)
        return vf

    def room(self) -> tuple[int | None, int | None]:
        """(bytes, inodes) that may still be admitted; None where there is no limit here."""
        nbytes = (max(0, self.limit_bytes - self.used_bytes - self.reserved_bytes)
                  if self.limit_bytes and self.enforce_bytes else None)
        ninodes = (max(0, self.limit_inodes - self.used_inodes - self.reserved_inodes)
                   if self.limit_inodes and self.enforce_inodes else None)
        return nbytes, ninodes

    def check_growth(self, nbytes: int, ninodes: int) -> None:
        """Refuse growth that would take the scope past a limit, counting what changes in
        flight have reserved; no growth always passes."""
        if (nbytes > 0 and self.enforce_bytes and self.limit_bytes
                and self.used_bytes + self.reserved_bytes + nbytes > self.limit_bytes):
            self.refusals += 1
            raise QuotaExceeded(f"{self.qsid}: byte limit {self.limit_bytes} reached")
        if (ninodes > 0 and self.enforce_inodes and self.limit_inodes
                and self.used_inodes + self.reserved_inodes + ninodes > self.limit_inodes):
            self.refusals += 1
            raise QuotaExceeded(f"{self.qsid}: inode limit {self.limit_inodes} reached")

    def reserve(self, nbytes: int, ninodes: int) -> None:
        """Admit growth (QuotaExceeded beyond a limit) and hold it until `unreserve`."""
        self.check_growth(nbytes, ninodes)
        self.hold(nbytes, ninodes)

    def hold(self, nbytes: int, ninodes: int) -> None:
        """Hold growth admitted elsewhere (against a shared ledger's grant)."""
        self.reserved_bytes += max(0, nbytes)
        self.reserved_inodes += max(0, ninodes)
        self.inflight += 1

    def unreserve(self, nbytes: int, ninodes: int) -> None:
        """Give back a reservation: its change is settled (or failed)."""
        self.reserved_bytes -= max(0, nbytes)
        self.reserved_inodes -= max(0, ninodes)
        self.inflight -= 1
        self.generation += 1  # a rescan that ran beside the change must run again
        if not self.inflight and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def quiesce(self) -> None:
        """Wait until no change is in flight (a rescan must not see one half-made)."""
        while self.inflight:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()

    def charge(self, vf: VFolderUsage | None, nbytes: int, ninodes: int,
               vf_root: bool = False) -> None:
        """Add a change's bytes and inodes; `vf_root`: the entry is its vfolder's root."""
        self.used_bytes += nbytes
        self.used_inodes += ninodes
        vf_inodes = vfolder_share(vf_root, ninodes)
        if vf is not None:
            vf.used_bytes += nbytes
            vf.used_inodes += vf_inodes
        if self.journal is not None:
            self.journal.record(vf.hex if vf else None, nbytes, ninodes,
                                vf_inodes if vf else 0)

    def set_figures(self, used_bytes: int, used_inodes: int,
                    vfolders: dict[str, list[int]]) -> None:
        self.used_bytes = used_bytes
        self.used_inodes = used_inodes
        self.vfolders = {h: VFolderUsage(h, b, i) for h, (b, i) in vfolders.items()}

"""The figures the ledger keeps for one scope and for each of its vfolders."""

from __future__ import annotations

import errno

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


class ScopeUsage:
    """One quota scope: limits, usage, and whether its figures are being rebuilt.

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

    @property
    def rebuilding(self) -> bool:
        return not self.ready.is_set()

    def vfolder(self, hex_: str) -> VFolderUsage:
        vf = self.vfolders.get(hex_)
        if vf is None:
            vf = self.vfolders[hex_] = VFolderUsage(hex_)
        return vf

    def check_growth(self, nbytes: int, ninodes: int) -> None:
        """Refuse growth that would take the scope past a limit; no growth always passes."""
        if (nbytes > 0 and self.enforce_bytes and self.limit_bytes
                and self.used_bytes + nbytes > self.limit_bytes):
            self.refusals += 1
            raise QuotaExceeded(f"{self.qsid}: byte limit {self.limit_bytes} reached")
        if (ninodes > 0 and self.enforce_inodes and self.limit_inodes
                and self.used_inodes + ninodes > self.limit_inodes):
            self.refusals += 1
            raise QuotaExceeded(f"{self.qsid}: inode limit {self.limit_inodes} reached")

    def charge(self, vf: VFolderUsage | None, nbytes: int, ninodes: int) -> None:
        self.used_bytes += nbytes
        self.used_inodes += ninodes
        if vf is not None:
            vf.used_bytes += nbytes
            vf.used_inodes += ninodes

    def set_figures(self, used_bytes: int, used_inodes: int,
                    vfolders: dict[str, list[int]]) -> None:
        self.used_bytes = used_bytes
        self.used_inodes = used_inodes
        self.vfolders = {h: VFolderUsage(h, b, i) for h, (b, i) in vfolders.items()}

"""A change's reservation: growth held against its scope's limits while the change is made.

    with await ledger.reserve(scope, nbytes, ninodes) as r:   # EDQUOT here, before the change
        ...make the change (in a worker thread)...
        r.charge(vf, measured_bytes, measured_inodes)          # what the disk allocated
    # leaving the block gives the reservation back, whether the change was made or failed

A reservation for no scope (an entry outside every scope: the volume root) charges nothing.
"""

from __future__ import annotations

from types import TracebackType

from fusegw.ledger.usage import ScopeUsage


class Reservation:
    __slots__ = ("nbytes", "ninodes", "scope")

    def __init__(self, scope: ScopeUsage | None, nbytes: int = 0, ninodes: int = 0) -> None:
        self.scope = scope
        self.nbytes = nbytes
        self.ninodes = ninodes

    def charge(self, vf: str | None, nbytes: int, ninodes: int, vf_root: bool = False) -> None:
        """Settle part of the change: charge what it allocated (negative: freed) to the scope
        and to vfolder `vf` (None: the scope alone)."""
        scope = self.scope
        if scope is not None and (nbytes or ninodes):
            scope.charge(scope.vfolder(vf) if vf else None, nbytes, ninodes, vf_root)

    def release(self) -> None:
        """Give the reservation back (once; later calls do nothing)."""
        if self.scope is not None:
            self.scope.unreserve(self.nbytes, self.ninodes)
            self.scope = None

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


NOTHING = Reservation(None)
"""The reservation of a change outside every scope."""

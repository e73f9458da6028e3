"""What the FUSE handlers, the control routes and the client API ask of a ledger.

`fusegw.ledger.Ledger` keeps the figures on the volume, for one gateway; a shared ledger (one
limit enforced by many nodes, its room handed out as grants) is a second implementation of
the same few calls. Everything else a ledger does (persistence, rebuilds) stays behind them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from fusegw.ledger.reservation import Reservation
from fusegw.ledger.usage import ScopeUsage


class QuotaLedger(Protocol):
    @property
    def scopes(self) -> Mapping[str, ScopeUsage]:
        """Every scope by its directory name."""
        ...

    def scope(self, pathname: str | None) -> ScopeUsage | None:
        """The scope of that directory name; None for no scope."""
        ...

    async def reserve(self, scope: ScopeUsage | None, nbytes: int = 0, ninodes: int = 0,
                      growth: bool = True) -> Reservation:
        """Admit a change before it is made: QuotaExceeded (EDQUOT) if `nbytes`/`ninodes` of
        growth would pass a limit, counting every reservation still held. The change settles
        through the reservation (`Reservation.charge`) and gives it back when done. Waits
        while the scope's figures are being rebuilt (shrinks only while it is frozen)."""
        ...

    def begin_change(self, scope: ScopeUsage) -> None:
        """Record that the scope is about to change outside a reservation (writeback)."""
        ...

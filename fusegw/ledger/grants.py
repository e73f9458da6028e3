"""One node's side of a scope on the shared ledger: the grant it holds, the changes it has made
and not yet committed, and the figures it shows (the cluster's, plus its own uncommitted).

Plain values and arithmetic, no Redis: `fusegw.ledger.redis_ledger` does the round trips.

The rule that bounds overshoot: a node admits growth only while

    pending + in-flight commit + reserved + growth <= grant

so what it adds beyond the figures on Redis never passes the room Redis set aside for it.
Freed space (a negative pending) may be used again at once: the total cannot pass what it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from fusegw.ledger.shared import Commit, Figures
from fusegw.ledger.usage import ScopeUsage

LEASE_MARGIN = 0.8
"""The share of a grant's lease a node trusts it for after the round trip that renewed it
began: Redis takes it back at the full lease, so the node stops spending first."""


@dataclass(slots=True)
class Pending:
    """Changes charged since the last commit was cut (negative: freed)."""

    bytes: int = 0
    inodes: int = 0
    vfolders: dict[str, list[int]] = field(default_factory=dict)

    def add(self, hex_: str | None, nbytes: int, ninodes: int, vf_inodes: int) -> None:
        self.bytes += nbytes
        self.inodes += ninodes
        if hex_ is not None:
            vf = self.vfolders.setdefault(hex_, [0, 0])
            vf[0] += nbytes
            vf[1] += vf_inodes

    def empty(self) -> bool:
        return not (self.bytes or self.inodes or any(b or i for b, i in self.vfolders.values()))


class ScopeGrant:
    """The grant and the uncommitted changes of this node in one scope."""

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.held_bytes = 0
        self.held_inodes = 0
        self.valid_until = 0.0  # monotonic: spend the grant no later than this
        self.pending = Pending()
        self.outbox: Commit | None = None  # sent, not yet answered: sent again as it is
        self.epoch = 0  # the figures' epoch this node's changes count against
        self.base: Figures | None = None  # the scope on Redis, as last read
        self.last_growth = 0.0
        self.reclaim = False  # another node is short of room: give back what is unused
        self.stopped_for = 0  # the rebuild epoch this node stops for, while it does
        self.resumed = trio.Event()
        self.lock = trio.Lock()  # one round trip of this node for this scope at a time

    # -- the journal of ScopeUsage.charge ---------------------------------------------------------

    def record(self, hex_: str | None, nbytes: int, ninodes: int, vf_inodes: int) -> None:
        self.pending.add(hex_, nbytes, ninodes, vf_inodes)

    # -- admission -------------------------------------------------------------------------------

    def uncommitted(self) -> tuple[int, int]:
        out = self.outbox
        return (self.pending.bytes + (out.bytes if out else 0),
                self.pending.inodes + (out.inodes if out else 0))

    def pending_totals(self) -> tuple[int, int]:
        return self.pending.bytes, self.pending.inodes

    def room(self, scope: ScopeUsage) -> tuple[int, int]:
        """Bytes and inodes this node may still admit without asking Redis."""
        if time.monotonic() >= self.valid_until:
            return 0, 0
        ub, ui = self.uncommitted()
        return (self.held_bytes - ub - scope.reserved_bytes,
                self.held_inodes - ui - scope.reserved_inodes)

    def shortfall(self, scope: ScopeUsage, nbytes: int, ninodes: int) -> tuple[int, int]:
        """What the grant lacks for this growth, (0, 0) when it covers it; only where the
        scope has a limit the gateway enforces."""
        room_b, room_i = self.room(scope)
        need_b = nbytes - room_b if nbytes > 0 and _limited(scope, "bytes") else 0
        need_i = ninodes - room_i if ninodes > 0 and _limited(scope, "inodes") else 0
        return max(0, need_b), max(0, need_i)

    def granted(self, held_bytes: int, held_inodes: int, asked_at: float) -> None:
        self.held_bytes, self.held_inodes = held_bytes, held_inodes
        if held_bytes or held_inodes:
            self.valid_until = asked_at + self.lease * LEASE_MARGIN

    # -- commits ---------------------------------------------------------------------------------

    def cut(self, seq: int) -> Commit | None:
        """The commit to send: the one not yet answered, else what is pending (then empty)."""
        if self.outbox is None and not self.pending.empty():
            p = self.pending
            self.outbox = Commit(seq, self.epoch, p.bytes, p.inodes, p.vfolders)
            self.pending = Pending()
        return self.outbox

    def forget_uncommitted(self) -> None:
        """A rebuild counts this node's uncommitted changes from the disk: drop them."""
        self.outbox = None
        self.pending = Pending()

    def idle(self, scope: ScopeUsage, now: float, idle_after: float) -> bool:
        """Whether the grant should go back: nothing in flight, nothing pending, and no
        growth for `idle_after` seconds (at once when another node is short)."""
        if not (self.held_bytes or self.held_inodes):
            return False
        if scope.reserved_bytes or scope.reserved_inodes or not self.pending.empty():
            return False
        return self.reclaim or now - self.last_growth >= idle_after

    def busy(self) -> bool:
        """Whether a tick has more to do than read: a commit to send, a grant to renew."""
        return bool(self.outbox is not None or not self.pending.empty() or self.held_bytes
                    or self.held_inodes)

    def show(self, scope: ScopeUsage) -> None:
        """The figures of `scope` as this node serves them: Redis's and its own uncommitted."""
        base = self.base
        if base is None:
            return
        ub, ui = self.uncommitted()
        scope.used_bytes = base.used_bytes + ub
        scope.used_inodes = base.used_inodes + ui
        out = self.outbox.vfolders if self.outbox else {}
        for hex_ in set(base.vfolders) | set(out) | set(self.pending.vfolders) | set(
                scope.vfolders):
            vf = scope.vfolder(hex_)
            totals = [sum(src.get(hex_, (0, 0))[k] for src in
                          (base.vfolders, out, self.pending.vfolders)) for k in (0, 1)]
            vf.used_bytes, vf.used_inodes = totals


def _limited(scope: ScopeUsage, what: str) -> bool:
    if what == "bytes":
        return bool(scope.limit_bytes and scope.enforce_bytes)
    return bool(scope.limit_inodes and scope.enforce_inodes)

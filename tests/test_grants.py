"""A node's side of a shared scope (`fusegw.ledger.grants`) on plain values, no Redis and no
mount: what a grant admits, what a commit carries, when a grant goes back, and the figures
a node shows."""

from __future__ import annotations

import time

from fusegw.ids import QuotaScopeID
from fusegw.ledger.grants import ScopeGrant
from fusegw.ledger.shared import Figures
from fusegw.ledger.usage import ScopeUsage

MiB = 2**20
QSID = QuotaScopeID.parse("user:0d7b2a4e-8a51-4d5c-9c1f-7f0a0f0e0c11")


def scope_with_grant(limit: int, held: int) -> tuple[ScopeUsage, ScopeGrant]:
    scope = ScopeUsage(QSID, limit_bytes=limit)
    grant = ScopeGrant(lease=10.0)
    scope.journal = grant
    grant.granted(held, 0, time.monotonic())
    return scope, grant


def test_a_grant_admits_what_it_holds_less_what_is_spent_and_reserved() -> None:
    scope, grant = scope_with_grant(100 * MiB, 8 * MiB)
    assert grant.shortfall(scope, 8 * MiB, 0) == (0, 0)
    scope.hold(3 * MiB, 0)  # a change in flight
    scope.charge(None, 2 * MiB, 1)  # one settled, not yet committed
    assert grant.room(scope) == (3 * MiB, -1)
    assert grant.shortfall(scope, 4 * MiB, 0) == (MiB, 0)
    assert grant.shortfall(scope, 0, 5) == (0, 0)  # no inode limit: no inode grant needed


def test_freed_space_may_be_used_again_at_once() -> None:
    scope, grant = scope_with_grant(100 * MiB, MiB)
    scope.charge(None, -4 * MiB, -1)  # a delete, not yet committed
    assert grant.shortfall(scope, 5 * MiB, 0) == (0, 0)
    assert grant.shortfall(scope, 5 * MiB + 1, 0) == (1, 0)


def test_a_grant_whose_lease_may_have_ended_admits_nothing() -> None:
    scope, grant = scope_with_grant(100 * MiB, 8 * MiB)
    grant.granted(8 * MiB, 0, time.monotonic() - 9.0)  # renewed 9 s ago, lease 10 s
    assert grant.room(scope) == (0, 0)  # trusted for 80 % of the lease only
    assert grant.shortfall(scope, 1, 0) == (1, 0)


def test_a_commit_is_cut_once_and_sent_again_as_it_was() -> None:
    scope, grant = scope_with_grant(100 * MiB, 8 * MiB)
    scope.charge(scope.vfolder("ab" * 16), MiB, 1)
    first = grant.cut(7)
    assert first is not None and (first.seq, first.bytes, first.inodes) == (7, MiB, 1)
    assert first.vfolders == {"ab" * 16: [MiB, 1]}
    scope.charge(None, MiB, 0)  # after the cut: for the next commit
    again = grant.cut(8)
    assert again is first  # not answered yet: the same seq and figures
    assert grant.uncommitted() == (2 * MiB, 1)
    grant.outbox = None  # answered
    nxt = grant.cut(9)
    assert nxt is not None and (nxt.seq, nxt.bytes) == (9, MiB)


def test_a_grant_goes_back_only_when_nothing_needs_it() -> None:
    scope, grant = scope_with_grant(100 * MiB, 8 * MiB)
    now = time.monotonic()
    grant.last_growth = now
    assert not grant.idle(scope, now + 0.5, 1.0)
    assert grant.idle(scope, now + 1.5, 1.0)
    scope.hold(MiB, 0)
    assert not grant.idle(scope, now + 1.5, 1.0)  # a change in flight
    scope.unreserve(MiB, 0)
    scope.charge(None, MiB, 0)
    assert not grant.idle(scope, now + 1.5, 1.0)  # uncommitted
    grant.forget_uncommitted()
    grant.reclaim = True
    assert grant.idle(scope, now, 1.0)  # another node is short: at once


def test_a_node_shows_the_clusters_figures_plus_its_own_uncommitted() -> None:
    scope, grant = scope_with_grant(100 * MiB, 8 * MiB)
    vf = "cd" * 16
    grant.base = Figures(used_bytes=10 * MiB, used_inodes=5, limit_bytes=100 * MiB,
                         limit_inodes=0, held_bytes=8 * MiB, held_inodes=0, epoch=3,
                         rebuild=None, vfolders={vf: [6 * MiB, 4]})
    scope.charge(scope.vfolder(vf), MiB, 1)
    grant.cut(1)  # in flight
    scope.charge(scope.vfolder(vf), 2 * MiB, 2)
    grant.show(scope)
    assert (scope.used_bytes, scope.used_inodes) == (13 * MiB, 8)
    assert (scope.vfolders[vf].used_bytes, scope.vfolders[vf].used_inodes) == (9 * MiB, 7)

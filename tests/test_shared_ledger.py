"""The shared ledger's data model and scripts on a real redis-server (issue 13's first
layer): grants against one limit from many nodes, idempotent commits, leases that give a
vanished node's grant back, grants shrinking near the limit."""

from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path

import pytest
from conftest import free_port, wait_for
from redis_fixture import RedisServer, redis_server, start_sentinel, stop

from fusegw.ledger.redis_url import RedisURLError, connect
from fusegw.ledger.shared import Commit, GrantPolicy, SharedScopes

__all__ = ["redis_server"]

MiB = 2**20


def scopes(server: RedisServer, node: str, **policy: int) -> SharedScopes:
    return SharedScopes(server.client(), node, GrantPolicy(**policy))


def commit(s: SharedScopes, scope: str, seq: int, nbytes: int, ninodes: int = 0) -> int:
    """Commit a node's change (its grant spent by as much); the tick's status."""
    return s.tick(scope, Commit(seq, 0, nbytes, ninodes), False)[0]


def new_scope(s: SharedScopes, limit_bytes: int, limit_inodes: int = 0) -> str:
    name = uuid.uuid4().hex
    s.set_limits(name, limit_bytes, limit_inodes)
    return name


def test_a_grant_is_a_slice_of_the_room_and_shrinks_near_the_limit(
        redis_server: RedisServer) -> None:
    a = scopes(redis_server, "a", max_bytes=64 * MiB)
    scope = new_scope(a, 100 * MiB)
    first = a.acquire(scope, 4096, 0)
    assert first.bytes == 50 * MiB  # half the room for the one node asking (at most 64 MiB)
    commit(a, scope, 1, 99 * MiB)  # the scope fills up
    near = a.acquire(scope, 4096, 0)
    assert near.bytes == 1 * MiB  # the minimum: room 1 MiB, shared by one node
    refused = a.acquire(scope, 1, 0)
    assert (refused.bytes, refused.inodes) == (0, 0)  # nothing left: all or nothing
    figures = a.describe(scope)
    assert figures.used_bytes + figures.granted_bytes == 100 * MiB


def test_many_nodes_never_hold_more_than_the_room(redis_server: RedisServer) -> None:
    """16 nodes acquiring 64 KiB at a time from threads, each acquire atomic on the server:
    committed + granted never passes the limit, and every byte granted was in the room."""
    limit = 32 * MiB
    nodes = [scopes(redis_server, f"n{i}", min_bytes=256 * 1024, max_bytes=4 * MiB)
             for i in range(16)]
    scope = new_scope(nodes[0], limit)
    spent = [0] * 16

    def node(i: int) -> None:
        s, seq = nodes[i], 0
        while True:
            g = s.acquire(scope, 64 * 1024, 0)
            if not g.bytes:
                return
            seq += 1
            commit(s, scope, seq, g.bytes)  # spend all of it
            spent[i] += g.bytes

    threads = [threading.Thread(target=node, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    figures = nodes[0].describe(scope)
    assert figures.used_bytes == sum(spent) <= limit
    assert figures.granted_bytes == 0
    assert limit - sum(spent) < 64 * 1024  # filled to within one request


def test_a_repeated_commit_is_applied_once(redis_server: RedisServer) -> None:
    a = scopes(redis_server, "a")
    scope = new_scope(a, 0)
    assert commit(a, scope, 1, 4096, 1) == 1
    assert commit(a, scope, 1, 4096, 1) == 0  # its answer was lost, sent again
    assert commit(a, scope, 2, -4096, -1) == 1
    figures = a.describe(scope)
    assert (figures.used_bytes, figures.used_inodes) == (0, 0)


def test_a_vanished_nodes_grant_stays_out_until_what_it_left_is_counted(
        redis_server: RedisServer) -> None:
    """A node whose lease passed may have written into its grant without committing: its
    grant stays out (it no longer counts among the nodes sharing the room) until another
    node drops it, having counted what it left."""
    gone = scopes(redis_server, "gone", lease_ms=300, max_bytes=8 * MiB)
    other = scopes(redis_server, "other", max_bytes=8 * MiB)
    scope = new_scope(gone, 8 * MiB)
    held = gone.acquire(scope, 8 * MiB, 0)
    assert held.bytes == 8 * MiB
    wait_for(lambda: other.describe(scope).nodes == 0, 10, "the lease of the vanished node")
    assert other.acquire(scope, 4096, 0).bytes == 0  # still out: its writes are unknown
    other.drop(scope, "gone")  # its marks adopted: nothing uncommitted here
    assert other.acquire(scope, 4096, 0).bytes > 0
    assert other.describe(scope).nodes == 1


def test_release_gives_room_back(redis_server: RedisServer) -> None:
    a = scopes(redis_server, "a", max_bytes=4 * MiB)
    b = scopes(redis_server, "b", max_bytes=4 * MiB)
    scope = new_scope(a, 4 * MiB, 100)
    held = a.acquire(scope, 4 * MiB, 10)
    assert (held.bytes, held.inodes) == (4 * MiB, 64)  # inodes: the minimum grant
    assert b.acquire(scope, 1, 0).bytes == 0
    _, figures = a.tick(scope, None, True)  # give it back
    assert (figures.held_bytes, figures.held_inodes) == (0, 0)
    assert b.acquire(scope, MiB, 1).bytes >= MiB


# -- connecting: one server, or the master Sentinel names ------------------------------------


def test_a_redis_url_connects(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    assert client.ping()


def test_a_sentinel_url_finds_the_master(redis_server: RedisServer,
                                         tmp_path: Path) -> None:
    """redis+sentinel://HOST:PORT/SERVICE/DB: the grant scripts run on the master that a
    real Sentinel names (a second, unreachable Sentinel in the list is skipped)."""
    sentinel = start_sentinel(tmp_path, redis_server, "fusegw-test")
    try:
        dead = free_port()
        url = f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel.port}/fusegw-test/0"
        shared = SharedScopes(connect(url), "s")
        scope = new_scope(shared, 8 * MiB)
        assert shared.acquire(scope, 4096, 0).bytes > 0
        assert redis_server.client().exists(f"fusegw:{{{scope}}}:grants")  # on the master
    finally:
        stop(sentinel)


@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:6379", "the scheme must be"),
    ("redis+sentinel://127.0.0.1:26379", "expected redis+sentinel://"),
    ("redis+sentinel://127.0.0.1/svc", "is not HOST:PORT"),
    ("redis+sentinel://127.0.0.1:26379/svc/zero", "is not a number"),
    ("redis+sentinel://127.0.0.1:99999/svc", "is not HOST:PORT"),
])
def test_a_bad_redis_url_is_refused_naming_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(RedisURLError, match=re.escape(says)):
        connect(url)


def test_a_sentinel_list_may_be_separated_with_semicolons(redis_server: RedisServer,
                                                          tmp_path: Path) -> None:
    """`-o` (and so fstab) splits on commas: redis+sentinel://H1:P1;H2:P2/SERVICE names the
    same Sentinels, and finds the same master through a real Sentinel."""
    sentinel = start_sentinel(tmp_path, redis_server, "fusegw-semi")
    try:
        url = f"redis+sentinel://127.0.0.1:{free_port()};127.0.0.1:{sentinel.port}/fusegw-semi"
        assert connect(url).ping()
    finally:
        stop(sentinel)

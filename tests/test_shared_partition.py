"""One node cut off from Redis (issue 13): a gateway in a network namespace of its own
(tests/netns.py) whose route to Redis is taken down mid-run while another node writes on.
Writes within its grant go on, growth past it fails with EAGAIN, the other node keeps the
limit, and once the route is back every node's figure is du's: nothing lost or counted twice."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import private_source
from netns import NetLab, NetNode, lab_redis, make_node, net_lab
from redis_fixture import RedisServer
from shared_nodes import VOLUME, Cluster, MiB, fill

__all__ = ["lab_redis", "make_node", "net_lab"]


def test_a_node_cut_off_from_redis(public_dir: Path, net_lab: NetLab, lab_redis: RedisServer,
                                   make_node: Callable[[], NetNode]) -> None:
    base = public_dir / uuid.uuid4().hex[:8]
    base.mkdir()
    cluster = Cluster(base, private_source(base, VOLUME), lab_redis)
    try:
        a = cluster.node("a")
        node = make_node()
        b = cluster.node("b", prefix=node.prefix, redis_url=net_lab.redis_url(lab_redis))
        limit = 32 * MiB
        qsid, rel = cluster.scope(limit)
        (b.mountpoint / rel / "warm").write_bytes(os.urandom(MiB))  # b holds a grant now
        cluster.converged(qsid)
        node.cut()
        (b.mountpoint / rel / "within").write_bytes(os.urandom(512 * 1024))
        (b.mountpoint / rel / "warm").unlink()  # shrinking always works
        with pytest.raises(OSError) as refused:
            fill(b.mountpoint / rel, "past", chunk=256 * 1024, file_size=64 * MiB)
        assert refused.value.errno == errno.EAGAIN
        fill(a.mountpoint / rel, "a", chunk=256 * 1024, file_size=MiB)
        node.heal()
        used = cluster.converged(qsid)
        assert used <= limit + 2 * MiB  # nodes x the minimum grant
        assert "shared ledger unreachable" in b.read_log()
    finally:
        cluster.stop_all()

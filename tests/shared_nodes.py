"""Several gateway processes over one backing directory, each with its own mount point and
control socket, all on one shared ledger (a real redis-server): the stand-ins for a cluster's
nodes in the shared-ledger tests and the benchmark."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Gateway, du_bytes, private_source, scope_hex, vfolder_rel, wait_for
from redis_fixture import RedisServer, start_redis, stop

MiB = 2**20
VOLUME = "shared"
TEST_LEASE = 2.0  # seconds: a vanished node's grant comes back this fast in the tests


@dataclass
class Cluster:
    base: Path
    source: Path
    redis: RedisServer
    nodes: list[Gateway] = field(default_factory=list)

    def node(self, name: str, options: str = "", prefix: list[str] | None = None,
             redis_url: str | None = None, start: bool = True) -> Gateway:
        """A gateway on the shared ledger, `options` added to its -o."""
        mnt = self.base / f"{name}.mnt"
        mnt.mkdir(exist_ok=True)
        opts = (f"ledger=redis,redis_url={redis_url or self.redis.url},node_id={name},"
                f"grant_lease={TEST_LEASE},redis_wait=1")
        gw = Gateway(self.source, mnt, self.base / f"{name}.sock", self.base / f"{name}.log",
                     VOLUME, ["-o", opts + ("," + options if options else "")],
                     prefix=prefix or [])
        self.nodes.append(gw)
        if start:
            gw.start()
        return gw

    def scope(self, limit_bytes: int | None = None, limit_inodes: int | None = None
              ) -> tuple[str, str]:
        """A new scope (made through the first node) and a vfolder in it: (qsid, vfolder
        path relative to a mount point)."""
        qsid = f"user:{uuid.uuid4()}"
        self.nodes[0].create_scope(qsid, limit_bytes, limit_inodes)
        rel = vfolder_rel(qsid, uuid.uuid4().hex)
        (self.nodes[0].mountpoint / rel).mkdir(parents=True)
        return qsid, rel

    def du(self, qsid: str) -> int:
        return du_bytes(self.source / scope_hex(qsid))

    def converged(self, qsid: str, nodes: list[Gateway] | None = None) -> int:
        """Wait until every node reports the scope's usage as `du -s -B1` has it; that."""
        def agree() -> int | None:
            disk = self.du(qsid)
            figures = {gw.describe(qsid)["used_bytes"] for gw in nodes or self.nodes}
            return disk if figures == {disk} else None

        return int(wait_for(agree, 20, f"every node to report {qsid} as du does"))

    def stop_all(self) -> None:
        for gw in self.nodes:
            gw.stop()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"), persist=True)
    try:
        yield server
    finally:
        stop(server)


@pytest.fixture
def cluster(public_dir: Path, shared_redis: RedisServer) -> Iterator[Cluster]:
    """A new volume on the module's Redis; its gateways are stopped after the test."""
    base = public_dir / uuid.uuid4().hex[:8]
    base.mkdir()
    c = Cluster(base, private_source(base, VOLUME), shared_redis)
    try:
        yield c
    finally:
        c.stop_all()


def fill(directory: Path, tag: str, chunk: int = 256 * 1024, file_size: int = 2 * MiB,
         most: int = 1 << 40) -> int:
    """Write files of `file_size` in `chunk`s until the scope refuses (EDQUOT) or `most`
    bytes are written; the bytes written. Any other error is raised."""
    written, n = 0, 0
    data = os.urandom(chunk)
    while written < most:
        path = directory / f"{tag}-{n}"
        n += 1
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            if e.errno != errno.EDQUOT:
                raise
            return written
        try:
            for _ in range(file_size // chunk):
                os.write(fd, data)
                written += chunk
        except OSError as e:
            if e.errno != errno.EDQUOT:
                raise
            return written
        finally:
            os.close(fd)
    return written

"""A real redis-server (the Debian package) on a free port, for the shared-ledger tests:
started per test module, no persistence, stopped in teardown whatever happened."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from conftest import free_port, wait_for


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def url_at(self, host: str) -> str:
        """The URL by another address the server binds (`start_redis(extra_bind=...)`): a
        process in a network namespace (tests/netns.py) has a 127.0.0.1 of its own."""
        return f"redis://{host}:{self.port}/0"


def start_redis(workdir: Path, extra_bind: str | None = None, port: int | None = None,
                persist: bool = False, extra: tuple[str, ...] = ()) -> RedisServer:
    """A redis-server on 127.0.0.1 and, given `extra_bind`, that address too (a NetLab's
    bridge address, tests/netns.py). Protected mode is off then: without a password it would
    refuse every client not on loopback, which is all a namespace's clients are. `persist`:
    an append-only file fsynced per write in `workdir`, so a server started again there (on
    the same `port`) has the data, as a production Redis would."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: `make install` installs the Debian package"
    port = port or free_port()
    bind = ["--bind", "127.0.0.1"]
    if extra_bind is not None:
        bind += [extra_bind, "--protected-mode", "no"]
    aof = ["--appendonly", "yes", "--appendfsync", "always"] if persist else [
        "--appendonly", "no"]
    return _started([binary, "--port", str(port), *bind, "--save", "", *aof,
                     "--dir", str(workdir), *extra], port,
                    lambda c: bool(c.ping()), "redis-server answering")


def _started(argv: list[str], port: int, ready: Callable[[redis.Redis], bool],
             what: str) -> RedisServer:
    """Start argv and wait until `ready` holds for a client of `port`; killed if it never
    does."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, proc)

    def answers() -> bool:
        try:
            return ready(server.client())
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, what=what)
    except BaseException:
        stop(server)
        raise
    return server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop(server)


def start_sentinel(workdir: Path, master: RedisServer, service: str,
                   down_after_ms: int = 5000) -> RedisServer:
    """A Redis Sentinel (the same binary, `--sentinel`) watching `master` as `service`."""
    binary = shutil.which("redis-server")
    assert binary
    port = free_port()
    conf = workdir / f"sentinel-{port}.conf"  # Sentinel rewrites its file: one of its own
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                    f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
                    f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                    f"sentinel failover-timeout {service} {max(2 * down_after_ms, 3000)}\n")
    return _started([binary, str(conf), "--sentinel"], port,
                    lambda c: bool(c.execute_command(  # type: ignore[no-untyped-call]
                        "SENTINEL", "get-master-addr-by-name", service)),
                    "redis-sentinel naming the master")


def stop(server: RedisServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()

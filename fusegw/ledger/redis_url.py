"""Connecting to the shared ledger's Redis from one URL: a server, or a master found through
Redis Sentinel, as Backend.AI deploys Redis for high availability.

    redis://[:PASSWORD@]HOST:PORT/DB            one server (also rediss://, unix://)
    redis+sentinel://[:PASSWORD@]H1:P1,H2:P2/SERVICE[/DB]
                                                the master Sentinel names SERVICE; a failover
                                                is followed on the next command

The password, if any, is the data server's (Sentinel itself is asked without one, as
Backend.AI's configuration has it).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
SOCKET_TIMEOUT = 2.0
"""Seconds a command may take before the connection counts as lost (faults are the caller's
to bound; a dead Redis must not hang a worker thread for the kernel's TCP timeout)."""


class RedisURLError(ValueError):
    """A URL that names no Redis the ledger can use; the message says what is wrong."""


def connect(url: str) -> redis.Redis:
    """A client for the URL (no round trip yet: connections are made on first use)."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        try:
            return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT,
                                        socket_connect_timeout=SOCKET_TIMEOUT)
        except ValueError as e:
            raise RedisURLError(f"redis_url {url!r}: {e}") from None
    if parts.scheme != SENTINEL_SCHEME:
        raise RedisURLError(f"redis_url {url!r}: the scheme must be redis://, rediss://, "
                            f"unix:// or {SENTINEL_SCHEME}://")
    return _sentinel_master(url, parts.netloc, parts.path)


def _sentinel_master(url: str, netloc: str, path: str) -> redis.Redis:
    password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[-1]) or None
    hosts = [_host_port(url, h) for h in netloc.split(",") if h]
    names = [p for p in path.split("/") if p]
    if not hosts or not names or len(names) > 2:
        raise RedisURLError(f"redis_url {url!r}: expected {SENTINEL_SCHEME}://HOST:PORT[,"
                            "HOST:PORT...]/SERVICE[/DB]")
    db = names[1] if len(names) == 2 else "0"
    if not db.isdigit():
        raise RedisURLError(f"redis_url {url!r}: the database {db!r} is not a number")
    # redis-py's sentinel module is untyped; master_for returns a redis.Redis
    sentinel = Sentinel(hosts, socket_timeout=SOCKET_TIMEOUT,  # type: ignore[no-untyped-call]
                        socket_connect_timeout=SOCKET_TIMEOUT)
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        names[0], db=int(db), password=password, socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT)
    return master


def _host_port(url: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisURLError(f"redis_url {url!r}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)

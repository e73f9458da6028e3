"""Connecting to the shared ledger's Redis from one URL: a server, or a master found through
Redis Sentinel, as Backend.AI deploys Redis for high availability.

    redis://[:PASSWORD@]HOST:PORT/DB            one server (also rediss://, unix://)
    redis+sentinel://[:PASSWORD@]H1:P1,H2:P2/SERVICE[/DB]
                                                the master Sentinel names SERVICE; a failover
                                                is followed on the next command
    redis+sentinel://H1:P1;H2:P2/SERVICE[/DB]   the same: `;` separates the Sentinels too,
                                                since `-o` (and so fstab) splits on commas

The password, if any, is the data server's (Sentinel itself is asked without one, as
Backend.AI's configuration has it). Messages show a URL with its password as `***`
(`redacted`): they go to terminals and logs.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
SOCKET_TIMEOUT = 2.0
"""Seconds a command may take before the connection counts as lost (faults are the caller's
to bound; a dead Redis must not hang a worker thread for the kernel's TCP timeout)."""
SENTINEL_SEPARATORS = re.compile(r"[,;]")
_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&#]*")


class RedisURLError(ValueError):
    """A URL that names no Redis the ledger can use; the message says what is wrong."""


def redacted(url: str) -> str:
    """The URL as a message may show it: a password, if any (`:PASSWORD@`, `?password=`),
    as `***`."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        auth, host = netloc.rsplit("@", 1)
        user, colon, _password = auth.partition(":")
        netloc = f"{user}{colon and ':***'}@{host}"
    return _QUERY_PASSWORD.sub(r"\1***", scheme + sep + netloc + slash + tail)


def connect(url: str) -> redis.Redis:
    """A client for the URL (no round trip yet: connections are made on first use)."""
    parts = urlsplit(url)
    shown = redacted(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        try:
            return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT,
                                        socket_connect_timeout=SOCKET_TIMEOUT)
        except ValueError as e:
            raise RedisURLError(f"redis_url {shown!r}: {e}") from None
    if parts.scheme != SENTINEL_SCHEME:
        raise RedisURLError(f"redis_url {shown!r}: the scheme must be redis://, rediss://, "
                            f"unix:// or {SENTINEL_SCHEME}://")
    return _sentinel_master(shown, parts.netloc, parts.path)


def _sentinel_master(shown: str, netloc: str, path: str) -> redis.Redis:
    """The master's client; `shown` is the URL as messages show it (redacted)."""
    password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[-1]) or None
    hosts = [_host_port(shown, h) for h in SENTINEL_SEPARATORS.split(netloc) if h]
    names = [p for p in path.split("/") if p]
    if not hosts or not names or len(names) > 2:
        raise RedisURLError(f"redis_url {shown!r}: expected {SENTINEL_SCHEME}://HOST:PORT[,"
                            "HOST:PORT...]/SERVICE[/DB] (, or ; between the Sentinels)")
    db = names[1] if len(names) == 2 else "0"
    if not db.isdigit():
        raise RedisURLError(f"redis_url {shown!r}: the database {db!r} is not a number")
    # redis-py's sentinel module is untyped; master_for returns a redis.Redis
    sentinel = Sentinel(hosts, socket_timeout=SOCKET_TIMEOUT,  # type: ignore[no-untyped-call]
                        socket_connect_timeout=SOCKET_TIMEOUT)
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        names[0], db=int(db), password=password, socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT)
    return master


def _host_port(shown: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisURLError(f"redis_url {shown!r}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)

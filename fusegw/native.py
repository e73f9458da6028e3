"""The storage's own figures for a scope, where the backend has them, cached for a second.

With a native enforcer (btrfs qgroups, XFS project quotas, CephFS) the scope's bytes are what
the storage counts and enforces; the xattrs and the API report those. Asking the storage costs
a command or a vendor call, so answers are cached for at most `TTL` seconds and concurrent
askers share one refresh. A failing backend is logged and the ledger's figures are used.
"""

from __future__ import annotations

import logging
import time

import trio

from backends import BackendError, QuotaBackend, QuotaUsage

log = logging.getLogger("fusegw.native")
TTL = 1.0


class NativeFigures:
    def __init__(self, backend: QuotaBackend, ttl: float = TTL) -> None:
        self.backend = backend
        self.ttl = ttl
        self._cache: dict[str, tuple[float, QuotaUsage | None]] = {}
        self._locks: dict[str, trio.Lock] = {}
        self.native = backend.enforces_bytes or backend.enforces_inodes

    async def get(self, pathname: str) -> QuotaUsage | None:
        if not self.native:
            return None
        cached = self._cache.get(pathname)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        lock = self._locks.setdefault(pathname, trio.Lock())
        async with lock:
            cached = self._cache.get(pathname)
            if cached is not None and time.monotonic() - cached[0] < self.ttl:
                return cached[1]
            try:
                usage = await self.backend.describe_scope(pathname)
            except BackendError as e:
                log.warning("native figures unavailable scope=%s error=%s", pathname, e)
                usage = None
            self._cache[pathname] = (time.monotonic(), usage)
            return usage

    def forget(self, pathname: str) -> None:
        """Drop a cached answer after a change of the scope's limits."""
        self._cache.pop(pathname, None)


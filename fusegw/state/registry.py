"""The scope registry: which quota scopes exist on the volume, their types and limits.

It lives with the volume so that every node's gateway sees the same limits and they survive a
reinstall of the node. Every change is written first and applied in memory only once the file
is on disk: a write that fails (a full backing disk) raises VolumeWriteError and leaves memory
and disk as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

from fusegw.ids import QuotaScopeID
from fusegw.state.store import StateDir, VolumeWriteError

REGISTRY_FILE = "registry.json"
LOCK_FILE = "registry.lock"


@dataclass(slots=True)
class ScopeRecord:
    qsid: QuotaScopeID
    limit_bytes: int = 0  # 0: unlimited
    limit_inodes: int = 0


class Registry:
    """`shared`: other nodes' gateways change the file too (the shared ledger). Then every
    change is made under an exclusive lock on the volume, to the file as it is on disk."""

    def __init__(self, state: StateDir, shared: bool = False) -> None:
        self._state = state
        self.shared = shared
        self.scopes: dict[str, ScopeRecord] = {}

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Around a change: on a shared volume, hold the lock and start from the disk."""
        if not self.shared:
            yield
            return
        fd = os.open(self._state.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.load()
            yield
        finally:
            os.close(fd)

    def load(self) -> None:
        data = self._state.read(REGISTRY_FILE) or {}
        self.scopes = {}
        for pathname, rec in (data.get("scopes") or {}).items():
            qsid = QuotaScopeID.parse(rec["qsid"])
            self.scopes[pathname] = ScopeRecord(
                qsid, int(rec.get("limit_bytes", 0)), int(rec.get("limit_inodes", 0))
            )

    def put(self, record: ScopeRecord) -> None:
        """Add or replace a scope's record, durably."""
        with self._changing():
            self.save(dict(self.scopes, **{record.qsid.pathname: record}))

    def set_limits(self, pathname: str, limit_bytes: int, limit_inodes: int) -> ScopeRecord:
        """Change a registered scope's limits, durably; the new record."""
        with self._changing():
            record = replace(self.scopes[pathname], limit_bytes=limit_bytes,
                             limit_inodes=limit_inodes)
            self.save(dict(self.scopes, **{pathname: record}))
        return record

    def remove(self, pathname: str) -> None:
        """Forget a scope, durably."""
        with self._changing():
            self.save({p: r for p, r in self.scopes.items() if p != pathname})

    def save(self, scopes: dict[str, ScopeRecord] | None = None) -> None:
        """Write `scopes` (default: the current ones), then make them the current ones."""
        new = dict(self.scopes if scopes is None else scopes)
        body = {"scopes": {p: {"qsid": str(r.qsid), "limit_bytes": r.limit_bytes,
                               "limit_inodes": r.limit_inodes}
                           for p, r in sorted(new.items())}}
        try:
            self._state.write(REGISTRY_FILE, body)
        except OSError as e:
            raise VolumeWriteError(f"the scope registry ({REGISTRY_FILE})", e) from None
        self.scopes = new

"""The scope registry: which quota scopes exist on the volume, their types and limits.

It lives with the volume so that every node's gateway sees the same limits and they survive a
reinstall of the node. Every change is written first and applied in memory only once the file
is on disk: a write that fails (a full backing disk) raises VolumeWriteError and leaves memory
and disk as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fusegw.ids import QuotaScopeID
from fusegw.state.store import StateDir, VolumeWriteError

REGISTRY_FILE = "registry.json"


@dataclass(slots=True)
class ScopeRecord:
    qsid: QuotaScopeID
    limit_bytes: int = 0  # 0: unlimited
    limit_inodes: int = 0


class Registry:
    def __init__(self, state: StateDir) -> None:
        self._state = state
        self.scopes: dict[str, ScopeRecord] = {}

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
        self.save(dict(self.scopes, **{record.qsid.pathname: record}))

    def set_limits(self, pathname: str, limit_bytes: int, limit_inodes: int) -> ScopeRecord:
        """Change a registered scope's limits, durably; the new record."""
        record = replace(self.scopes[pathname], limit_bytes=limit_bytes,
                         limit_inodes=limit_inodes)
        self.put(record)
        return record

    def remove(self, pathname: str) -> None:
        """Forget a scope, durably."""
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

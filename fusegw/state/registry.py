"""The scope registry: which quota scopes exist on the volume, their types and limits.

It lives with the volume so that every node's gateway sees the same limits and they survive a
reinstall of the node.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusegw.ids import QuotaScopeID
from fusegw.state.store import StateDir

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

    def save(self) -> None:
        self._state.write(
            REGISTRY_FILE,
            {
                "scopes": {
                    p: {
                        "qsid": str(r.qsid),
                        "limit_bytes": r.limit_bytes,
                        "limit_inodes": r.limit_inodes,
                    }
                    for p, r in sorted(self.scopes.items())
                }
            },
        )

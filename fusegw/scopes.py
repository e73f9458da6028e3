"""Quota-scope CRUD: the one place that changes scopes and limits, for the API and setfattr.

Each change is checked completely before anything is written, written to the backend, the
registry and the ledger, and logged on the audit logger with the caller and before/after. A
registry write that fails (a full backing disk) undoes what the backend did and answers
VolumeWriteError (507 for ENOSPC): memory, registry and backend stay as they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from backends import BackendError, QuotaBackend, QuotaLimits
from fusegw.errors import (
    GatewayError,
    QuotaScopeExists,
    QuotaScopeNotEmpty,
    QuotaScopeNotFound,
)
from fusegw.ids import QuotaScopeID
from fusegw.ledger import Ledger, ScopeUsage
from fusegw.native import NativeFigures
from fusegw.state.registry import Registry, ScopeRecord
from fusegw.state.store import VolumeWriteError

audit = logging.getLogger("fusegw.audit")


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    pid: int
    via: str  # "socket", "xattr", "cli"


PathChanged = Callable[[list[str]], Awaitable[None]]
"""Told the components, below the volume root, of a path whose entries the control socket just
created or removed, so that the mount can drop what the kernel cached of them."""


class ScopeService:
    def __init__(self, registry: Registry, ledger: Ledger, backend: QuotaBackend,
                 on_change: PathChanged | None = None) -> None:
        self.registry = registry
        self.ledger = ledger
        self.backend = backend
        self.on_change = on_change
        self.native = NativeFigures(backend)

    async def changed(self, parts: list[str]) -> None:
        """Tell the mount that entries along this path (components below the volume root) were
        created or removed here, so what the kernel cached of them goes at once."""
        if self.on_change is not None:
            await self.on_change(parts)

    # -- reads --------------------------------------------------------------------------------

    def get(self, qsid: QuotaScopeID) -> ScopeUsage:
        scope = self.ledger.scopes.get(qsid.pathname)
        if scope is None or scope.qsid != qsid:
            raise QuotaScopeNotFound(f"quota scope {qsid} does not exist")
        return scope

    async def describe(self, qsid: QuotaScopeID) -> dict[str, int | None]:
        scope = self.get(qsid)
        native = await self.native.get(scope.pathname)
        figures = _figures(scope)
        if native is not None:
            figures.update(_usage_dict(native))
        return figures

    def list(self) -> list[dict[str, Any]]:
        return [dict(_figures(s), qsid=str(s.qsid), vfolders=len(s.vfolders),
                     rebuilding=s.rebuilding)
                for s in sorted(self.ledger.scopes.values(), key=lambda s: str(s.qsid))]

    async def check(self, qsid: QuotaScopeID, repair: bool, caller: Caller) -> dict[str, Any]:
        """Compare the ledger with the disk (changes made beside the gateway); repair on ask."""
        scope = self.get(qsid)
        result, changed = await self.ledger.check(scope)
        disk = {"used_bytes": result.used_bytes, "used_inodes": result.used_inodes}
        ledger = {"used_bytes": scope.used_bytes, "used_inodes": scope.used_inodes}
        vf_drift = sorted(
            h for h in set(result.vfolders) | set(scope.vfolders)
            if tuple(result.vfolders.get(h, (0, 0))) != _vf_figures(scope, h)
        )
        consistent = disk == ledger and not vf_drift
        report: dict[str, Any] = {"qsid": str(qsid), "ledger": ledger, "disk": disk,
                                  "vfolders_drifted": vf_drift, "consistent": consistent,
                                  "changed_during_check": changed, "files": result.files,
                                  "repaired": False}
        if repair and not consistent:
            self.ledger.start_rebuild([scope])
            await self.ledger.rebuild(scope)
            report["repaired"] = True
            report["ledger_after"] = {"used_bytes": scope.used_bytes,
                                      "used_inodes": scope.used_inodes}
            self.audit(caller, "quota-scope.repair", qsid, ledger, report["ledger_after"])
        return report

    # -- changes ------------------------------------------------------------------------------

    async def create(self, qsid: QuotaScopeID, limits: QuotaLimits, caller: Caller) -> None:
        existing = self.registry.scopes.get(qsid.pathname)
        if existing is not None:
            raise QuotaScopeExists(
                f"quota scope {existing.qsid} already exists"
                + ("" if existing.qsid == qsid else f" with the same UUID as {qsid}"),
            )
        path = self.backend.scope_path(qsid.pathname)
        adopted = os.path.isdir(path)
        try:
            if not adopted:
                await self.backend.create_scope(qsid.pathname, limits)
            else:
                await self.backend.update_scope(qsid.pathname, limits)
        except OSError as e:
            raise VolumeWriteError(f"the scope directory {path}", e) from None
        try:
            self.registry.put(ScopeRecord(qsid, limits.limit_bytes, limits.limit_inodes))
        except VolumeWriteError:
            if not adopted:  # an adopted directory was there before: it stays, to be adopted
                with _best_effort():  # again by a retry
                    await self.backend.delete_scope(qsid.pathname)
            raise
        scope = self.ledger.add_scope(qsid, limits.limit_bytes, limits.limit_inodes)
        if adopted:
            self.ledger.start_rebuild([scope])
            await self.ledger.rebuild(scope)
        else:
            try:
                await self.ledger.new_scope(scope, os.lstat(path).st_blocks * 512)
            except GatewayError:  # the shared ledger's Redis does not answer: undo it all
                self.ledger.remove_scope(qsid.pathname)
                with _best_effort():
                    self.registry.remove(qsid.pathname)
                with _best_effort():
                    await self.backend.delete_scope(qsid.pathname)
                raise
        await self.ledger.announce({"kind": "scopes"})
        await self.changed([qsid.pathname])
        self.audit(caller, "quota-scope.create", qsid, None, _limits(scope),
                    adopted=adopted)

    async def update(self, qsid: QuotaScopeID, changes: dict[str, int], caller: Caller,
                     create_missing: bool) -> None:
        """Set the given limits (0 lifts one); create the scope first if asked and missing."""
        record = self.registry.scopes.get(qsid.pathname)
        if create_missing and (record is None or record.qsid != qsid):
            # create() refuses (409) a scope whose UUID another type already uses
            await self.create(qsid, QuotaLimits(**changes), caller)
            return
        scope = self.get(qsid)
        before = _limits(scope)
        after = dict(before, **changes)
        await self.backend.update_scope(scope.pathname, QuotaLimits(**after))
        await self._store_limits(scope, before, after)
        self.audit(caller, "quota-scope.update", qsid, before, after)

    async def unset(self, qsid: QuotaScopeID, caller: Caller) -> None:
        scope = self.get(qsid)
        before = _limits(scope)
        await self.backend.unset_scope(scope.pathname)
        after = {"limit_bytes": 0, "limit_inodes": 0}
        await self._store_limits(scope, before, after)
        self.audit(caller, "quota-scope.unset", qsid, before, after)

    async def delete(self, qsid: QuotaScopeID, caller: Caller) -> None:
        scope = self.get(qsid)
        path = self.backend.scope_path(scope.pathname)
        hidden = self.backend.scope_hidden_names
        if os.path.isdir(path) and [n for n in os.listdir(path) if n not in hidden]:
            raise QuotaScopeNotEmpty(f"quota scope {qsid} still holds vfolders")
        before = _limits(scope)
        await self.backend.delete_scope(scope.pathname)
        try:
            self.registry.remove(scope.pathname)
        except VolumeWriteError:
            with _best_effort():  # the rmdir freed a block: the directory comes back
                await self.backend.create_scope(scope.pathname, QuotaLimits(**before))
            raise
        self.ledger.remove_scope(scope.pathname)
        await self.ledger.announce({"kind": "scopes"})
        await self.changed([scope.pathname])
        self.audit(caller, "quota-scope.delete", qsid, before, None)

    async def set_limit(self, scope: ScopeUsage, field: str, value: int, uid: int,
                        pid: int) -> None:
        """The setfattr path: one limit on one existing scope."""
        await self.update(scope.qsid, {field: value}, Caller(uid, pid, "xattr"),
                          create_missing=False)

    async def _store_limits(self, scope: ScopeUsage, before: dict[str, int],
                            after: dict[str, int]) -> None:
        """Record the limits the backend now has; if the registry cannot be written, give the
        backend its limits back and raise, leaving the scope as it was."""
        self.native.forget(scope.pathname)
        try:
            await self.ledger.store_limits(scope, after["limit_bytes"], after["limit_inodes"])
            try:
                record = self.registry.set_limits(scope.pathname, after["limit_bytes"],
                                                  after["limit_inodes"])
            except VolumeWriteError:
                with _best_effort():
                    await self.ledger.store_limits(scope, before["limit_bytes"],
                                                   before["limit_inodes"])
                raise
        except GatewayError:
            with _best_effort():
                await self.backend.update_scope(scope.pathname, QuotaLimits(**before))
            raise
        scope.limit_bytes, scope.limit_inodes = record.limit_bytes, record.limit_inodes
        await self.ledger.announce({"kind": "scopes"})

    async def reload(self, event: dict[str, Any] | None = None) -> None:
        """Another node changed the registry: read it again and follow it (scopes created,
        deleted, limits changed), figures from the shared ledger."""
        self.registry.load()
        records = self.registry.scopes
        for pathname in [p for p in self.ledger.scopes if p not in records]:
            self.ledger.remove_scope(pathname)
        for pathname, rec in records.items():
            scope = self.ledger.scopes.get(pathname)
            if scope is None or scope.qsid != rec.qsid:
                scope = self.ledger.add_scope(rec.qsid, rec.limit_bytes, rec.limit_inodes)
                await self.ledger.refresh(scope)
            if (scope.limit_bytes, scope.limit_inodes) != (rec.limit_bytes, rec.limit_inodes):
                await self.ledger.refresh(scope)  # the shared ledger gives back its grant
                scope.limit_bytes, scope.limit_inodes = rec.limit_bytes, rec.limit_inodes
            self.native.forget(pathname)

    @staticmethod
    def audit(caller: Caller, action: str, qsid: QuotaScopeID, before: Any, after: Any,
               **extra: Any) -> None:
        audit.info(json.dumps({"event": action, "qsid": str(qsid), "uid": caller.uid,
                               "pid": caller.pid, "via": caller.via, "before": before,
                               "after": after, **extra}, sort_keys=True))


def _best_effort() -> contextlib.AbstractContextManager[None]:
    """Undoing a step after a later one failed: the later failure is what the caller hears."""
    return contextlib.suppress(BackendError, OSError, GatewayError)


def _figures(scope: ScopeUsage) -> dict[str, int | None]:
    return {"used_bytes": scope.used_bytes, "limit_bytes": scope.limit_bytes or None,
            "used_inodes": scope.used_inodes, "limit_inodes": scope.limit_inodes or None}


def _vf_figures(scope: ScopeUsage, hex_: str) -> tuple[int, int]:
    vf = scope.vfolders.get(hex_)
    return (vf.used_bytes, vf.used_inodes) if vf else (0, 0)


def _limits(scope: ScopeUsage) -> dict[str, int]:
    return {"limit_bytes": scope.limit_bytes, "limit_inodes": scope.limit_inodes}


def _usage_dict(native: Any) -> dict[str, int]:
    fields = ("used_bytes", "limit_bytes", "used_inodes", "limit_inodes")
    return {f: getattr(native, f) for f in fields if getattr(native, f, None) is not None}

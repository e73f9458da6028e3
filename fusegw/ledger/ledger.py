"""The ledger: every scope's usage, kept exact by the filesystem operations, persisted on the
volume, and rebuilt after an unclean stop for the scopes that were being changed.

Crash safety rests on one rule: before the first change to a scope after a snapshot, the scope
is recorded (durably) in `dirty.json`. A snapshot is written once a scope has been quiet for a
moment, and only then is the scope taken off the dirty list. So after kill -9 every scope whose
snapshot may be stale is on the list, and only those are rescanned.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import trio

from fusegw.ids import QuotaScopeID
from fusegw.ledger.scan import ScanResult, scan_scope
from fusegw.ledger.usage import QuotaExceeded, ScopeUsage
from fusegw.state.store import StateDir

log = logging.getLogger("fusegw.ledger")

SNAPSHOT_FILE = "ledger.json"
DIRTY_FILE = "dirty.json"
QUIET_SECONDS = 1.0
UNFROZEN_ATTEMPTS = 2

__all__ = ["Ledger", "QuotaExceeded", "Settler"]


class Settler(Protocol):
    """Something holding charges the disk may still change (late allocations)."""

    def pending(self, scope: ScopeUsage) -> bool: ...

    async def settle(self, scope: ScopeUsage) -> None: ...

    def forget_scope(self, scope: ScopeUsage) -> None: ...


class Ledger:
    def __init__(self, volume: Path, state: StateDir, enforce_bytes: bool = True,
                 enforce_inodes: bool = True) -> None:
        self.volume = volume
        self.enforce_bytes = enforce_bytes
        self.enforce_inodes = enforce_inodes
        self.state = state
        self.scopes: dict[str, ScopeUsage] = {}
        self.rebuilds: list[dict[str, Any]] = []  # what was rescanned since start, for status
        self.scans: dict[str, int] = {}  # scans in progress: scope -> files seen so far
        self.settlers: list[Settler] = []

    # -- admission and charging (called synchronously from FUSE handlers) --------------------

    async def admit(self, scope: ScopeUsage, growth: bool) -> None:
        """Wait while a rebuild holds the scope: growth until it ends, shrinks only when frozen."""
        while scope.rebuilding and (growth or scope.frozen):
            scope.waiting += 1
            try:
                await scope.ready.wait()
            finally:
                scope.waiting -= 1

    def begin_change(self, scope: ScopeUsage) -> None:
        """Record durably that the scope is about to change, before the change reaches disk."""
        scope.generation += 1
        scope.last_change = time.monotonic()
        if not scope.dirty:
            scope.dirty = True
            self._write_dirty()

    # -- scope registry mirror ------------------------------------------------------------------

    def add_scope(self, qsid: QuotaScopeID, limit_bytes: int, limit_inodes: int) -> ScopeUsage:
        scope = ScopeUsage(qsid, limit_bytes, limit_inodes, self.enforce_bytes,
                           self.enforce_inodes)
        self.scopes[scope.pathname] = scope
        return scope

    def remove_scope(self, pathname: str) -> None:
        self.scopes.pop(pathname, None)
        self.flush(force=True)

    # -- persistence ----------------------------------------------------------------------------

    def load(self) -> list[ScopeUsage]:
        """Fill figures from the snapshot; return the scopes that need a rebuild."""
        snapshot = self.state.read(SNAPSHOT_FILE)
        dirty = self.state.read(DIRTY_FILE)
        saved: dict[str, Any] = (snapshot or {}).get("scopes", {})
        stale = set((dirty or {}).get("dirty", []))
        need: list[ScopeUsage] = []
        for pathname, scope in self.scopes.items():
            rec = saved.get(pathname)
            if rec is None or pathname in stale:
                need.append(scope)
                continue
            scope.set_figures(rec["used_bytes"], rec["used_inodes"], rec.get("vfolders", {}))
        return need

    def flush(self, force: bool = False) -> None:
        """Snapshot, then clear the dirty marks of scopes quiet for QUIET_SECONDS (all if force)."""
        if force:
            settled = [s for s in self.scopes.values() if s.dirty and not s.rebuilding]
        else:  # a scope with late allocations to settle stays dirty until they are
            settled = [s for s in self._quiet() if not self._pending(s)]
        if not settled and not force:
            return
        figures = {p: _figures(s) for p, s in self.scopes.items()}
        self.state.write(SNAPSHOT_FILE, {"scopes": figures})
        for s in settled:
            s.dirty = False
        self._write_dirty()

    def _write_dirty(self) -> None:
        dirty = sorted(p for p, s in self.scopes.items() if s.dirty or s.rebuilding)
        self.state.write(DIRTY_FILE, {"dirty": dirty})

    def _quiet(self) -> list[ScopeUsage]:
        now = time.monotonic()
        return [s for s in self.scopes.values()
                if s.dirty and not s.rebuilding and now - s.last_change >= QUIET_SECONDS]

    def _pending(self, scope: ScopeUsage) -> bool:
        return any(settler.pending(scope) for settler in self.settlers)

    async def flush_loop(self, interval: float = 0.5) -> None:
        """Settle and snapshot the scopes that have gone quiet."""
        while True:
            await trio.sleep(interval)
            for scope in self._quiet():
                for settler in self.settlers:
                    if settler.pending(scope):
                        await settler.settle(scope)
            if any(s.dirty for s in self.scopes.values()):
                self.flush()

    # -- rebuild --------------------------------------------------------------------------------

    def start_rebuild(self, scopes: Iterable[ScopeUsage]) -> list[ScopeUsage]:
        """Mark the scopes as rebuilding (growth waits from now on) and durably dirty."""
        marked = list(scopes)
        for s in marked:
            s.ready = trio.Event()
            s.dirty = True
        if marked:
            self._write_dirty()
        return marked

    async def rebuild(self, scope: ScopeUsage) -> None:
        """Rescan one scope while the mount keeps answering.

        Shrinks may run during the first attempts; if one did (the generation moved), the scan
        is repeated, and the last attempt freezes the scope so that it must settle.
        """
        started = time.monotonic()
        path = str(self.volume / scope.pathname)
        log.info("rebuild start scope=%s", scope.qsid)
        await _test_gate()
        attempt = 0
        try:
            while True:
                attempt += 1
                scope.frozen = attempt > UNFROZEN_ATTEMPTS
                generation = scope.generation
                result = await self._scan(scope, path)
                if scope.generation == generation or scope.frozen:
                    break
        finally:
            scope.frozen = False
        scope.set_figures(result.used_bytes, result.used_inodes, result.vfolders)
        for settler in self.settlers:
            settler.forget_scope(scope)
        scope.ready.set()
        seconds = time.monotonic() - started
        self.rebuilds.append(
            {"qsid": str(scope.qsid), "files": result.files, "seconds": round(seconds, 3),
             "attempts": attempt}
        )
        log.info(
            "rebuild done scope=%s files=%d used_bytes=%d used_inodes=%d seconds=%.2f",
            scope.qsid, result.files, result.used_bytes, result.used_inodes, seconds,
        )
        self.flush(force=True)

    async def check(self, scope: ScopeUsage) -> tuple[ScanResult, bool]:
        """Scan without changing anything; also tell whether the scope changed meanwhile."""
        generation = scope.generation
        result = await self._scan(scope, str(self.volume / scope.pathname))
        return result, scope.generation != generation

    async def _scan(self, scope: ScopeUsage, path: str) -> ScanResult:
        key = str(scope.qsid)

        def progress(files: int) -> None:  # runs in the worker thread
            self.scans[key] = files
            log.info("scan progress scope=%s files=%d", key, files)

        if not os.path.isdir(path):
            return ScanResult()
        self.scans[key] = 0
        try:
            return await trio.to_thread.run_sync(scan_scope, path, progress, 10_000)
        finally:
            self.scans.pop(key, None)


async def _test_gate() -> None:
    """FUSEGW_REBUILD_GATE=PATH holds rebuilds until PATH exists: lets tests observe the mount
    while a rebuild is pending, without depending on how fast the disk scans."""
    gate = os.environ.get("FUSEGW_REBUILD_GATE")
    while gate and not os.path.exists(gate):
        await trio.sleep(0.05)


def _figures(scope: ScopeUsage) -> dict[str, Any]:
    return {
        "used_bytes": scope.used_bytes,
        "used_inodes": scope.used_inodes,
        "vfolders": {h: [v.used_bytes, v.used_inodes] for h, v in scope.vfolders.items()},
    }

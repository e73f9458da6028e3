"""The ledger: every scope's usage, kept exact by the filesystem operations, persisted on the
volume, and rebuilt after an unclean stop for the scopes that were being changed.

Crash safety rests on one rule: before the first change to a scope after a snapshot, the scope
is recorded (durably) in `dirty.json`. A snapshot is written once a scope has been quiet for a
moment, and only then is the scope taken off the dirty list. So after kill -9 every scope whose
snapshot may be stale is on the list, and only those are rescanned.

A full backing disk (ENOSPC) must not stop the mount, so no write here raises: a snapshot or
a dirty mark that cannot be written stays in memory, is retried by the flush loop, and is
reported (`StateDir.persist_error`, logged once when it starts failing and once when it
recovers). The rule above still holds because the ledger knows what the disk says — the scopes
the snapshot on disk holds (`_disk_snapshot`) and the marks on disk (`_disk_marks`) — and keeps
one invariant: every scope of the snapshot on disk whose figures may be stale is marked on disk.
A scope about to change that cannot be marked takes the snapshot with it (ledger.json is
unlinked, which needs no space, and the directory fsynced): with no snapshot a restart rescans
every scope. Only if even that fails is the change refused, with the errno. A dirty.json that
exists but cannot be parsed marks every scope.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import trio

from fusegw.errors import GatewayError
from fusegw.ids import QuotaScopeID
from fusegw.ledger.reservation import NOTHING, Reservation
from fusegw.ledger.scan import ScanResult, scan_scope
from fusegw.ledger.usage import QuotaExceeded, ScopeUsage
from fusegw.state.store import StateDir, UnreadableState, VolumeWriteError

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
        self._disk_snapshot: frozenset[str] = frozenset()  # scopes ledger.json on disk holds
        self._disk_marks: frozenset[str] = frozenset()  # scopes dirty.json on disk marks
        self.snapshot_dropped = False  # ledger.json unlinked for want of a dirty mark
        self.settle_failing: dict[str, str] = {}  # scope -> why its late blocks wait
        self.hidden_in_scope: frozenset[str] = frozenset()  # the storage's own files

    # -- admission and charging ----------------------------------------------------------------

    def scope(self, pathname: str | None) -> ScopeUsage | None:
        """The scope of that directory name, None for none (the volume root, no such scope)."""
        return self.scopes.get(pathname) if pathname is not None else None

    async def reserve(self, scope: ScopeUsage | None, nbytes: int = 0, ninodes: int = 0,
                      growth: bool = True) -> Reservation:
        """Admit a change: wait while a rebuild holds the scope, reserve its growth (EDQUOT
        beyond a limit), and record durably that the scope is about to change. `growth=False`
        for a change that can only shrink the scope."""
        if scope is None:
            return NOTHING
        if scope.rebuilding:
            await self.admit(scope, growth)
        if not growth:
            nbytes = ninodes = 0
        scope.reserve(nbytes, ninodes)
        try:
            self.begin_change(scope)
        except BaseException:
            scope.unreserve(nbytes, ninodes)
            raise
        return Reservation(scope, nbytes, ninodes)

    async def admit(self, scope: ScopeUsage, growth: bool) -> None:
        """Wait while a rebuild holds the scope: growth until it ends, shrinks only when frozen."""
        while scope.rebuilding and (growth or scope.frozen):
            scope.waiting += 1
            try:
                await scope.ready.wait()
            finally:
                scope.waiting -= 1

    def begin_change(self, scope: ScopeUsage) -> None:
        """Record durably that the scope is about to change, before the change reaches disk;
        VolumeWriteError (the change must be refused) only if neither a dirty mark nor the
        removal of the snapshot can be made durable."""
        scope.generation += 1
        scope.last_change = time.monotonic()
        if not scope.dirty:
            self._protect({scope.pathname})
            scope.dirty = True

    # -- scope registry mirror ------------------------------------------------------------------

    def add_scope(self, qsid: QuotaScopeID, limit_bytes: int, limit_inodes: int) -> ScopeUsage:
        scope = ScopeUsage(qsid, limit_bytes, limit_inodes, self.enforce_bytes,
                           self.enforce_inodes)
        self.scopes[scope.pathname] = scope
        return scope

    def remove_scope(self, pathname: str) -> None:
        self.scopes.pop(pathname, None)
        self.flush(force=True)

    async def new_scope(self, scope: ScopeUsage, used_bytes: int) -> None:
        """The first figures of a scope just created (its empty directory's blocks)."""
        scope.set_figures(used_bytes, 0, {})
        self.flush(force=True)

    async def refresh(self, scope: ScopeUsage) -> None:
        """Read a scope another node created (the shared ledger's figures); here, nothing."""

    async def store_limits(self, scope: ScopeUsage, limit_bytes: int, limit_inodes: int
                           ) -> None:
        """Before the registry records new limits: where else they must be (the shared
        ledger's Redis); here, nowhere."""

    async def announce(self, event: dict[str, Any]) -> None:
        """Tell the other nodes of a change made here (the shared ledger); here, no one."""

    def commit_soon(self, scope: ScopeUsage | None) -> None:
        """A file was closed or synced: the shared ledger commits at once; here, nothing."""

    # -- persistence ----------------------------------------------------------------------------

    def load(self) -> list[ScopeUsage]:
        """Fill figures from the snapshot; return the scopes that need a rebuild."""
        snapshot = self.state.read(SNAPSHOT_FILE)
        saved: dict[str, Any] = (snapshot or {}).get("scopes", {})
        try:
            stale = set((self.state.read_checked(DIRTY_FILE) or {}).get("dirty", []))
        except UnreadableState as e:
            log.warning("%s: every scope is rebuilt", e)
            stale = set(saved) | set(self.scopes)
        self._disk_snapshot = frozenset(saved)
        self._disk_marks = frozenset(stale)
        need: list[ScopeUsage] = []
        for pathname, scope in self.scopes.items():
            rec = saved.get(pathname)
            if rec is None or pathname in stale:
                need.append(scope)
                continue
            scope.set_figures(rec["used_bytes"], rec["used_inodes"], rec.get("vfolders", {}))
        return need

    def flush(self, force: bool = False) -> None:
        """Snapshot, then clear the dirty marks of scopes quiet for QUIET_SECONDS (all if force).

        Never raises: what cannot be written stays in memory and the flush loop retries it.
        """
        # a scope with late allocations to settle stays dirty until they are
        candidates = ([s for s in self.scopes.values() if s.dirty and not s.rebuilding]
                      if force else self._quiet())
        settled = [s for s in candidates if not self._pending(s)]
        if not settled and not force and not self.behind():
            return
        # every scope dirty now is marked before a new snapshot holds its figures
        if not self._wanted_marks() <= self._disk_marks and not self._write_marks():
            return
        figures = {p: _figures(s) for p, s in self.scopes.items()}
        if not self.state.try_write(SNAPSHOT_FILE, {"scopes": figures}):
            return
        self._disk_snapshot = frozenset(figures)
        self.snapshot_dropped = False
        for s in settled:
            s.dirty = False
        if self._disk_marks != self._wanted_marks() or DIRTY_FILE in self.state.failing:
            self._write_marks()  # on failure more stays marked than needs: safe, retried

    def behind(self) -> bool:
        """Whether the disk lags memory: a write failed, or the marks on disk are not the
        ones in memory (a clear that could not be written)."""
        return (bool(self.state.failing.keys() & {SNAPSHOT_FILE, DIRTY_FILE})
                or self.snapshot_dropped or self._disk_marks != self._wanted_marks())

    def _wanted_marks(self) -> frozenset[str]:
        return frozenset(p for p, s in self.scopes.items() if s.dirty or s.rebuilding)

    def _marked_on_disk(self, pathnames: Iterable[str]) -> bool:
        """Whether a restart would distrust these scopes' snapshot figures: marked, or not in
        the snapshot on disk at all."""
        return all(p in self._disk_marks or p not in self._disk_snapshot for p in pathnames)

    def _write_marks(self, extra: frozenset[str] = frozenset()) -> bool:
        marks = self._wanted_marks() | extra
        if not self.state.try_write(DIRTY_FILE, {"dirty": sorted(marks)}):
            return False
        self._disk_marks = marks
        return True

    def _protect(self, pathnames: set[str]) -> None:
        """Before these scopes change: make sure a restart will not trust their snapshot
        figures. A mark if it can be written, else no snapshot at all."""
        if self._marked_on_disk(pathnames) or self._write_marks(frozenset(pathnames)):
            return
        try:
            self.state.remove(SNAPSHOT_FILE)
        except OSError as e:
            raise VolumeWriteError(f"a dirty mark (nor remove {SNAPSHOT_FILE})", e) from None
        self._disk_snapshot = frozenset()
        if not self.snapshot_dropped:
            log.warning("dirty mark cannot be written: snapshot removed, the next start "
                        "rescans every scope")
        self.snapshot_dropped = True

    def _quiet(self) -> list[ScopeUsage]:
        now = time.monotonic()
        return [s for s in self.scopes.values()
                if s.dirty and not s.rebuilding and now - s.last_change >= QUIET_SECONDS]

    def _pending(self, scope: ScopeUsage) -> bool:
        return any(settler.pending(scope) for settler in self.settlers)

    async def flush_loop(self, interval: float = 0.5) -> None:
        """Settle and snapshot the scopes that have gone quiet; retry what could not be
        written. Never ends by an error: the mount must outlive a full or failing disk."""
        while True:
            await trio.sleep(interval)
            try:
                await self._settle_quiet()
                if self.behind() or any(s.dirty for s in self.scopes.values()):
                    self.flush()
            except Exception:  # a bug: say so and go on, the mount must stay up
                log.exception("flush loop")

    async def _settle_quiet(self) -> None:
        """Write back the late allocations of quiet scopes; one that fails (ENOSPC at
        writeback) keeps its scope dirty and is tried again next time."""
        pending = {str(s.qsid) for s in self.scopes.values() if self._pending(s)}
        for key in [k for k in self.settle_failing if k not in pending]:  # rescanned, gone
            del self.settle_failing[key]
            log.warning("writeback recovered scope=%s: nothing left to write back", key)
        for scope in self._quiet():
            for settler in self.settlers:
                if not settler.pending(scope):
                    continue
                key = str(scope.qsid)
                try:
                    await settler.settle(scope)
                except (OSError, GatewayError) as e:
                    if key not in self.settle_failing:
                        log.error("writeback failing scope=%s error=%s: scope stays dirty, "
                                  "retrying", key, e)
                    self.settle_failing[key] = str(e)
                    continue
                if self.settle_failing.pop(key, None) is not None:
                    log.warning("writeback recovered scope=%s", key)

    # -- rebuild --------------------------------------------------------------------------------

    def start_rebuild(self, scopes: Iterable[ScopeUsage]) -> list[ScopeUsage]:
        """Mark the scopes as rebuilding (growth waits from now on) and durably dirty. At
        start the scopes to rebuild are marked on disk already: nothing is written."""
        marked = list(scopes)
        if marked:
            self._protect({s.pathname for s in marked})
        for s in marked:
            s.ready = trio.Event()
            s.dirty = True
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
                await scope.quiesce()  # no change half-made while the scan runs
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
            return await trio.to_thread.run_sync(scan_scope, path, progress, 10_000,
                                                 self.hidden_in_scope)
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

"""`fusegw migrate --apply`: carry out a plan on the volume, resumably.

Order: take the migration lock (`.fusegw/migrate.lock`, an exclusive flock: a second run is
refused, and a killed run's lock goes with it) and the serving lease (a volume a gateway
serves is refused unless `force_while_served`); create every new scope through the volume's
backend (a directory on vfs, a subvolume on btrfs, ...; with `set_limits` limited to the
largest old max_size of its vfolders) and register it; move every vfolder: a rename, or where
that answers EXDEV a reflink or verified copy (`transfer`) then the removal of the source,
journaled (`journal`); with `quarantine`, move the leftovers into `.fusegw/unclaimed/`; prune
the emptied fan-out; and only when no v2 vfolder or leftover is left, write `version.txt` = 3.

Every step is safe to repeat, so a run killed anywhere (kill -9, a crash) is finished by running
it again, and ends as an uninterrupted run would: a scope directory made but not registered is
adopted, a vfolder renamed is no longer in the flat layout, a copy under way is found in the
journal (its temporary directory removed and the copy redone, or, once it took the vfolder's
place, the rest of the source removed).

Test hook: the environment variable FUSEGW_MIGRATE_KILL_AFTER=N makes the process SIGKILL
itself right after its N-th step (a scope created or registered, a vfolder renamed, a copy's
journal entry, copy, verification, placing and source removal, a leftover quarantined, the
version written), so tests can interrupt a run at any of them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import trio

from backends.atomic import fsync_directory
from backends.base import BackendError, QuotaBackend, QuotaLimits
from fusegw.errors import VolumeRefused
from fusegw.layout import STATE_DIR, write_version
from fusegw.migration import discover, transfer
from fusegw.migration.journal import Journal
from fusegw.migration.plan import Leftover, Move, Plan
from fusegw.settings import fusegw_mounts_of
from fusegw.state.lease import Lease
from fusegw.state.registry import Registry, ScopeRecord
from fusegw.state.store import StateDir

LOCK_FILE = "migrate.lock"
UNCLAIMED = "unclaimed"
KILL_ENV = "FUSEGW_MIGRATE_KILL_AFTER"
TEMP_SUFFIX = ".fusegw-migrating"
REGISTER_BATCH = 256  # new scopes per registry write


@contextlib.contextmanager
def migration_lock(state: StateDir) -> Iterator[None]:
    """Hold `.fusegw/migrate.lock` exclusively, or refuse: one migration at a time. The
    copying children hold it too (transfer.HELD_FDS): one left running by a killed run
    keeps a re-run out until it ends."""
    fd = os.open(state.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VolumeRefused(f"another `fusegw migrate` (or a copy it left running) is "
                                f"running on {state.path.parent}") from None
        transfer.HELD_FDS = (fd,)
        yield
    finally:
        transfer.HELD_FDS = ()
        os.close(fd)


class Progress:
    """One line on stderr: vfolders done of all, copies, leftovers, the rate."""

    def __init__(self, total: int, out: TextIO = sys.stderr, every: float = 0.5) -> None:
        self.total, self.out, self.every = total, out, every
        self.done = self.copied = self.leftovers = 0
        self.start = self._last = time.monotonic()
        self._tty = out.isatty()

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        rate = self.done / max(now - self.start, 1e-6)
        line = (f"migrate: {self.done}/{self.total} vfolders moved ({self.copied} by copy), "
                f"{self.leftovers} leftovers, {rate:.1f} vfolders/s")
        self.out.write(("\r" + line) if self._tty else line + "\n")
        if force and self._tty:
            self.out.write("\n")
        self.out.flush()


@dataclass
class Outcome:
    """What became of each vfolder (by source path) and each leftover."""

    status: dict[str, str] = field(default_factory=dict)  # src relpath -> moved/copied/...
    quarantined: dict[str, str] = field(default_factory=dict)  # relpath -> where it went
    complete: bool = False  # version.txt says 3


class Migration:
    def __init__(self, volume: Path, backend: QuotaBackend, *, set_limits: bool = False,
                 quarantine: bool = False, force_while_served: bool = False,
                 progress_out: TextIO = sys.stderr) -> None:
        self.volume = volume
        self.backend = backend
        self.set_limits = set_limits
        self.quarantine = quarantine
        self.force_while_served = force_while_served
        self.progress_out = progress_out
        self.state = StateDir(volume)
        self.journal = Journal(self.state)
        self.registry = Registry(self.state)
        self.outcome = Outcome()  # also what a failed run got done, for the report
        self._steps = 0
        kill = os.environ.get(KILL_ENV, "")
        self._kill_after = int(kill) if kill.isdigit() else 0

    def step(self) -> None:
        self._steps += 1
        if self._kill_after and self._steps >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    # -- the run ------------------------------------------------------------------------------

    def run(self, plan: Plan) -> Outcome:
        """Carry out `plan` (made with this volume's registry and journal, under the lock)."""
        outcome = self.outcome
        progress = Progress(len(plan.moves), self.progress_out)
        progress.leftovers = len(plan.leftovers)
        trio.run(self._create_scopes, plan)
        for move in plan.moves:
            try:
                outcome.status[move.src] = self._move(move)
            except (OSError, transfer.CopyFailed) as e:
                outcome.status[move.src] = f"failed: {e}"
                raise
            progress.done += 1
            progress.copied += outcome.status[move.src] != "moved"
            progress.tick()
        if self.quarantine:
            for left in plan.leftovers:
                outcome.quarantined[left.relpath] = self._quarantine(left)
                progress.leftovers -= 1
        progress.tick(force=True)
        discover.prune_empty_fanouts(self.volume)
        if next(discover.scan(self.volume), None) is None:
            write_version(self.volume)
            self.step()
            self.journal.remove()
            outcome.complete = True
        return outcome

    def open(self) -> None:
        """Create or check `.fusegw/` (before the lock can be taken)."""
        self.state.open()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The lock, the lease (unless forced) and the journal and registry loaded."""
        with migration_lock(self.state):
            served = [] if self.force_while_served else fusegw_mounts_of(self.volume)
            if served:
                raise VolumeRefused(f"{self.volume} is served by fusegw at "
                                    f"{', '.join(map(str, served))} on this node (unmount it, "
                                    "or --force-while-served)")
            lease = None if self.force_while_served else Lease(self.state)
            if lease is not None:
                try:
                    lease.acquire()
                except VolumeRefused as e:
                    raise VolumeRefused(f"{e.detail} (stop it, or --force-while-served)") \
                        from None
            try:
                self.journal.load()
                self.registry.load()
                yield
            finally:
                if lease is not None:
                    lease.release()

    # -- scopes -------------------------------------------------------------------------------

    async def _create_scopes(self, plan: Plan) -> None:
        """Create the new scopes and register them, in batches (one registry write each): a
        scope made but not yet registered when a run is killed is adopted by the next."""
        new = plan.new_scopes
        if not new:
            return
        await self.backend.check_volume()
        made: list[ScopeRecord] = []
        try:
            for scope in new:
                pathname = scope.qsid.pathname
                limits = QuotaLimits(scope.limit_bytes if self.set_limits else 0)
                path = self.backend.scope_path(pathname)
                try:
                    if not os.path.lexists(path):
                        await self.backend.create_scope(pathname, limits)
                    elif limits.limit_bytes:  # made by a killed run, or beforehand: adopted
                        await self.backend.update_scope(pathname, limits)
                except OSError as e:
                    raise BackendError(f"cannot create the scope directory {path}: "
                                       f"{e.strerror}", e.errno or errno.EIO) from None
                made.append(ScopeRecord(scope.qsid, limits.limit_bytes, 0))
                self.step()
                if len(made) >= REGISTER_BATCH:
                    self._register(made)
        finally:
            self._register(made)

    def _register(self, records: list[ScopeRecord]) -> None:
        if records:
            self.registry.save(dict(self.registry.scopes,
                                    **{r.qsid.pathname: r for r in records}))
            records.clear()
            self.step()

    # -- vfolders -----------------------------------------------------------------------------

    def _move(self, move: Move) -> str:
        src, dst = self.volume / move.src, self.volume / move.dst
        if move.hex in self.journal.copies and os.path.lexists(dst):
            self._finish_copy(move)  # placed before a kill: only the source is left to go
            return "copied"
        dst.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            os.rename(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        else:
            self.step()
            discover.prune_fanout(self.volume, move.src)
            return "moved"
        if move.hex not in self.journal.copies:
            self.journal.enter(move.hex, move.src, move.dst, str(move.qsid))
            self.step()
        tmp = dst.with_name(f".{dst.name}{TEMP_SUFFIX}")
        transfer.remove_tree(tmp)  # a copy a kill interrupted
        how = transfer.copy_tree(src, tmp)
        self.step()
        try:
            transfer.verify(src, tmp, content=how != "reflink")
        except transfer.CopyFailed:
            transfer.remove_tree(tmp)  # no stray copy in the scope; the source stays
            raise
        self.step()
        os.rename(tmp, dst)
        fsync_directory(dst.parent)
        self.step()
        self._finish_copy(move)
        return "reflinked" if how == "reflink" else "copied"

    def _finish_copy(self, move: Move) -> None:
        transfer.remove_tree(self.volume / move.src)
        fsync_directory((self.volume / move.src).parent)
        self.step()
        discover.prune_fanout(self.volume, move.src)
        self.journal.drop(move.hex)

    def _quarantine(self, left: Leftover) -> str:
        """Move a leftover below `.fusegw/unclaimed/` (same relative path, a `.N` suffix if
        taken); its new relative path."""
        base = f"{STATE_DIR}/{UNCLAIMED}/{left.relpath}"
        target, n = base, 0
        while os.path.lexists(self.volume / target):
            n += 1
            target = f"{base}.{n}"
        (self.volume / target).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(self.volume / left.relpath, self.volume / target)
        fsync_directory((self.volume / target).parent)
        self.step()
        discover.prune_fanout(self.volume, left.relpath)
        return target

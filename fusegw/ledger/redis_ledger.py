"""The shared ledger: one limit per scope enforced by every node's gateway, with figures on
Redis (`fusegw.ledger.shared`) and room handed out as grants (`fusegw.ledger.grants`).

A write spends the node's grant with no round trip. A tick (every TICK_SECONDS, and at once
after a close or fsync) commits what the node's changes allocated, renews its grant's lease,
gives back a grant gone idle and reads the cluster's figures, so what a node shows is at most
one tick of another node plus one of its own old. When the grant runs low a refill is asked
for in the background; growth waits for Redis only when the grant is spent.

Redis unreachable: growth within the grant goes on while its lease lasts; past it, it waits
`redis_wait` seconds and fails with EAGAIN ("try again", `SharedLedgerUnavailable`). Shrinks
always work: they are commits like any other, sent when Redis answers again, and a commit is
applied once whatever happened to its answer (one sequence per node).

Crash safety is the local ledger's rule, per node: before a scope's first change after a
commit this node records it in its own `dirty.json` (under `.fusegw/nodes/<node>/`). A node
that restarts after kill -9 rebuilds the scopes it marked; one that never comes back has its
marks adopted, once its heartbeat on Redis has expired, by another node (`fusegw.ledger.
rebuild_shared` runs those rebuilds without double counting what other nodes hold).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import trio

from fusegw.errors import GatewayError
from fusegw.ledger.grants import ScopeGrant
from fusegw.ledger.ledger import DIRTY_FILE, Ledger
from fusegw.ledger.reservation import NOTHING, Reservation
from fusegw.ledger.shared import Commit, Figures, SharedScopes
from fusegw.ledger.usage import QuotaExceeded, ScopeUsage
from fusegw.state.store import StateDir, UnreadableState, VolumeWriteError

if TYPE_CHECKING:
    from fusegw.ledger.rebuild_shared import SharedRebuilds
    from fusegw.ledger.scan import ScanResult

log = logging.getLogger("fusegw.ledger")

T = TypeVar("T")

TICK_SECONDS = 0.4
"""How often a node commits and reads the figures: with one tick of the writer and one of the
reader, a figure is under a second old."""
NUDGE_SECONDS = 0.02  # the least time between two ticks that a close or fsync asked for
IDLE_SECONDS = 1.0  # a grant not spent from for this long goes back
RECLAIM_SECONDS = 1.0  # how long growth refused for want of room waits for others' grants
RETRY_SECONDS = 0.2  # between attempts while Redis does not answer
READ_BATCH = 512  # scopes read in one pipelined round trip

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class SharedLedgerUnavailable(GatewayError):
    """Growth past this node's grant while Redis does not answer: try again."""

    kind = "ledger/unavailable"
    title = "The shared ledger cannot be reached"
    status = 503
    errno = errno.EAGAIN


class RedisLedger(Ledger):
    """The `QuotaLedger` of a volume whose limits every node enforces (`ledger = "redis"`)."""

    def __init__(self, volume: Path, state: StateDir, shared: SharedScopes,
                 redis_wait: float = 5.0) -> None:
        super().__init__(volume, state)
        self.shared = shared
        self.redis_wait = redis_wait
        self.grants: dict[str, ScopeGrant] = {}
        self.handlers: dict[str, Handler] = {}  # event kind -> what this node does on it
        self.unreachable_since: float | None = None
        self.redis_now_ms = 0  # Redis's clock at the last heartbeat
        self.nodes: dict[str, int] = {}  # every node's heartbeat expiry (Redis clock, ms)
        self.commits = 0
        self.refused_commits = 0
        self.ticks = 0
        self._seq = int(time.time() * 1000)  # above any seq this node sent before a restart
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._last_tick = 0.0
        self._rebuilds: SharedRebuilds | None = None  # set by run()
        self._resync = False
        self.stale_grants: set[str] = set()  # scopes whose grant a rebuild gives back

    @property
    def node(self) -> str:
        return self.shared.node

    @property
    def lease(self) -> float:
        return self.shared.policy.lease_ms / 1000

    # -- Redis calls ------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """One round trip in a worker thread; RedisError (kept count of) when it fails."""
        try:
            result = await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
        except (redis.RedisError, OSError) as e:
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
                log.error("shared ledger unreachable error=%s: writes within this node's "
                          "grants go on, growth past them waits", e)
            raise redis.ConnectionError(str(e)) from e
        if self.unreachable_since is not None:
            log.warning("shared ledger reachable again after %.1fs",
                        time.monotonic() - self.unreachable_since)
            self.unreachable_since = None
            self._resync = True  # events published meanwhile may not have reached this node
        return result

    async def call_until(self, deadline: float, fn: Callable[..., T], *args: Any) -> T:
        """`call`, retried until the monotonic `deadline`; SharedLedgerUnavailable after it."""
        while True:
            try:
                # a Sentinel client retries by itself for seconds: the deadline bounds it
                with trio.fail_after(max(deadline - time.monotonic(), RETRY_SECONDS)):
                    return await self.call(fn, *args)
            except (redis.RedisError, trio.TooSlowError) as e:
                if time.monotonic() >= deadline:
                    raise SharedLedgerUnavailable(
                        f"the shared ledger on Redis does not answer ({e}); try again") from None
            await trio.sleep(RETRY_SECONDS)

    async def call_patiently(self, fn: Callable[..., T], *args: Any) -> T:
        """`call`, retried for as long as it takes (rebuilds, which growth waits for)."""
        return await self.call_until(float("inf"), fn, *args)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- scopes -----------------------------------------------------------------------------------

    def add_scope(self, qsid: Any, limit_bytes: int, limit_inodes: int) -> ScopeUsage:
        scope = super().add_scope(qsid, limit_bytes, limit_inodes)
        grant = self.grants[scope.pathname] = ScopeGrant(self.lease)
        scope.journal = grant
        return scope

    def remove_scope(self, pathname: str) -> None:
        super().remove_scope(pathname)
        self.grants.pop(pathname, None)

    async def new_scope(self, scope: ScopeUsage, used_bytes: int) -> None:
        scope.set_figures(used_bytes, 0, {})
        deadline = time.monotonic() + self.redis_wait
        await self.call_until(deadline, self.shared.init, scope.pathname, used_bytes, 0,
                              scope.limit_bytes, scope.limit_inodes)
        self.apply(scope, await self.call_until(deadline, self.shared.read, scope.pathname))

    async def refresh(self, scope: ScopeUsage) -> None:
        with contextlib.suppress(redis.RedisError):  # else its next tick reads them
            self.apply(scope, await self.call(self.shared.read, scope.pathname))

    async def store_limits(self, scope: ScopeUsage, limit_bytes: int, limit_inodes: int
                           ) -> None:
        await self.call_until(time.monotonic() + self.redis_wait, self.shared.set_limits,
                              scope.pathname, limit_bytes, limit_inodes)

    async def announce(self, event: dict[str, Any]) -> None:
        try:
            await self.call(self.shared.publish, event)
        except redis.RedisError as e:  # the others catch up at their next tick and resync
            log.warning("event not published kind=%s error=%s", event.get("kind"), e)

    def commit_soon(self, scope: ScopeUsage | None) -> None:
        if scope is not None and not self.grants[scope.pathname].pending.empty():
            self.wake()

    def wake(self) -> None:
        """Tick now (within NUDGE_SECONDS of the last)."""
        self._wake.set()

    async def scan_scope(self, scope: ScopeUsage) -> ScanResult:
        return await self._scan(scope, str(self.volume / scope.pathname))

    def apply(self, scope: ScopeUsage, figures: Figures) -> None:
        """Take in what Redis says of the scope: its figures, limits, this node's grant; the
        figures' epoch too while this node has nothing uncommitted that counts on the old."""
        grant = self.grants[scope.pathname]
        grant.base = figures
        if (figures.limit_bytes, figures.limit_inodes) != (scope.limit_bytes,
                                                           scope.limit_inodes):
            grant.reclaim = True  # a new limit: give back what is unused, take a new share
        scope.limit_bytes, scope.limit_inodes = figures.limit_bytes, figures.limit_inodes
        if (grant.outbox is None and grant.pending.empty() and not scope.inflight
                and figures.rebuild is None):
            grant.epoch = figures.epoch
        grant.show(scope)

    def report(self) -> dict[str, Any]:
        """`GET /` → `ledger`: this node on the shared ledger."""
        since = self.unreachable_since
        return {"kind": "redis", "node": self.node, "prefix": self.shared.prefix,
                "redis": "ok" if since is None else "unreachable",
                "unreachable_seconds": None if since is None else
                round(time.monotonic() - since, 3),
                "round_trips": self.shared.calls, "ticks": self.ticks,
                "commits": self.commits,
                "refused_commits": self.refused_commits,
                "nodes": sorted(n for n, exp in self.nodes.items() if exp >= self.redis_now_ms),
                "grants": {str(s.qsid): {"bytes": g.held_bytes, "inodes": g.held_inodes}
                           for p, g in self.grants.items()
                           if (s := self.scopes.get(p)) is not None
                           and (g.held_bytes or g.held_inodes)}}

    # -- start: what to rebuild -------------------------------------------------------------------

    def load(self) -> list[ScopeUsage]:
        """The figures from Redis; the scopes to rebuild: those this node marked dirty (it
        stopped without committing them) and those Redis has no figures of yet."""
        try:
            marks = set((self.state.read_checked(DIRTY_FILE) or {}).get("dirty", []))
        except UnreadableState as e:
            log.warning("%s: every scope is rebuilt", e)
            marks = set(self.scopes)
        self._disk_marks = frozenset(marks)
        try:
            figures = self.shared.read_all(sorted(self.scopes))
        except (redis.RedisError, OSError) as e:
            raise SharedLedgerUnavailable(f"shared ledger: Redis does not answer ({e}): start "
                                          "it, or fix redis_url") from None
        need = []
        for pathname, scope in self.scopes.items():
            self.apply(scope, figures[pathname])
            if pathname in marks or not figures[pathname].epoch:
                need.append(scope)
        # A grant this node held when it stopped may be partly spent by changes it never
        # committed: where it marked the scope, its rebuild gives the grant back with the
        # scan; elsewhere nothing is uncommitted and it goes back now.
        self.stale_grants = {p for p in marks
                             if p in figures and (figures[p].held_bytes or figures[p].held_inodes)}
        for pathname, f in figures.items():
            if pathname not in self.stale_grants and (f.held_bytes or f.held_inodes):
                self.shared.drop(pathname, self.node)
        return need

    # -- admission --------------------------------------------------------------------------------

    async def reserve(self, scope: ScopeUsage | None, nbytes: int = 0, ninodes: int = 0,
                      growth: bool = True) -> Reservation:
        """Admit a change against this node's grant (refilled from Redis when short), and
        against the cluster's figures as this node last read them."""
        if scope is None:
            return NOTHING
        if not growth:
            nbytes = ninodes = 0
        grant = self.grants[scope.pathname]
        while True:
            if scope.rebuilding:
                await self.admit(scope, growth)
            scope.check_growth(nbytes, ninodes)
            short_b, short_i = grant.shortfall(scope, nbytes, ninodes)
            if not (short_b or short_i):
                break
            await self._refill(scope, grant, short_b, short_i)
        scope.hold(nbytes, ninodes)
        try:
            self.begin_change(scope)
        except BaseException:
            scope.unreserve(nbytes, ninodes)
            raise
        if nbytes > 0 or ninodes > 0:
            grant.last_growth = time.monotonic()
            grant.reclaim = False
            self._ahead(scope, grant)
        return Reservation(scope, nbytes, ninodes)

    def _ahead(self, scope: ScopeUsage, grant: ScopeGrant) -> None:
        """Ask for more before the grant runs out, so a steady writer never waits."""
        room_b, room_i = grant.room(scope)
        policy = self.shared.policy
        low_b = max(policy.min_bytes, grant.held_bytes // 2)
        low_i = max(policy.min_inodes, grant.held_inodes // 2)
        short = ((_limited(scope.limit_bytes, scope.enforce_bytes) and room_b < low_b)
                 or (_limited(scope.limit_inodes, scope.enforce_inodes) and room_i < low_i))
        if short and not grant.lock.locked() and self._nursery is not None:
            self._nursery.start_soon(self._refill_quietly, scope, grant)

    async def _refill_quietly(self, scope: ScopeUsage, grant: ScopeGrant) -> None:
        # a refused or failed refill: the write that needs the room will hear of it
        with contextlib.suppress(QuotaExceeded, SharedLedgerUnavailable, redis.RedisError):
            await self._refill(scope, grant, 0, 0, ahead=True)

    async def _refill(self, scope: ScopeUsage, grant: ScopeGrant, short_b: int, short_i: int,
                      ahead: bool = False) -> None:
        """Make the grant cover the shortfall: one acquire (or the one another task made);
        QuotaExceeded if the room left is less, after other nodes were asked to give back
        what they do not use."""
        reclaim_until = time.monotonic() + RECLAIM_SECONDS
        deadline = time.monotonic() + self.redis_wait
        while True:
            async with grant.lock:
                if not ahead and not any(grant.shortfall(scope, short_b, short_i)):
                    return  # another task's refill covered it meanwhile
                asked = time.monotonic()
                if ahead:
                    got = await self.call(self.shared.acquire, scope.pathname, 0, 0)
                else:
                    got = await self.call_until(deadline, self.shared.acquire, scope.pathname,
                                                short_b, short_i)
                grant.granted(got.held_bytes, got.held_inodes, asked)
            if got.bytes or got.inodes or ahead:
                return
            others_hold = ((short_b and got.others_bytes) or (short_i and got.others_inodes))
            if not others_hold or time.monotonic() >= reclaim_until:
                scope.refusals += 1
                raise QuotaExceeded(f"{scope.qsid}: the limit is reached across the cluster")
            await self.announce({"kind": "reclaim", "scope": scope.pathname})
            await trio.sleep(RETRY_SECONDS)  # a retry's pace while others give room back

    # -- ticks ------------------------------------------------------------------------------------

    async def tick_loop(self) -> None:
        """Commit, renew and read every TICK_SECONDS (sooner when a close asks); never ends by
        an error: Redis may go and come back."""
        while True:
            with trio.move_on_after(TICK_SECONDS):
                await self._wake.wait()
            await trio.sleep(max(0.0, self._last_tick + NUDGE_SECONDS - time.monotonic()))
            self._wake = trio.Event()
            self._last_tick = time.monotonic()
            try:
                await self.tick()
            except redis.RedisError:
                pass  # reported by call(); the next tick tries again
            except Exception:  # a bug: say so and go on, the mount must stay up
                log.exception("shared ledger tick")

    async def tick(self) -> None:
        self.ticks += 1
        self.redis_now_ms, self.nodes = await self.call(self.shared.heartbeat)
        if self._resync and "scopes" in self.handlers:
            self._resync = False
            await self.handlers["scopes"]({"kind": "scopes"})
        quiet: list[ScopeUsage] = []
        busy: list[ScopeUsage] = []
        for pathname, grant in list(self.grants.items()):
            scope = self.scopes.get(pathname)
            if scope is not None and not scope.rebuilding:
                (busy if grant.busy() else quiet).append(scope)
        for start in range(0, len(busy), READ_BATCH):
            await self._tick_busy(busy[start:start + READ_BATCH])
        await self._read_quiet(quiet)
        if self._rebuilds is not None:
            await self._rebuilds.adopt_vanished()

    async def _tick_busy(self, scopes: list[ScopeUsage]) -> None:
        """Commit, renew or give back, and read, scopes this node changes or holds a grant
        in: one pipelined round trip. A scope whose grant is in use meanwhile (a refill, a
        stop for a rebuild) waits for the next tick."""
        taken: list[tuple[ScopeUsage, ScopeGrant, Commit | None, bool]] = []
        answers: list[tuple[int, Figures]] = []
        try:
            for scope in scopes:
                grant = self.grants[scope.pathname]
                try:
                    grant.lock.acquire_nowait()
                except trio.WouldBlock:
                    continue
                commit = grant.cut(self.next_seq())
                release = grant.idle(scope, time.monotonic(), IDLE_SECONDS)
                if release:
                    grant.granted(0, 0, 0.0)  # spent from no more, whatever the answer
                taken.append((scope, grant, commit, release))
            asked = time.monotonic()
            answers = await self.call(self.shared.tick_many,
                                      [(s.pathname, c, r) for s, _, c, r in taken])
            for (scope, grant, commit, release), (status, figures) in zip(
                    taken, answers, strict=True):
                self._ticked(scope, grant, commit, release, status, figures, asked)
        finally:
            for _, grant, _, _ in taken:
                grant.lock.release()
        for (scope, _, _, _), (status, figures) in zip(taken, answers, strict=False):
            self._follow(scope, status, figures)

    def _ticked(self, scope: ScopeUsage, grant: ScopeGrant, commit: Commit | None,
                release: bool, status: int, figures: Figures, asked: float) -> None:
        """Take in one scope's tick answer (its grant's lock held)."""
        if commit is not None:
            grant.outbox = None
            self.commits += 1
        if status < 0:  # counted against figures a rebuild replaced: rebuild again
            self.refused_commits += 1
            log.warning("commit refused scope=%s: a rebuild this node missed replaced the "
                        "figures; rebuilding", scope.qsid)
        grant.granted(figures.held_bytes, figures.held_inodes, asked)
        grant.reclaim = False if release else grant.reclaim
        self.apply(scope, figures)

    async def _read_quiet(self, scopes: list[ScopeUsage]) -> None:
        """The figures of scopes this node neither changes nor holds a grant in: read in
        one round trip per READ_BATCH, so a thousand idle scopes cost a tick one call."""
        for start in range(0, len(scopes), READ_BATCH):
            batch = scopes[start:start + READ_BATCH]
            figures = await self.call(self.shared.read_all, [s.pathname for s in batch])
            for scope in batch:
                if scope.pathname in self.grants and not scope.rebuilding:
                    self.apply(scope, figures[scope.pathname])
                    self._follow(scope, 1, figures[scope.pathname])

    def _follow(self, scope: ScopeUsage, status: int, figures: Figures) -> None:
        """What the figures ask of this node: a rebuild (a commit refused, a scope Redis
        lost) or a stop for another node's rebuild."""
        if (status < 0 or not figures.epoch) and self._rebuilds is not None:
            if not figures.epoch:  # Redis lost the scope (restarted without its data)
                log.warning("scope missing on Redis scope=%s: rebuilding it", scope.qsid)
            self._rebuilds.request(scope)
        rebuild = figures.rebuild
        if (rebuild is not None and rebuild.node != self.node and rebuild.phase == "hold"
                and self._rebuilds is not None):
            self._rebuilds.stop_for(scope, figures.epoch)

    # -- dirty marks: this node's own, no snapshot -------------------------------------------

    def flush(self, force: bool = False) -> None:
        """Clear the marks of scopes with nothing uncommitted (quiet ones, or all if force)."""
        candidates = ([s for s in self.scopes.values() if s.dirty and not s.rebuilding]
                      if force else self._quiet())
        for scope in candidates:
            grant = self.grants[scope.pathname]
            if grant.outbox is None and grant.pending.empty() and not self._pending(scope):
                scope.dirty = False
        if self._disk_marks != self._wanted_marks() or DIRTY_FILE in self.state.failing:
            self._write_marks()

    def behind(self) -> bool:
        return DIRTY_FILE in self.state.failing or self._disk_marks != self._wanted_marks()

    def _marked_on_disk(self, pathnames: Any) -> bool:
        return all(p in self._disk_marks for p in pathnames)

    def _protect(self, pathnames: set[str]) -> None:
        if self._marked_on_disk(pathnames) or self._write_marks(frozenset(pathnames)):
            return
        error = self.state.failing[DIRTY_FILE].error
        raise VolumeWriteError(f"a dirty mark ({DIRTY_FILE})", error)

    # -- the loops and the end ---------------------------------------------------------------

    async def run(self, nursery: trio.Nursery) -> None:
        """Start the tick and event loops in `nursery` (the daemon's)."""
        from fusegw.ledger.rebuild_shared import SharedRebuilds

        self._nursery = nursery
        self._rebuilds = SharedRebuilds(self, nursery)
        nursery.start_soon(self.tick_loop)
        nursery.start_soon(self._rebuilds.events_loop)

    async def rebuild(self, scope: ScopeUsage) -> None:
        from fusegw.ledger.rebuild_shared import rebuild_scope

        await rebuild_scope(self, scope)

    def close(self) -> None:
        """At unmount, with the loop gone: commit what is pending and give every grant back
        (blocking, bounded by the client's socket timeout); what cannot be committed stays
        marked, to be rebuilt at the next start (or by another node)."""
        for pathname, grant in self.grants.items():
            scope = self.scopes.get(pathname)
            if scope is None:
                continue
            try:
                commit = grant.cut(self.next_seq())
                status, _figures = self.shared.tick(pathname, commit, True)
            except (redis.RedisError, OSError) as e:
                log.error("final commit failed scope=%s error=%s: it stays marked", scope.qsid,
                          e)
                return
            if status >= 0:
                grant.outbox = None
        with contextlib.suppress(redis.RedisError, OSError):
            self.shared.forget_node(self.node)


def _limited(limit: int, enforced: bool) -> bool:
    return bool(limit and enforced)

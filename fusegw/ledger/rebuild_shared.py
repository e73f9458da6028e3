"""Rebuilding a scope's figures on the shared ledger, and the events the nodes tell each other.

A rescan on one node sees every node's changes on the shared disk, committed or not. So before
it scans, every other live node stops changing the scope and acknowledges (ACK), its
uncommitted changes dropped from its commits (the scan counts them) and taken off its grant:

    rebuilder: freeze, quiesce, BEGIN (new epoch) -> publish "hold"
    each node: freeze, quiesce, ACK(epoch)        (on the event, or at its next tick)
    rebuilder: wait for every live node's ACK (a node whose heartbeat expired is not waited
               for), scan, REBASE(epoch, scan) -> publish "resume"

Grants are room, not usage: a rebuild leaves them as they are, so another node's grant is
never counted twice. A node that did not stop (cut off from Redis meanwhile) still counts its
changes against the old epoch; its next commit is refused and it rebuilds the scope itself.

Events (Redis pub/sub, JSON): "scopes" (the registry changed: reload it), "invalidate" (drop
the kernel's cache of a path), "hold"/"resume" (above), "reclaim" (a node is short of room:
give back unused grants). A node that lost its subscription resyncs when it gets it back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis
import trio

from fusegw.ledger.ledger import DIRTY_FILE
from fusegw.ledger.usage import ScopeUsage

if TYPE_CHECKING:
    from fusegw.ledger.redis_ledger import RedisLedger

log = logging.getLogger("fusegw.ledger")

POLL_SECONDS = 0.05  # the pace of polling Redis while a rebuild waits for nodes


def node_dir(node: str) -> str:
    """The directory below `.fusegw/nodes/` that keeps a node's own state."""
    return quote(node, safe="")


async def rebuild_scope(ledger: RedisLedger, scope: ScopeUsage) -> None:
    """Rebuild one scope's figures for the whole cluster (start_rebuild was called)."""
    grant = ledger.grants[scope.pathname]
    started = time.monotonic()
    log.info("rebuild start scope=%s", scope.qsid)
    scope.frozen = True
    try:
        await scope.quiesce()
        while True:
            async with grant.lock:
                began, epoch = await ledger.call_patiently(
                    ledger.shared.begin, scope.pathname, grant.outbox, grant.pending_totals())
                if began:
                    grant.forget_uncommitted()
                    grant.epoch = epoch
            if began:
                break
            # another node's rebuild runs: stop for it; its scan counts this node's changes
            if await _stop_and_wait(ledger, scope, epoch):
                log.info("rebuild covered by another node's scope=%s", scope.qsid)
                if scope.pathname in ledger.stale_grants:  # counted by that scan: give back
                    ledger.stale_grants.discard(scope.pathname)
                    await ledger.call_patiently(ledger.shared.drop, scope.pathname,
                                                ledger.node)
                return
        await ledger.announce({"kind": "hold", "scope": scope.pathname, "epoch": epoch})
        missing, live = await _wait_for_nodes(ledger, scope, epoch)
        if scope.pathname in ledger.stale_grants:  # this node's grant from before a crash
            live.discard(ledger.node)
            ledger.stale_grants.discard(scope.pathname)
        result = await _scan_claimed(ledger, scope, epoch)
        if result is None:
            return
        done = await ledger.call_patiently(ledger.shared.rebase, scope.pathname, epoch,
                                           result.used_bytes, result.used_inodes,
                                           result.vfolders, live)
        await ledger.announce({"kind": "resume", "scope": scope.pathname})
        if done:
            ledger.apply(scope, await ledger.call_patiently(ledger.shared.read, scope.pathname))
        ledger.rebuilds.append({"qsid": str(scope.qsid), "files": result.files,
                                "seconds": round(time.monotonic() - started, 3),
                                "attempts": 1, "nodes_not_stopped": sorted(missing)})
        log.info("rebuild done scope=%s files=%d used_bytes=%d used_inodes=%d seconds=%.2f",
                 scope.qsid, result.files, result.used_bytes, result.used_inodes,
                 time.monotonic() - started)
    finally:
        scope.frozen = False
        for settler in ledger.settlers:
            settler.forget_scope(scope)
        scope.ready.set()
        ledger.flush(force=True)


async def _wait_for_nodes(ledger: RedisLedger, scope: ScopeUsage, epoch: int
                          ) -> tuple[set[str], set[str]]:
    """Until every live node has stopped, or a lease has passed (a node that cannot be
    reached then is not waited for: it rebuilds itself when back). The nodes not waited for,
    and the live ones (this one included: the others' grants go back with the scan)."""
    deadline = time.monotonic() + ledger.lease
    while True:
        stopped = await ledger.call_patiently(ledger.shared.extend, scope.pathname, epoch,
                                              "hold") or set()
        now_ms, nodes = await ledger.call_patiently(ledger.shared.heartbeat)
        live = {n for n, expiry in nodes.items() if expiry >= now_ms} | {ledger.node}
        missing = live - stopped - {ledger.node}
        if not missing:
            return set(), live
        if time.monotonic() >= deadline:
            log.warning("rebuild goes on without nodes=%s scope=%s: they rebuild it when "
                        "they can reach Redis again", ",".join(sorted(missing)), scope.qsid)
            return missing, live
        await trio.sleep(POLL_SECONDS)


async def _scan_claimed(ledger: RedisLedger, scope: ScopeUsage, epoch: int) -> Any:
    """Scan, renewing the rebuild claim meanwhile; None if the claim was lost (the figures
    stay as they were and the scope's mark stays, for the next rebuild)."""
    async with trio.open_nursery() as nursery:
        lost = trio.Event()

        async def renew() -> None:
            while True:
                claim = await ledger.call_patiently(ledger.shared.extend, scope.pathname,
                                                    epoch, "scan")
                if claim is None:
                    lost.set()
                    return
                await trio.sleep(ledger.lease / 3)

        nursery.start_soon(renew)
        result = await ledger.scan_scope(scope)
        nursery.cancel_scope.cancel()
    if lost.is_set():
        log.error("rebuild claim lost scope=%s: figures unchanged", scope.qsid)
        return None
    return result


async def _stop_and_wait(ledger: RedisLedger, scope: ScopeUsage, epoch: int) -> bool:
    """Stop for another node's rebuild `epoch` (the scope is frozen and quiet) and wait for
    its end; True if this node's stop was acknowledged (its scan counted this node)."""
    grant = ledger.grants[scope.pathname]
    async with grant.lock:
        acked = await ledger.call_patiently(ledger.shared.ack, scope.pathname, epoch,
                                            grant.outbox, grant.pending_totals())
        if acked:
            grant.forget_uncommitted()
            grant.epoch = epoch
    grant.resumed = trio.Event()
    deadline = time.monotonic() + ledger.lease * 3 + ledger.redis_wait
    while time.monotonic() < deadline:
        with trio.move_on_after(POLL_SECONDS * 4):
            await grant.resumed.wait()
        try:
            figures = await ledger.call(ledger.shared.read, scope.pathname)
        except redis.RedisError:
            continue
        if figures.rebuild is None or figures.rebuild.expires_ms < ledger.redis_now_ms:
            ledger.apply(scope, figures)
            return acked
    return False


class SharedRebuilds:
    """The rebuild-related work of one node: stopping for others' rebuilds, rebuilding a
    scope whose commit was refused, adopting a vanished node's marks, and the event loop."""

    def __init__(self, ledger: RedisLedger, nursery: trio.Nursery) -> None:
        self.ledger = ledger
        self.nursery = nursery
        self._adopted_at = 0.0

    def request(self, scope: ScopeUsage) -> None:
        """Rebuild a scope (in the background), unless one is under way here."""
        if not scope.rebuilding:
            self.ledger.start_rebuild([scope])
            self.nursery.start_soon(self.ledger.rebuild, scope)

    def stop_for(self, scope: ScopeUsage, epoch: int) -> None:
        """Another node rebuilds `scope`: stop changing it until it is done (background)."""
        grant = self.ledger.grants.get(scope.pathname)
        if grant is None or grant.stopped_for == epoch or scope.rebuilding:
            return
        grant.stopped_for = epoch
        self.nursery.start_soon(self._stop, scope, epoch)

    async def _stop(self, scope: ScopeUsage, epoch: int) -> None:
        grant = self.ledger.grants[scope.pathname]
        scope.ready = trio.Event()
        scope.frozen = True
        try:
            await scope.quiesce()
            await _stop_and_wait(self.ledger, scope, epoch)
        finally:
            scope.frozen = False
            scope.ready.set()
            grant.stopped_for = 0

    async def adopt_vanished(self) -> None:
        """Rebuild the scopes a vanished node had marked (it stopped without committing), once,
        by whichever node takes it off the list first. Checked once a lease."""
        ledger = self.ledger
        if time.monotonic() - self._adopted_at < ledger.lease:
            return
        self._adopted_at = time.monotonic()
        for node, expiry in ledger.nodes.items():
            if node == ledger.node or expiry >= ledger.redis_now_ms:
                continue
            if not await ledger.call(ledger.shared.forget_node, node):
                continue
            marks_file = ledger.volume / ".fusegw" / "nodes" / node_dir(node) / DIRTY_FILE
            pathnames = await trio.to_thread.run_sync(_read_marks, marks_file)
            scopes = [ledger.scopes[p] for p in pathnames if p in ledger.scopes]
            log.warning("node vanished node=%s: rebuilding the scopes it marked scopes=%s",
                        node, ",".join(str(s.qsid) for s in scopes))
            for scope in scopes:  # the rebuild gives its grant back
                self.request(scope)
            for pathname in set(ledger.scopes) - set(pathnames):  # nothing uncommitted there
                await ledger.call_patiently(ledger.shared.drop, pathname, node)
            await trio.to_thread.run_sync(_unlink, marks_file)

    # -- events -----------------------------------------------------------------------------------

    async def events_loop(self) -> None:
        """Subscribe to the volume's events and act on them; resubscribe (and resync: events
        may have been missed) whenever the subscription breaks."""
        ledger = self.ledger
        while True:
            pubsub = ledger.shared.client.pubsub(  # type: ignore[no-untyped-call]
                ignore_subscribe_messages=True)
            try:
                await ledger.call(pubsub.subscribe, ledger.shared.channel)
                await self._dispatch({"kind": "scopes", "node": ""})  # what was missed
                while True:  # not call(): a wait that times out says nothing of Redis
                    message = await trio.to_thread.run_sync(pubsub.get_message, True, 1.0,
                                                            abandon_on_cancel=True)
                    if message is not None:
                        await self._dispatch(json.loads(message["data"]))
            except (redis.RedisError, OSError):
                await trio.sleep(RETRY_SUBSCRIBE)
            except Exception:  # a bug: say so and go on
                log.exception("shared ledger events")
                await trio.sleep(RETRY_SUBSCRIBE)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_close, pubsub)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        ledger = self.ledger
        if event.get("node") == ledger.node:
            return
        kind = event.get("kind")
        scope = ledger.scopes.get(str(event.get("scope")))
        grant = ledger.grants.get(scope.pathname) if scope is not None else None
        if kind == "hold" and scope is not None:
            self.stop_for(scope, int(event["epoch"]))
        elif kind == "resume" and grant is not None:
            grant.resumed.set()
        elif kind == "reclaim" and grant is not None:
            grant.reclaim = True
            ledger.wake()
        elif kind is not None and kind in ledger.handlers:
            await ledger.handlers[kind](event)


RETRY_SUBSCRIBE = 0.5


def _read_marks(path: Any) -> list[str]:
    try:
        with open(path) as f:
            return list(json.load(f).get("dirty", []))
    except (OSError, ValueError, AttributeError):
        return []


def _unlink(path: Any) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _close(pubsub: Any) -> None:
    with contextlib.suppress(redis.RedisError, OSError):
        pubsub.close()

"""One volume's gateway, kept serving: started, watched, replaced when it dies or hangs.

The loop is start → wait until the mount and the socket answer → watch (the process's exit,
and a health check every `health_interval`) → on a death or a failed check: kill, clear the
dead mount, record the death, wait the backoff → start again. The first restart after a
gateway that served for a while is immediate (the volume is down meanwhile); restarts that
follow each other quickly wait 1, 2, 4 ... seconds up to `restart_backoff_max`, so a gateway
that cannot start does not spin.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
import trio

from backends.registry import BACKENDS
from fusegw.config import MountdConfig
from fusegw.control.routes import volume_info
from mountd import health, mounts
from mountd.events import History
from mountd.gateway import (
    Launcher,
    VolumeSpec,
    end_stray,
    exit_cause,
    is_gateway,
    refusal,
    supervisor_of,
    terminate,
)

log = logging.getLogger("fusegw.mountd")

START_POLL = 0.05  # seconds between checks while a gateway starts
MIN_START_TIMEOUT = 60.0  # a start may load a large registry and ledger first
UNHEALTHY_GRACE = 2.0  # a hung gateway gets this long to act on SIGTERM before SIGKILL
STOP_GRACE = 20.0  # a gateway stopped on purpose gets this long to unmount cleanly
FORWARD_TIMEOUT = httpx.Timeout(600.0, connect=5.0)


class State(enum.StrEnum):
    STARTING = "starting"  # the first start, not serving yet
    SERVING = "serving"
    RESTARTING = "restarting"  # down after a death or a failed start, coming back
    STOPPED = "stopped"


class VolumeSupervisor:
    """Runs `spec`'s gateway until stopped. `settings` gives the current [mountd] table (a
    reload may change it); `changed` is called on every state change."""

    def __init__(self, spec: VolumeSpec, launcher: Launcher,
                 settings: Callable[[], MountdConfig], changed: Callable[[], None]) -> None:
        self.spec = spec
        self.launcher = launcher
        self.settings = settings
        self.changed = changed
        self.state = State.STARTING
        self.history = History(spec.name)
        self.proc: trio.Process | None = None
        self.status: dict[str, Any] | None = None  # the gateway's last GET / answer
        self.checked_at: float | None = None
        self.serving_since: float | None = None  # monotonic
        self.problem: str | None = None  # why it is not serving, while it is not
        self.failures = 0  # restarts in a row without a stable run between them
        self.next_start = 0.0  # trio.current_time() of the next start
        self._delay = 0.0  # the backoff before it
        self._volume_entry: dict[str, Any] | None = None  # the gateway's, from GET /volumes
        self.first_attempt = trio.Event()  # set once the first start served or failed
        self.done = trio.Event()
        self._scope = trio.CancelScope()
        self._health = health.unix_client(spec.control_socket, None)
        self.client = health.unix_client(spec.control_socket, FORWARD_TIMEOUT)  # the router's

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def serving(self) -> bool:
        return self.state is State.SERVING

    def retry_after(self) -> int:
        """Seconds a client should wait before trying a volume that is not serving."""
        return max(1, math.ceil(self.next_start - trio.current_time()) + 1)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with self._scope:
                await self._supervise()
        finally:
            with trio.CancelScope(shield=True):
                await self._shutdown()

    async def stop(self) -> None:
        """Unmount cleanly and return once the gateway is gone."""
        self._scope.cancel()
        await self.done.wait()

    async def _supervise(self) -> None:
        while True:
            await trio.sleep_until(self.next_start)
            try:
                proc = await self._start()
                if proc is None:
                    continue
                cause = await self._watch(proc)
                await self._replace(proc, cause)
            except Exception:  # a bug here must not end this volume's supervision
                log.exception("supervisor failed volume=%s; starting over", self.name)
                if self.proc is not None:
                    await terminate(self.proc, UNHEALTHY_GRACE)
                await self._clear_mount()
                self._failed("mountd's supervisor failed (see its log)", self.pid)

    async def _start(self) -> trio.Process | None:
        """Start a gateway and wait until it serves; None (and the failure recorded) if not."""
        s = self.settings()
        taken = await self._end_stray(s)
        if taken is not None:
            self._failed(taken, None)
            return None
        if not self.launcher.clear_dead:
            await mounts.clear_if_dead(self.spec.mountpoint, s.health_timeout)
        self.proc = None
        try:
            proc, offset = await self.launcher.spawn(self.spec)
        except (OSError, ValueError) as e:
            self._failed(f"cannot start the gateway: {e}", None)
            return None
        self.proc = proc
        problem = await self._until_serving(proc, s)
        if problem is not None:
            said = refusal(self.launcher.log_file(self.name), offset)
            await terminate(proc, UNHEALTHY_GRACE)
            await mounts.clear_if_dead(self.spec.mountpoint, s.health_timeout)
            self._failed(f"start failed: {said or problem}", proc.pid)
            return None
        self._serving(proc)
        return proc

    async def _end_stray(self, s: MountdConfig) -> str | None:
        """A gateway still answering on this volume's socket that this mountd did not start
        (its mountd was killed outside systemd) would make every start fail: the mount point
        and the socket are taken. It is stopped cleanly, and ours takes over. One that another
        live mountd runs is left alone: the reason is returned, and this start fails."""
        if not self.spec.control_socket.exists():
            return None
        with trio.move_on_after(s.health_timeout):
            try:
                pid = (await self._health.get("/")).json().get("pid")
            except (httpx.HTTPError, OSError, ValueError, AttributeError):
                return None
            if not isinstance(pid, int) or not is_gateway(pid):
                return None
            owner = supervisor_of(pid)
            if owner is not None and owner != os.getpid():
                return (f"the volume is served by gateway pid {pid} of another "
                        f"fusegw-mountd (pid {owner})")
            log.warning("stopping a gateway this mountd did not start volume=%s pid=%d",
                        self.name, pid)
            await end_stray(pid, STOP_GRACE)
            await self._clear_mount()
        return None

    async def _until_serving(self, proc: trio.Process, s: MountdConfig) -> str | None:
        """None once the mount and the socket answer; else why it never did."""
        limit = max(MIN_START_TIMEOUT, 10 * s.health_timeout)
        last = "no answer yet"
        with trio.move_on_after(limit):
            while proc.poll() is None:
                if mounts.is_mounted(self.spec.mountpoint):
                    verdict = await health.check(self._health, self.spec.mountpoint,
                                                 proc.pid, s.health_timeout)
                    if verdict.problem is None:
                        self._observed(verdict.status)
                        return None
                    last = verdict.problem
                await trio.sleep(START_POLL)
            return exit_cause(proc.returncode or 0)
        return f"not serving {limit:g}s after it started ({last})"

    async def _watch(self, proc: trio.Process) -> str:
        """Return why the gateway stopped serving: it exited, or a health check failed."""
        cause = ""
        async with trio.open_nursery() as nursery:

            async def exited() -> None:
                nonlocal cause
                await proc.wait()
                cause = cause or exit_cause(proc.returncode or 0)
                nursery.cancel_scope.cancel()

            async def checks() -> None:
                nonlocal cause
                while True:
                    s = self.settings()
                    await trio.sleep(s.health_interval)
                    verdict = await health.check(self._health, self.spec.mountpoint, proc.pid,
                                                 s.health_timeout)
                    if verdict.problem is not None and proc.poll() is None:
                        cause = cause or f"not answering: {verdict.problem}"
                        nursery.cancel_scope.cancel()
                        return
                    self._observed(verdict.status)

            nursery.start_soon(exited)
            nursery.start_soon(checks)
        return cause

    async def _replace(self, proc: trio.Process, cause: str) -> None:
        """The gateway stopped serving: record it, make sure it is gone, clear its mount."""
        served = time.monotonic() - (self.serving_since or time.monotonic())
        self.history.died(cause, proc.pid)
        self._set(State.RESTARTING, cause)
        await terminate(proc, UNHEALTHY_GRACE)
        await self._clear_mount()
        stable = served >= self.settings().restart_backoff_max
        self._schedule(1 if stable else self.failures + 1)

    async def _clear_mount(self) -> None:
        """Our gateway is gone, so a mount left at its mount point is its dead one."""
        if mounts.is_mounted(self.spec.mountpoint):
            await mounts.clear_if_dead(self.spec.mountpoint, self.settings().health_timeout)

    async def _shutdown(self) -> None:
        """Stop on purpose: SIGTERM, a clean unmount, SIGKILL only if it does not comply."""
        self._set(State.STOPPED, "stopping")  # the router sends nothing more its way
        try:
            proc = self.proc
            if proc is not None and proc.returncode is None:
                log.info("stopping gateway volume=%s pid=%d", self.name, proc.pid)
                await terminate(proc, STOP_GRACE)
            await self._clear_mount()
            self.launcher.forget(self.spec)
            for client in (self._health, self.client):
                await client.aclose()
        finally:
            self._set(State.STOPPED, None)
            self.first_attempt.set()
            self.done.set()

    # -- state ----------------------------------------------------------------------------------

    def _failed(self, cause: str, pid: int | None) -> None:
        """A start that did not serve; said once per distinct cause, not at every retry."""
        level = logging.DEBUG if cause == self.problem else logging.ERROR
        log.log(level, "gateway not serving volume=%s cause=%s", self.name, cause)
        self.history.died(cause, pid)
        self._set(State.RESTARTING, cause)
        self._schedule(self.failures + 1)
        self.first_attempt.set()

    def _schedule(self, failures: int) -> None:
        """Backoff: the first restart at once, then 1, 2, 4 ... s up to restart_backoff_max."""
        self.failures = failures
        delay = 0.0 if failures <= 1 else min(2.0 ** (failures - 2),
                                              self.settings().restart_backoff_max)
        self.next_start = trio.current_time() + delay
        if delay:  # said while the delay grows, then quiet at its ceiling
            level = logging.DEBUG if delay == self._delay else logging.INFO
            log.log(level, "restarting in %.0fs volume=%s failures=%d", delay, self.name,
                    failures)
        self._delay = delay

    def _serving(self, proc: trio.Process) -> None:
        self.serving_since = time.monotonic()
        self.history.serving(proc.pid)
        log.info("gateway serving volume=%s pid=%d", self.name, proc.pid)
        self._set(State.SERVING, None)
        self.first_attempt.set()

    def _observed(self, status: dict[str, Any] | None) -> None:
        if status is not None:
            self.status = status
            self.checked_at = time.time()

    def _set(self, state: State, problem: str | None) -> None:
        changed = state is not self.state
        self.state, self.problem = state, problem
        if changed:
            self.changed()

    # -- status ---------------------------------------------------------------------------------

    async def volume_entry(self, timeout: float) -> dict[str, Any]:
        """This volume in the node's `GET /volumes`: the gateway's own entry (kept from its
        last answer while it is down), else one made from the configuration."""
        if self.serving():
            with trio.move_on_after(timeout):
                try:
                    r = await self.client.get("/volumes")
                    entries = r.json()["volumes"]
                    mine = [e for e in entries if e.get("name") == self.name] or entries
                    self._volume_entry = dict(mine[0])
                except (httpx.HTTPError, OSError, ValueError, KeyError, IndexError,
                        TypeError, AttributeError):
                    pass
        if self._volume_entry is not None:
            return self._volume_entry
        backend = BACKENDS.get(self.spec.table.backend)
        return volume_info(self.name, self.spec.table.backend,
                           backend.capabilities if backend else (), str(self.spec.mountpoint),
                           str(self.spec.table.fsprefix))

    def public(self) -> dict[str, Any]:
        """This volume in the node's `GET /`."""
        g = self.status or {}
        serving = self.state is State.SERVING
        started = g.get("started_at") if serving else None
        data: dict[str, Any] = {
            "name": self.name,
            "state": self.state.value,
            "pid": self.pid if serving else None,
            "version": g.get("version") if serving else None,
            "started_at": started,
            "uptime_seconds": round(time.time() - started, 3) if started else None,
            "backend": g.get("backend", self.spec.table.backend),
            "source": str(self.spec.source),
            "mountpoint": str(self.spec.mountpoint),
            "control_socket": str(self.spec.control_socket),
            "accounting": _accounting(g) if serving else None,
            "rebuilding": g.get("rebuilding", []) if serving else [],
            "persistence": g.get("state") if serving else None,
            "checked_at": self.checked_at if serving else None,
            "restarts": self.history.restarts,
            "problem": self.problem,
            "retry_in_seconds": None,
            "rss_bytes": _rss(self.pid) if serving else None,
            "deaths": self.history.public(),
        }
        if self.state is State.RESTARTING:
            data["retry_in_seconds"] = round(max(0.0, self.next_start - trio.current_time()), 1)
        return data


def _accounting(status: dict[str, Any]) -> str:
    """"ready", or "rebuilding" while scopes are rescanned after an unclean stop; from the
    gateway's own answer, also from a gateway older than its `accounting` field."""
    if "accounting" in status:
        return str(status["accounting"])
    return "rebuilding" if status.get("rebuilding") else "ready"


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None

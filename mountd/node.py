"""The node: every volume's supervisor, the node endpoint, systemd, and the signals.

One trio loop runs it all. SIGHUP re-reads the file and changes only what changed (an
unreadable or invalid file changes nothing and is logged); SIGTERM or SIGINT stops every
gateway cleanly and returns 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, cast

import trio

from fusegw import __version__
from fusegw.config import ConfigError, MountdConfig, NodeConfig, load_config
from fusegw.control.app import ControlApp
from fusegw.control.server import bind_unix, resolve_group, serve_tcp, serve_unix
from mountd import notify
from mountd.client_router import ClientRouter
from mountd.events import emit
from mountd.gateway import ClientSpec, Launcher, VolumeSpec
from mountd.router import NodeApp
from mountd.supervisor import State, VolumeSupervisor

log = logging.getLogger("fusegw.mountd")


class MountdError(Exception):
    """A one-line reason mountd cannot start."""


def admin_gid(config: NodeConfig) -> int | None:
    group = config.control.admin_group
    try:
        return resolve_group(group)
    except KeyError:
        raise MountdError(f"admin group {group!r} does not exist: create it (groupadd "
                          f"{group}) or change [control] admin_group") from None


def tcp_address(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6; an empty host is 127.0.0.1)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise MountdError(f"[control] tcp_listen {listen!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def auth_token(config: NodeConfig) -> str | None:
    return os.environ.get("FUSEGW_AUTH_TOKEN") or config.control.auth_token


class Node:
    def __init__(self, config_path: Path, config: NodeConfig, launcher: Launcher) -> None:
        self.config_path = config_path
        self.config = config
        self.launcher = launcher
        self.supervisors: dict[str, VolumeSupervisor] = {}
        self.started = time.time()
        self.ready = False
        self.app = NodeApp(self, admin_gid(config), auth_token(config))
        self.tcp = tcp_address(config.control.tcp_listen) if config.control.tcp_listen else None
        if self.tcp is not None and not self.app.token:
            raise MountdError("[control] tcp_listen needs an auth token ([control] auth_token "
                              "or FUSEGW_AUTH_TOKEN)")
        self.client_router, self.client_tcp = self._client_api(config)
        self._nursery: trio.Nursery | None = None
        self._reloading = trio.Lock()

    def _client_api(self, config: NodeConfig) -> tuple[ClientRouter | None,
                                                       tuple[str, int] | None]:
        """The node's client listener (`[api.client] service-addr`) and its router, when the
        file configures one and a secret signs its tokens."""
        if config.api is None or config.api.client is None:
            return None, None
        spec = ClientSpec.of(config)
        listen = config.api.client.service_addr.listen()
        if spec is None:
            log.error("[api.client] service-addr %s not served: the client API needs "
                      "[storage-proxy] secret or FUSEGW_CLIENT_SECRET", listen)
            return None, None
        return ClientRouter(self, spec.secret), tcp_address(listen)

    def client_socket(self, name: str) -> Path:
        return self.launcher.client_socket(name)

    # -- the router's view ------------------------------------------------------------------------

    def volume(self, name: str) -> VolumeSupervisor | None:
        return self.supervisors.get(name)

    def mountd_settings(self) -> MountdConfig:
        return self.config.mountd

    def status(self) -> dict[str, Any]:
        volumes = [s.public() for s in self.supervisors.values()]
        healthy = all(v["state"] == State.SERVING for v in volumes)
        return {"status": "ok", "service": "fusegw-mountd", "version": __version__,
                "pid": os.getpid(), "started_at": self.started,
                "uptime_seconds": round(time.time() - self.started, 3), "ready": self.ready,
                "state": "ok" if healthy else "degraded", "config": str(self.config_path),
                "volumes": volumes}

    async def volumes(self) -> list[dict[str, Any]]:
        entries: dict[str, dict[str, Any]] = {}
        timeout = self.config.mountd.health_timeout

        async def one(sup: VolumeSupervisor) -> None:
            entries[sup.name] = await sup.volume_entry(timeout)

        async with trio.open_nursery() as nursery:
            for sup in self.supervisors.values():
                nursery.start_soon(one, sup)
        return [entries[name] for name in self.supervisors if name in entries]

    # -- running ----------------------------------------------------------------------------------

    async def run(self) -> int:
        sock = bind_unix(self.config.control.socket, gid=self.app.admin_gid)
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(serve_unix, self.app, sock)
                    if self.tcp is not None:
                        await nursery.start(serve_tcp, self.app, *self.tcp)
                    if self.client_router is not None and self.client_tcp is not None:
                        await nursery.start(serve_tcp, cast(ControlApp, self.client_router),
                                            *self.client_tcp)
                        log.info("client API listening on %s:%d", *self.client_tcp)
                    log.info("node endpoint socket=%s tcp=%s volumes=%d",
                             self.config.control.socket, self.config.control.tcp_listen,
                             len(self.config.volume))
                    for name in self.config.volume:
                        self._start(VolumeSpec.of(self.config, name))
                    nursery.start_soon(self._announce_ready, list(self.supervisors.values()))
                    interval = notify.watchdog_interval()
                    if interval is not None:
                        nursery.start_soon(notify.watchdog, interval)
                    await self._serve_signals(signals)
                    await self._shutdown()
                    nursery.cancel_scope.cancel()
            finally:
                self._nursery = None
                sock.close()
                if self.client_router is not None:
                    with trio.CancelScope(shield=True):
                        await self.client_router.aclose()
                with contextlib.suppress(OSError):
                    os.unlink(self.config.control.socket)
        log.info("stopped")
        return 0

    async def _serve_signals(self, signals: Any) -> None:
        """SIGHUP reloads (in its own task, so a SIGTERM is never held up); SIGTERM and SIGINT
        return."""
        assert self._nursery is not None
        async for signum in signals:
            if signum == signal.SIGHUP:
                self._nursery.start_soon(self.reload)
                continue
            log.info("signal %s: stopping every gateway", signal.Signals(signum).name)
            return

    def _start(self, spec: VolumeSpec) -> VolumeSupervisor:
        assert self._nursery is not None
        sup = VolumeSupervisor(spec, self.launcher, self.mountd_settings, self._changed)
        self.supervisors[spec.name] = sup
        self._nursery.start_soon(sup.run)
        return sup

    async def _announce_ready(self, initial: list[VolumeSupervisor]) -> None:
        """READY=1 once every volume has served or failed its first start: a volume that cannot
        start is mountd's to retry, it must not hold the whole node's start up."""
        for sup in initial:
            await sup.first_attempt.wait()
        self.ready = True
        log.info("ready %s", self.status_line())
        await notify.send("READY=1", self.status_line())

    def status_line(self) -> str:
        return notify.status_line({n: s.state.value for n, s in self.supervisors.items()})

    def _changed(self) -> None:
        """A volume changed state: tell systemd (the STATUS= line of `systemctl status`)."""
        if self._nursery is None:
            return
        with contextlib.suppress(RuntimeError):  # the nursery is closing
            self._nursery.start_soon(notify.send, self.status_line())

    async def _shutdown(self) -> None:
        await notify.send("STOPPING=1", f"STATUS=stopping {len(self.supervisors)} volumes")
        async with trio.open_nursery() as nursery:
            for sup in self.supervisors.values():
                nursery.start_soon(sup.stop)

    # -- reload -----------------------------------------------------------------------------------

    async def reload(self) -> None:
        async with self._reloading:
            try:
                new = await trio.to_thread.run_sync(load_config, self.config_path)
            except ConfigError as e:
                for problem in e.problems:
                    log.error("reload refused, nothing changed: %s: %s", e.path, problem)
                emit("config-reload-refused", logging.ERROR, config=str(e.path),
                     problems=e.problems)
                return
            await self._apply(new)

    async def _apply(self, new: NodeConfig) -> None:
        old, self.config = self.config, new
        self._apply_control(old, new)
        self.launcher = Launcher(self.launcher.runtime_dir, new.mountd.log_dir,
                                 self.launcher.clear_dead, self.launcher.python)
        specs = {name: VolumeSpec.of(new, name) for name in new.volume}
        removed = [n for n in self.supervisors if n not in specs]
        changed = [n for n, s in specs.items()
                   if n in self.supervisors and self.supervisors[n].spec != s]
        added = [n for n in specs if n not in self.supervisors]
        for name, spec in specs.items():
            if name in self.supervisors and name not in changed:
                self.supervisors[name].spec = spec  # the same gateway; a newer admin group
        going = [self.supervisors[n] for n in removed + changed]
        for name in removed:
            del self.supervisors[name]
        async with trio.open_nursery() as nursery:
            for sup in going:
                nursery.start_soon(sup.stop)
        for name in changed + added:
            self._start(specs[name])
        emit("config-reloaded", logging.INFO, config=str(self.config_path), added=added,
             removed=removed, restarted=changed)
        self._changed()

    def _apply_control(self, old: NodeConfig, new: NodeConfig) -> None:
        """The node endpoint's admin group and token change at once; its addresses only when
        mountd restarts (the manager may be connected to them)."""
        try:
            self.app.admin_gid = admin_gid(new)
        except MountdError as e:
            log.error("reload: %s; keeping the previous admin group", e)
        self.app.token = auth_token(new)
        spec = ClientSpec.of(new)
        if self.client_router is not None and spec is not None:
            self.client_router.secret = spec.secret  # gateways take it at their restart
        for key in ("socket", "tcp_listen"):
            if getattr(old.control, key) != getattr(new.control, key):
                log.warning("reload: [control] %s changed; it takes effect when mountd "
                            "restarts", key)

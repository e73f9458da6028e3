"""One gateway: checks, volume state, the FUSE session and the control socket in one trio loop."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import pyfuse3
import trio

from backends import BackendError, QuotaBackend, get_backend
from fusegw import __version__
from fusegw.client.app import ClientAPI
from fusegw.control.app import ControlApp
from fusegw.control.file_routes import FileRoutes
from fusegw.control.metrics import Metrics
from fusegw.control.routes import VolumeRoutes
from fusegw.control.server import bind_unix, resolve_group, serve_tcp, serve_unix
from fusegw.control.token_routes import TokenRoutes
from fusegw.errors import GatewayError
from fusegw.fs.guard import IN_FLIGHT
from fusegw.fs.offload import FAST, Offload
from fusegw.fs.operations import REQUESTS, GatewayOperations
from fusegw.fs.pyfuse3_check import require_patched
from fusegw.fs.session import Queue, fuse_fd
from fusegw.fs.xattrs import UsageXattrs
from fusegw.layout import prepare_volume
from fusegw.ledger import Ledger, ScopeUsage
from fusegw.ledger.rebuild_shared import node_dir
from fusegw.ledger.redis_ledger import RedisLedger
from fusegw.ledger.redis_url import connect
from fusegw.ledger.shared import GrantPolicy, SharedScopes
from fusegw.scopes import ScopeService
from fusegw.settings import MountSettings, StartupError, preflight
from fusegw.state import StateDir
from fusegw.state.lease import LEASE_FILE, Lease
from fusegw.state.registry import Registry
from fusegw.vfolders import VFolderService

EXCLUSIVE_CACHE_TIMEOUT = 60.0
"""Seconds the kernel may keep entries and attributes where this gateway is the volume's only
writer: every change reaches the kernel through the mount, or is invalidated by the control
socket's scope and vfolder routes, so the timeout only bounds edits made behind its back."""

log = logging.getLogger("fusegw")

class Gateway:
    """Everything one mounted volume needs, started and stopped in order."""

    def __init__(self, settings: MountSettings) -> None:
        self.settings = settings
        self.started = time.time()
        self.backend: QuotaBackend = get_backend(settings.backend, settings.source,
                                                 settings.backend_options)
        self.state = StateDir(settings.source)
        self.shared = settings.ledger == "redis"
        self.registry = Registry(self.state, shared=self.shared)
        self.ledger: Ledger = (self._shared_ledger() if self.shared else
                               Ledger(settings.source, self.state,
                                      enforce_bytes=not self.backend.enforces_bytes,
                                      enforce_inodes=not self.backend.enforces_inodes))
        self.lease: Lease | None = None
        self.service = ScopeService(self.registry, self.ledger, self.backend,
                                    on_change=self._changed_here)
        self.ops: GatewayOperations | None = None
        self.client_sock: trio.socket.SocketType | None = None

    def _shared_ledger(self) -> RedisLedger:
        """The shared ledger (`ledger = "redis"`): for volumes whose limits the gateway
        enforces, so every node's gateway must enforce the same ones."""
        s = self.settings
        if self.backend.enforces_bytes or self.backend.enforces_inodes:
            raise StartupError(f"ledger=redis is for volumes whose limits the gateway enforces "
                               f"(backend vfs); backend {s.backend} enforces them itself: "
                               "drop ledger=redis")
        assert s.redis_url is not None  # preflight refuses ledger=redis without it
        node = s.node_id or f"{socket.gethostname()}:{s.mountpoint}"
        policy = GrantPolicy(lease_ms=int(s.grant_lease * 1000), min_bytes=s.grant_min_bytes,
                             min_inodes=s.grant_min_inodes)
        shared = SharedScopes(connect(s.redis_url), node, policy)
        return RedisLedger(s.source, self.state, shared, s.redis_wait)

    # -- start ----------------------------------------------------------------------------------

    def open_volume(self) -> list[Any]:
        """Check the layout, take the lease, load scopes; return the scopes to rebuild."""
        prepare_volume(self.settings.source)
        self.state.open()
        if isinstance(self.ledger, RedisLedger):  # every node of the volume, one prefix
            self.ledger.state = self.state.below("nodes", node_dir(self.ledger.node))
            self.ledger.shared.prefix = f"fusegw:{self.state.volume_id()}"
        elif not self.backend.enforces_bytes:
            self.lease = Lease(self.state)
            self.lease.acquire()
        self.registry.load()
        for pathname, rec in self.registry.scopes.items():
            scope = self.ledger.add_scope(rec.qsid, rec.limit_bytes, rec.limit_inodes)
            if not (self.settings.source / pathname).is_dir():
                self._recreate_scope_dir(scope)
        return self.ledger.start_rebuild(self.ledger.load())

    def _recreate_scope_dir(self, scope: ScopeUsage) -> None:
        """A registered scope whose directory went; on a full disk it stays missing (its
        figures are zero, lookups answer ENOENT) until a later start can make it."""
        try:
            os.mkdir(self.settings.source / scope.pathname, 0o755)
        except OSError as e:
            log.error("scope directory missing and cannot be recreated scope=%s error=%s",
                      scope.qsid, e.strerror)
            return
        log.warning("scope directory was missing, recreated scope=%s", scope.qsid)

    def status(self) -> dict[str, Any]:
        """`GET /`. `accounting` is "rebuilding" while scopes are rescanned after an unclean
        stop (growth there waits), else "ready": what mountd and the node's status show."""
        rebuilding = sorted(str(s.qsid) for s in self.ledger.scopes.values() if s.rebuilding)
        return {
            "version": __version__,
            "volume": self.settings.volume,
            "backend": self.backend.name,
            "source": str(self.settings.source),
            "mountpoint": str(self.settings.mountpoint),
            "pid": os.getpid(),
            "started_at": self.started,
            "uptime_seconds": round(time.time() - self.started, 3),
            "accounting": "rebuilding" if rebuilding else "ready",
            "scopes": len(self.ledger.scopes),
            "inodes_cached": len(self.ops.inodes) if self.ops else 0,
            "rebuilding": rebuilding,
            "waiting_for_rebuild": sum(s.waiting for s in self.ledger.scopes.values()),
            "rebuilds": self.ledger.rebuilds,
            "scans": dict(self.ledger.scans),
            "fuse_requests": dict(REQUESTS),
            "syscalls": self._syscalls(),
            "ledger": (self.ledger.report() if isinstance(self.ledger, RedisLedger)
                       else {"kind": "local"}),
            **self._persistence(),
        }

    def _syscalls(self) -> dict[str, Any]:
        """Where the handlers' blocking syscalls ran (fusegw/fs/offload.py): inline or in a
        worker thread, and each kind's average duration in µs."""
        if self.ops is None:
            return {}
        pool = self.ops.offload
        return {"inline": pool.inline_calls, "in_threads": pool.offloaded_calls,
                "threads": pool.threads,
                "average_us": {getattr(fn, "__name__", str(fn)): round(t * 1e6, 1)
                               for fn, t in pool.pace.items()}}

    def _persistence(self) -> dict[str, Any]:
        """`state`: "ok" while every state file is written, "degraded" while some cannot be
        (a full backing disk): they are kept in memory and retried; `persist_error` says
        which, the errno, since when and how often, and whether the snapshot had to go (the
        next start then rescans every scope)."""
        error = self.state.persist_error()
        if error is None and not self.ledger.settle_failing:
            return {"state": "ok", "persist_error": None}
        error = dict(error or {"files": []}, snapshot_dropped=self.ledger.snapshot_dropped,
                     writeback_failing=dict(self.ledger.settle_failing))
        return {"state": "degraded", "persist_error": error}

    async def _changed_here(self, parts: list[str]) -> None:
        """The control socket changed entries along this path: drop what this mount's kernel
        cached of them, and tell the other nodes to do the same."""
        await self._invalidate_path(parts)
        await self.ledger.announce({"kind": "invalidate", "parts": parts})

    async def _on_invalidate(self, event: dict[str, Any]) -> None:
        parts = event.get("parts")
        if isinstance(parts, list) and all(isinstance(p, str) and p for p in parts):
            await self._invalidate_path(parts)

    async def _invalidate_path(self, parts: list[str]) -> None:
        """Drop the kernel's cached entry, positive or negative, for each level of a path
        below the volume root that the control socket changed, as far down as the kernel
        knows the directories. In a worker thread: the kernel may call back into this loop."""
        if self.ops is None:
            return
        inodes = self.ops.inodes

        def invalidate() -> None:
            parent, path = inodes.root, ""
            for name in parts:
                with contextlib.suppress(OSError):  # ENOENT: nothing cached under the name
                    pyfuse3.invalidate_entry(parent.ino, name.encode())
                path = f"{path}/{name}" if path else name
                node = inodes.find(inodes.root.fd, path.encode())
                if node is None:
                    return
                parent = node

        await trio.to_thread.run_sync(invalidate)

    async def run(self, ready: Callable[[], None]) -> None:
        s = self.settings
        await self.backend.check_volume()
        rebuild = self.open_volume()
        root_fd = os.open(s.source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        xattrs = UsageXattrs(self.ledger, self.service.set_limit, s.xattr_limits,
                             self.service.native)
        timeout = s.cache_timeout
        if timeout is None:  # a volume other gateways may change too needs fresher caches
            alone = not (self.backend.enforces_bytes or self.shared)
            timeout = EXCLUSIVE_CACHE_TIMEOUT if alone else 1.0
        inline_us = s.io_inline_max_us
        if inline_us is None:
            inline_us = 0.0 if self.backend.network else FAST * 1e6
        offload = Offload(s.io_threads, inline_us / 1e6)
        self.ledger.hidden_in_scope = self.backend.scope_hidden_names
        hidden = frozenset(n.encode() for n in self.backend.scope_hidden_names)
        self.ops = GatewayOperations(root_fd, self.ledger, xattrs, timeout, offload, hidden)
        metrics = Metrics(self.ledger, s.volume, REQUESTS, offload)
        app = ControlApp(resolve_group(s.admin_group), metrics, s.auth_token)
        vfolders = VFolderService(s.source, s.mountpoint, self.service)
        VolumeRoutes(s.volume, str(s.mountpoint), self.service, vfolders, self.status,
                     metrics, s.fsprefix).install(app)
        FileRoutes(s.volume, s.mountpoint, vfolders).install(app)  # after: wraps GET /
        client = (ClientAPI(s, self.ledger, self._changed_here, self.ops.late.release)
                  if s.client_secret else None)
        TokenRoutes(s.volume, vfolders, client.tokens if client else None,
                    client.uploads if client else None, s.max_upload_size).install(app)
        assert s.control_socket is not None
        sock = bind_unix(s.control_socket, gid=app.admin_gid)
        options = {"fsname=fusegw:" + str(s.source), "subtype=fusegw", "allow_other",
                   "default_permissions", *s.fuse_options}
        pyfuse3.init(self.ops, str(s.mountpoint), options)
        fd = fuse_fd()
        if inline_us and fd is not None:  # a slow call runs inline only when no one waits
            queue = Queue(fd)
            offload.alone = lambda: IN_FLIGHT.n <= 1 and not queue.waiting()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fuse_main, nursery.cancel_scope)
                await nursery.start(serve_unix, app, sock)
                if s.tcp_listen:
                    host, _, port = s.tcp_listen.rpartition(":")
                    await nursery.start(serve_tcp, app, host or "127.0.0.1", int(port))
                if client is not None:
                    await self._serve_client(nursery, client)
                nursery.start_soon(self._signals)
                nursery.start_soon(self.ledger.flush_loop)
                if isinstance(self.ledger, RedisLedger):
                    self.ledger.handlers.update(scopes=self.service.reload,
                                                invalidate=self._on_invalidate)
                    await self.ledger.run(nursery)
                if self.lease is not None:
                    nursery.start_soon(self._renew_lease)
                for scope in rebuild:
                    nursery.start_soon(self.ledger.rebuild, scope)
                st = await trio.to_thread.run_sync(os.stat, s.mountpoint)  # served by us
                set_read_ahead(st.st_dev, s.read_ahead_kb)
                log.info("serving volume=%s source=%s mountpoint=%s socket=%s", s.volume,
                         s.source, s.mountpoint, s.control_socket)
                ready()
        finally:
            self._stop(sock)

    async def _serve_client(self, nursery: trio.Nursery, client: ClientAPI) -> None:
        """The client API's listener (off unless configured) and its upload cleanup, in
        this loop: its reads of the mount run in worker threads."""
        nursery.start_soon(client.uploads.cleanup_loop)
        path = self.settings.client_socket
        if path is not None:  # a node's client router forwards to it: no TCP port here
            self.client_sock = bind_unix(path, mode=0o600)
            await nursery.start(serve_unix, cast(ControlApp, client.app), self.client_sock)
            log.info("client API listening on socket %s", path)
            return
        listen = self.settings.client_listen
        if listen:
            host, _, port = listen.rpartition(":")
            # serve_tcp serves any ASGI app: hypercorn's own server setup, not a second one
            try:
                await nursery.start(serve_tcp, cast(ControlApp, client.app),
                                    host.strip("[]") or "0.0.0.0", int(port))
            except OSError as e:  # one listener per node: the volume still serves
                log.error("client API not served: cannot listen on %s (%s); another gateway "
                          "of this node may have it (one volume per listener)", listen,
                          e.strerror)
                return
            log.info("client API listening on %s", listen)

    async def _fuse_main(self, cancel_scope: trio.CancelScope) -> None:
        try:
            await pyfuse3.main()
        finally:
            cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("signal %s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return

    async def _renew_lease(self) -> None:
        """Renew the heartbeat every ttl/3; a renewal that fails is reported and retried at
        the next period, never the end of the mount (the flock keeps this node's claim)."""
        assert self.lease is not None
        while True:
            await trio.sleep(self.lease.ttl / 3)
            try:
                await trio.to_thread.run_sync(self.lease.renew)
            except OSError as e:  # recorded here, in the loop's thread, not the worker's
                self.state.failed(LEASE_FILE, e)
            else:
                self.state.succeeded(LEASE_FILE)

    def _stop(self, sock: trio.socket.SocketType) -> None:
        pyfuse3.close(unmount=True)
        if self.ops is not None:
            self.ops.offload.close()
        sock.close()
        try:
            if self.settings.control_socket:
                os.unlink(self.settings.control_socket)
        except OSError:
            pass
        if self.client_sock is not None and self.settings.client_socket is not None:
            self.client_sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.settings.client_socket)
        try:
            self._final_flush()
        finally:
            if self.lease is not None:
                self.lease.release()
            if self.ops is not None:
                self.ops.inodes.close_all()
        log.info("unmounted volume=%s", self.settings.volume)

    def _final_flush(self) -> None:
        """The last snapshot. It never raises: on a full disk what cannot be written stays
        marked dirty on disk (a scope whose late blocks could not be written back keeps its
        mark), so the next start rescans exactly those scopes."""
        if self.ops is not None:
            try:
                self.ops.late.settle_now()
            except (OSError, GatewayError) as e:
                log.error("final writeback failed error=%s: those scopes stay dirty", e)
        if isinstance(self.ledger, RedisLedger):
            self.ledger.close()
        self.ledger.flush(force=True)
        error = self.state.persist_error()
        if error is not None:
            log.warning("unmounting with state not written files=%s error=%s: the next start "
                        "rescans every scope not known to be current", ",".join(error["files"]),
                        error["error"])


def set_read_ahead(dev: int, kib: int) -> None:
    """Raise the mount's readahead: the kernel sends FUSE reads of at most the readahead
    window (128 KiB by default), so sequential reads otherwise cost 8 round trips per MiB."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(f"{kib}\n")
    except OSError as e:
        log.warning("cannot set readahead path=%s error=%s", path, e.strerror)


def raise_fd_limit() -> None:
    """Each inode the kernel knows holds one O_PATH descriptor: allow as many as the system."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except OSError:
        ceiling = hard
    for limit in (ceiling, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            return
        except (ValueError, OSError):
            continue


def run_gateway(settings: MountSettings, ready: Callable[[], None]) -> None:
    """Run in the foreground until unmounted or signalled; StartupError for refusals."""
    try:
        require_patched()
    except GatewayError as e:
        raise StartupError(e.detail) from None
    preflight(settings)
    raise_fd_limit()
    # The kernel has applied the caller's umask to every mode a request carries; the daemon's
    # own must not narrow it again (a `umask 002` user's files would lose group write). So
    # everything the daemon itself creates names its mode, and commands run with 022.
    os.umask(0)
    try:
        gateway = Gateway(settings)
    except ValueError as e:  # get_backend: an unknown backend, should preflight be bypassed
        raise StartupError(str(e)) from None
    try:
        trio.run(gateway.run, ready)
    except GatewayError as e:
        raise StartupError(e.detail) from None
    except BackendError as e:
        raise StartupError(f"backend {settings.backend}: {e}") from None
    except RuntimeError as e:
        if "fuse_session" not in str(e):
            raise
        # pyfuse3.init: libfuse refused the options or the mount; it says why on stderr. The
        # control socket was bound just before: ours, and serving nothing.
        if settings.control_socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(settings.control_socket)
        raise StartupError(f"FUSE could not mount {settings.mountpoint} ({e}); libfuse's "
                           "reason is the line before this in the log") from None
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EPERM):
            raise StartupError(str(e)) from None
        raise


__all__ = ["Gateway", "MountSettings", "StartupError", "preflight", "run_gateway"]

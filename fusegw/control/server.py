"""Serving the ASGI app with hypercorn's HTTP/1.1 protocol on a Unix socket, in our trio loop.

We accept connections ourselves so that each one's SO_PEERCRED can be read and handed to the
app (hypercorn's scope carries no peer address for Unix sockets), then let hypercorn's
per-connection server speak HTTP on the stream.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from fusegw.control.app import ControlApp, Peer

log = logging.getLogger("fusegw.control")


def read_peer(sock: trio.socket.SocketType) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid, _groups(pid))


def _groups(pid: int) -> frozenset[int]:
    """Supplementary groups of the peer process, as the kernel has them now."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return frozenset()


def resolve_group(group: str | int | None) -> int | None:
    if group is None or group == "":
        return None
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    return grp.getgrnam(str(group)).gr_gid


def hypercorn_config() -> Config:
    config = Config()
    config.keep_alive_timeout = 30
    config.read_timeout = 30  # a slow or half-closed client is dropped, never waited on
    config.h11_max_incomplete_size = 64 * 1024
    config.accesslog = None
    config.errorlog = logging.getLogger("fusegw.hypercorn")
    return config


def bind_unix(path: Path, mode: int = 0o660, gid: int | None = None) -> trio.socket.SocketType:
    """Bind the socket file, replacing a stale one left by a dead gateway."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except FileNotFoundError:
        pass
    except ConnectionRefusedError:
        path.unlink()
    else:
        raise OSError(98, f"control socket {path} is in use by another process")
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    if gid is not None:
        os.chown(path, -1, gid)
    sock.listen(128)
    return trio.socket.from_stdlib_socket(sock)


async def serve_unix(app: ControlApp, sock: trio.socket.SocketType,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await _serve(app, trio.SocketListener(sock), read_peer, task_status)


async def serve_tcp(app: ControlApp, host: str, port: int,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The optional TCP listener: no peer credentials, so the auth token decides."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    tcp_peer = Peer(-1, -1, -1, frozenset(), "tcp")
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            await nursery.start(_serve, app, listener, lambda sock: tcp_peer)
        task_status.started()


async def _serve(app: ControlApp, listener: trio.SocketListener,
                 peer_of: Callable[[trio.socket.SocketType], Peer],
                 task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    config = hypercorn_config()
    context = WorkerContext(None)
    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # EMFILE and friends: back off, keep serving
                log.warning("accept failed errno=%s", e.errno)
                await trio.sleep(0.1)
                continue
            peer = peer_of(stream.socket)
            nursery.start_soon(_serve_connection, app, peer, config, context, stream)


async def _serve_connection(app: ControlApp, peer: Peer, config: Config,
                            context: WorkerContext, stream: trio.SocketStream) -> None:
    async def with_peer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["extensions"] = {**scope.get("extensions", {}), "fusegw.peer": peer}
        await app(scope, receive, send)

    server = TCPServer(ASGIWrapper(with_peer),  # type: ignore[arg-type]
                       config, context, ConnectionState({}), stream)  # type: ignore[arg-type]
    try:
        await server.run()
    except Exception:
        log.exception("control connection failed")

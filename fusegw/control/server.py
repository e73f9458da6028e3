"""Serving the ASGI app with hypercorn's HTTP/1.1 protocol on a Unix socket, in our trio loop.

We accept connections ourselves so that each one's SO_PEERCRED can be read and handed to the
app (hypercorn's scope carries no peer address for Unix sockets), then let hypercorn's
per-connection server speak HTTP on the stream.

The API is plain HTTP/1.1, and only that: hypercorn's own ways out of it (an h2c upgrade, the
HTTP/2 prior-knowledge preface, a WebSocket handshake) are taken out, so every such request
reaches the app as an ordinary HTTP request, which refuses it with a problem+json 400.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.protocol.events import Request
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr

from fusegw.control.app import ControlApp, Peer
from fusegw.settings import group_id

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
    """The admin group's gid (a number is taken as one); a name that is no group is a
    StartupError naming the `groupadd` that creates it, never a KeyError's traceback."""
    if group is None or group == "":
        return None
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    return group_id(str(group))


def hypercorn_config() -> Config:
    config = Config()
    config.keep_alive_timeout = 30
    config.read_timeout = 30  # a slow or half-closed client is dropped, never waited on
    config.h11_max_incomplete_size = 64 * 1024
    config.alpn_protocols = ["http/1.1"]  # never h2, should a TLS listener ever come
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

    server = HTTP11Server(ASGIWrapper(with_peer),  # type: ignore[arg-type]
                          config, context, ConnectionState({}), stream)  # type: ignore[arg-type]
    try:
        await server.run()
    except Exception:
        log.exception("control connection failed")


class HTTP11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol with its protocol switches taken out.

    hypercorn answers an `Upgrade: h2c` request with 101 and goes on in HTTP/2, takes a
    `PRI * HTTP/2.0` preface as HTTP/2, and makes a WebSocket handshake a websocket scope
    (answered outside the app: a bare 500 or 400). None of these has a configuration switch,
    so the two methods that decide them are replaced: every request stays an HTTP/1.1 request
    for the app, whose refusal is then an ordinary problem+json answer.
    """

    async def _check_protocol(self, event: h11.Request) -> None:
        """Never switch to HTTP/2: the app refuses the request (`Upgrade`, version 2.0)."""

    async def _create_stream(self, request: h11.Request) -> None:
        """hypercorn's own, with the WebSocket branch removed: always an HTTP stream."""
        self.stream = HTTPStream(self.app, self.config, self.context, self.task_group, self.ssl,
                                 self.client, self.server, self.stream_send, STREAM_ID)
        await self.stream.handle(Request(
            stream_id=STREAM_ID,
            headers=list(request.headers),
            http_version=request.http_version.decode(),
            method=request.method.decode("ascii").upper(),
            raw_path=request.target,
            state=self.connection_state,
        ))
        self.keep_alive_requests += 1
        await self.context.mark_request()


class HTTP11Server(TCPServer):
    """hypercorn's per-connection server speaking only `HTTP11Protocol`.

    Its own `run` builds a ProtocolWrapper, which swaps in HTTP/2 when the HTTP/1.1 protocol
    asks for it; this one has no TLS (so no ALPN) and no wrapper, so nothing can switch.
    """

    async def run(self) -> None:
        sock = self.stream.socket  # a plain SocketStream: no TLS here
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = HTTP11Protocol(  # type: ignore[assignment]
                    self.app, self.config, self.context, task_group,
                    ConnectionState(self.state), False, client, server, self.protocol_send)
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

"""The ASGI application: request parsing, authorisation, routing, problem+json answers.

A bad request never produces a 5xx and never changes state: every parameter is validated
before a handler touches anything, and every failure is a `GatewayError` with its status.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

from backends import BackendError
from fusegw.errors import (
    BackendFailure,
    Forbidden,
    GatewayError,
    InvalidParameters,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from fusegw.scopes import Caller

log = logging.getLogger("fusegw.control")

MAX_BODY = 64 * 1024
TOKEN_HEADER = b"x-backendai-storage-auth-token"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Caller], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class RawResponse:
    """A non-JSON answer (the Prometheus text of /metrics)."""

    body: bytes
    content_type: bytes


class RequestObserver(Protocol):
    def observe(self, route: str, method: str, status: int, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Peer:
    """The connecting process, from SO_PEERCRED (or a token-checked TCP client, uid -1)."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]
    via: str = "unix"  # "tcp": no credentials, the auth token decides


class ClientGone(Exception):
    """The client disconnected before its request was read: there is no one to answer."""


class ControlApp:
    def __init__(self, admin_gid: int | None = None,
                 observer: RequestObserver | None = None, token: str | None = None) -> None:
        self.routes: dict[str, dict[str, Handler]] = {}
        self.admin_gid = admin_gid
        self.token = token
        self.observer = observer
        self.public = {("GET", "/"), ("GET", "/metrics")}

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes.setdefault(path, {})[method] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        try:
            status, body = await self._handle(scope, receive)
        except ClientGone:
            # hypercorn answers the broken request itself; a second send races with it
            log.debug("client went away method=%s path=%s", scope["method"], scope["path"])
            return
        except GatewayError as e:
            status, body = e.status, e.problem()
        except BackendError as e:
            status, body = 502, BackendFailure(str(e)).problem()
        except Exception:  # a bug, never a bad request: keep serving and say so
            log.exception("control request failed")
            status, body = 500, GatewayError("internal error").problem()
        await _respond(send, status, body)
        seconds = time.monotonic() - started
        route = scope["path"] if scope["path"] in self.routes else "unmatched"
        if self.observer is not None:
            self.observer.observe(route, scope["method"], status, seconds)
        log.debug("request method=%s path=%s status=%d ms=%.2f", scope["method"], scope["path"],
                  status, seconds * 1000)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        # The whole body is read before any answer, so the connection stays usable for the
        # next request (an answer over an unread body would make the server drop it).
        body = await _read_body(receive)
        methods = self.routes.get(scope["path"])
        if methods is None:
            raise NotFound(f"no route {scope['path']}")
        handler = methods.get(scope["method"])
        if handler is None:
            raise MethodNotAllowed(f"{scope['method']} not allowed on {scope['path']}")
        peer: Peer | None = scope.get("extensions", {}).get("fusegw.peer")
        if peer is not None and peer.via == "tcp":
            self._check_token(scope)  # every route, GET / included: TCP may cross hosts
        elif (scope["method"], scope["path"]) not in self.public:
            self._authorize(peer)
        params = _params(scope, body)
        caller = Caller(peer.uid if peer else -1, peer.pid if peer else -1,
                        "tcp" if peer and peer.via == "tcp" else "socket")
        result = await handler(params, caller)
        return (204, None) if result is None else (200, result)

    def _check_token(self, scope: Scope) -> None:
        given = dict(scope.get("headers", [])).get(TOKEN_HEADER, b"")
        if not self.token or not hmac.compare_digest(given, self.token.encode()):
            raise Forbidden(f"missing or wrong {TOKEN_HEADER.decode()} header")

    def _authorize(self, peer: Peer | None) -> None:
        if peer is None:
            raise Forbidden("no peer credentials")
        if peer.uid == 0:
            return
        if self.admin_gid is not None and (peer.gid == self.admin_gid
                                           or self.admin_gid in peer.groups):
            return
        raise Forbidden(f"uid {peer.uid} is neither root nor in the admin group")


def _params(scope: Scope, body: bytes) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if scope["method"] == "GET" and scope.get("query_string"):
        try:
            query = scope["query_string"].decode("ascii")
            params.update(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            raise InvalidParameters("malformed query string") from None
    if body.strip():
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
            raise InvalidParameters("request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidParameters("request body must be a JSON object")
        params.update(data)
    return params


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: Any) -> None:
    if isinstance(body, RawResponse):
        headers = [(b"content-type", body.content_type),
                   (b"content-length", str(len(body.body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body.body})
        return
    if body is None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    ctype = b"application/problem+json" if status >= 400 else b"application/json"
    data = json.dumps(body).encode()
    headers = [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]
    if status == 413:  # the rest of the body is not read: this connection cannot go on
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

"""The ASGI application: request parsing, authorisation, routing, problem+json answers.

A bad request never produces a 5xx and never changes state: every parameter is validated
before a handler touches anything, and every failure is a `GatewayError` with its status.
A request whose meaning is ambiguous (a JSON key, query parameter or token header given twice)
or that asks to leave plain HTTP/1.1 (`Upgrade`, HTTP/2) is refused with 400, never guessed at.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
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
    ProtocolRefused,
)
from fusegw.scopes import Caller

log = logging.getLogger("fusegw.control")

MAX_BODY = 64 * 1024
TOKEN_NAME = "X-BackendAI-Storage-Auth-Token"
TOKEN_HEADER = TOKEN_NAME.lower().encode()
HTTP_VERSIONS = ("1.0", "1.1")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Caller], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class RawResponse:
    """A non-JSON answer (the Prometheus text of /metrics)."""

    body: bytes
    content_type: bytes


@dataclass(frozen=True, slots=True)
class StreamResponse:
    """An answer sent as it is produced (POST /folder/file/fetch), never held whole: chunked
    on HTTP/1.1. `chunks` is closed whatever happens, so what it holds open (a file) goes."""

    chunks: AsyncGenerator[bytes, None]
    content_type: bytes = b"application/octet-stream"


QUERY_ROUTES = frozenset({("POST", "/folder/file/mkdir")})
"""POST routes that also take query parameters: the manager sends mkdir (the per-user
directory of a group's `.local` folder) as a query string with no body."""


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
        if scope["type"] == "websocket":
            await _refuse_websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        close = False
        try:
            status, body = await self._handle(scope, receive)
        except ClientGone:
            # hypercorn answers the broken request itself; a second send races with it
            log.debug("client went away method=%s path=%s", scope["method"], scope["path"])
            return
        except GatewayError as e:
            status, body = e.status, e.problem(scope["method"], scope["path"])
            # an unread body, or bytes that may be another protocol, follow such a request
            close = isinstance(e, (PayloadTooLarge, ProtocolRefused))
        except BackendError as e:  # an appliance that refused our input says 4xx (rest.py)
            status = int(getattr(e, "status", 502))
            failure = BackendFailure(str(e))
            failure.status = status
            body = failure.problem(scope["method"], scope["path"])
        except Exception:  # a bug, never a bad request: keep serving and say so
            log.exception("control request failed")
            status, body = 500, GatewayError("internal error").problem(scope["method"],
                                                                       scope["path"])
        await _respond(send, status, body, close)
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
        _check_protocol(scope)
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
        """The token header must be given once: with two, which one counts would be a guess
        (the last one decided before), so such a request never passes, even if both match."""
        tokens = _header_values(scope, TOKEN_HEADER)
        if len(tokens) > 1:
            raise InvalidParameters(f"{TOKEN_NAME} header given {len(tokens)} times",
                                    data={TOKEN_NAME: "given more than once"})
        given = tokens[0] if tokens else b""
        if not self.token or not hmac.compare_digest(given, self.token.encode()):
            raise Forbidden(f"missing or wrong {TOKEN_NAME} header")

    def _authorize(self, peer: Peer | None) -> None:
        if peer is None:
            raise Forbidden("no peer credentials")
        if peer.uid == 0:
            return
        if self.admin_gid is not None and (peer.gid == self.admin_gid
                                           or self.admin_gid in peer.groups):
            return
        raise Forbidden(f"uid {peer.uid} is neither root nor in the admin group")


def _check_protocol(scope: Scope) -> None:
    """Plain HTTP/1.x only. A request asking for another protocol is refused rather than served
    as if it had not asked (the client could not tell whether it was switched); the server
    (fusegw.control.server) never switches, so such requests arrive here as HTTP requests."""
    version = str(scope.get("http_version", "1.1"))
    if version not in HTTP_VERSIONS:
        raise ProtocolRefused(f"HTTP/{version} is not served: the API speaks HTTP/1.1",
                              data={"http_version": f"HTTP/{version} not supported"})
    offered = _header_values(scope, b"upgrade")
    if offered:
        names = ", ".join(v.decode("latin-1") for v in offered)
        raise ProtocolRefused(f"Upgrade to {names} refused: the API speaks plain HTTP/1.1",
                              data={"Upgrade": "not supported"})


def _header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of header `name` (lower case), in order: a repeated header stays visible."""
    return [value for key, value in scope.get("headers", []) if key.lower() == name]


def _params(scope: Scope, body: bytes) -> dict[str, Any]:
    """The query parameters (GET, and the QUERY_ROUTES) and the JSON body's fields; a name
    given twice, in either or across both, is refused: which value was meant would be a guess."""
    with_query = scope["method"] == "GET" or (scope["method"], scope["path"]) in QUERY_ROUTES
    query = _query_params(scope) if with_query else {}
    data = _body_params(body)
    both = sorted(query.keys() & data.keys())
    if both:
        raise InvalidParameters(f"parameters given in both the query string and the body: {both}",
                                data={k: "given twice" for k in both})
    return {**query, **data}


def _query_params(scope: Scope) -> dict[str, Any]:
    if not scope.get("query_string"):
        return {}
    try:
        query = scope["query_string"].decode("ascii")
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise InvalidParameters("malformed query string") from None
    return _unique(pairs, "the query string")


def _body_params(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body, object_pairs_hook=lambda pairs: _unique(pairs, "a JSON object"))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        raise InvalidParameters("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidParameters("request body must be a JSON object")
    return data


def _unique(pairs: Iterable[tuple[str, Any]], where: str) -> dict[str, Any]:
    """`pairs` as a dict, refusing a key given twice: json.loads and parse_qsl would keep the
    last one silently (json.loads calls this for every object, so nesting is covered)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidParameters(f"{key!r} given more than once in {where}",
                                    data={key: "given more than once"})
        result[key] = value
    return result


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


async def _stream(send: Send, status: int, body: StreamResponse) -> None:
    """Headers, then each chunk as it comes (no content-length: chunked). A failure after
    the headers propagates, so the server drops the connection and the client sees a
    truncated transfer, never a short body that looks complete."""
    try:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", body.content_type)]})
        async for chunk in body.chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await body.chunks.aclose()


async def _respond(send: Send, status: int, body: Any, close: bool = False) -> None:
    if isinstance(body, StreamResponse):
        await _stream(send, status, body)
        return
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
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """A server that negotiates WebSockets itself (stock hypercorn) hands the app a websocket
    scope, and one left unanswered becomes a bare 500. Answer it as any upgrade: the 400
    problem through the ASGI websocket HTTP-response extension, else a close before accept
    (a bare 403). fusegw's own server never gets here: it does not negotiate WebSockets."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client went away
    problem = ProtocolRefused("Upgrade to websocket refused: the API speaks plain HTTP/1.1",
                              data={"Upgrade": "not supported"})
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close"})
        return
    data = json.dumps(problem.problem("GET", scope.get("path", ""))).encode()
    await send({"type": "websocket.http.response.start", "status": problem.status,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "websocket.http.response.body", "body": data})


async def answered_unless_http(scope: Scope, receive: Receive, send: Send) -> bool:
    """For the client apps: answer a lifespan scope, ignore anything else that is not HTTP;
    True when the scope is dealt with."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return True
    return bool(scope["type"] != "http")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

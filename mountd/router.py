"""The node endpoint: `GET /` and `GET /volumes` for the node, everything else routed.

The manager talks to one endpoint per node, as it does to a storage proxy. A request other than
those two is sent to the gateway of the volume its `volume` field names (JSON body, or the
query string of a GET), over that gateway's Unix socket, with method, path, query, body and
content type as they came, and the gateway's answer goes back unchanged.

The request is read and checked here first, with the gateways' own rules (fusegw.control.app):
the caller must be root or in the admin group on the Unix socket, or give the token on TCP;
malformed or ambiguous input (bad JSON, a key or parameter given twice, Upgrade, HTTP/2) is a
400 before anything is forwarded. So the gateway, which sees mountd (root) as its peer, only
gets requests the node has authorised, and bad input never becomes a 5xx here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from fusegw.control import params
from fusegw.control.app import (
    ClientGone,
    ControlApp,
    Peer,
    Receive,
    Scope,
    Send,
    _check_protocol,
    _params,
    _read_body,
)
from fusegw.control.file_routes import clone_volume
from fusegw.errors import (
    GatewayError,
    PayloadTooLarge,
    ProtocolRefused,
    VolumeNotFound,
)
from fusegw.scopes import Caller

log = logging.getLogger("fusegw.mountd.router")

PASSED_HEADERS = (b"content-type", b"retry-after")  # of the gateway's answer, besides length
NO_BODY = (204, 304)


class VolumeUnavailable(GatewayError):
    """The volume's gateway is starting or being replaced: try again after Retry-After."""

    kind = "volume/unavailable"
    title = "Volume temporarily unavailable"
    status = 503
    code_domain = "storage"

    def __init__(self, detail: str, retry_after: int, data: dict[str, Any] | None = None
                 ) -> None:
        super().__init__(detail, data)
        self.retry_after = retry_after


class GatewayTimeout(GatewayError):
    kind = "volume/timeout"
    title = "The volume's gateway did not answer in time"
    status = 504
    code_domain = "storage"


class Volume(Protocol):
    """What the router needs of a volume's supervisor."""

    @property
    def name(self) -> str: ...
    @property
    def client(self) -> httpx.AsyncClient: ...
    def serving(self) -> bool: ...
    def retry_after(self) -> int: ...
    @property
    def problem(self) -> str | None: ...


class Node(Protocol):
    def volume(self, name: str) -> Volume | None: ...
    def status(self) -> dict[str, Any]: ...
    def volumes(self) -> Awaitable[list[dict[str, Any]]]: ...


@dataclass(slots=True)
class Answer:
    """An HTTP answer, sent as it is: a gateway's, or a problem of the router's own."""

    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    stream: httpx.Response | None = None  # a gateway's answer still being received

    @classmethod
    def problem(cls, error: GatewayError, scope: Scope) -> Answer:
        """The node's own refusal, with `msg` and `error_code` as a gateway's would have."""
        body = error.problem(scope["method"], scope["path"])
        headers = [(b"content-type", b"application/problem+json")]
        if isinstance(error, VolumeUnavailable):
            headers.append((b"retry-after", str(error.retry_after).encode()))
        if isinstance(error, (PayloadTooLarge, ProtocolRefused)):
            headers.append((b"connection", b"close"))  # an unread body or another protocol
        return cls(error.status, json.dumps(body).encode(), headers)

    @classmethod
    def of(cls, r: httpx.Response) -> Answer:
        """The gateway's answer, its body passed on as it arrives (a fetched file is never
        held whole in the node's memory)."""
        headers = [(k.encode(), v.encode()) for k, v in r.headers.items()
                   if k.lower().encode() in PASSED_HEADERS]
        length = r.headers.get("content-length")
        if length is not None and r.status_code not in NO_BODY:
            headers.append((b"content-length", length.encode()))
        return cls(r.status_code, b"", headers, r)

    async def send(self, send: Send) -> None:
        if self.stream is not None:
            await self._relay(send, self.stream)
            return
        headers = list(self.headers)
        body = b"" if self.status in NO_BODY else self.body
        if self.status not in NO_BODY:
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _relay(self, send: Send, r: httpx.Response) -> None:
        """Chunk by chunk; a gateway that dies mid-body ends the answer short (the client sees
        a truncated body, never a made-up end), and the gateway's response is closed."""
        try:
            await send({"type": "http.response.start", "status": self.status,
                        "headers": self.headers})
            if self.status not in NO_BODY:
                async for chunk in r.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except (httpx.HTTPError, OSError) as e:
            log.warning("routed answer cut short error=%s", e)
        finally:
            await r.aclose()


class NodeApp(ControlApp):
    """The node's ASGI app: ControlApp for `/` and `/volumes`, the router for the rest."""

    def __init__(self, node: Node, admin_gid: int | None, token: str | None) -> None:
        super().__init__(admin_gid, None, token)
        self.node = node
        self.route("GET", "/", self._root)
        self.route("GET", "/volumes", self._volumes)

    async def _root(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return self.node.status()

    async def _volumes(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"volumes": await self.node.volumes()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.routes:
            await super().__call__(scope, receive, send)
            return
        try:
            answer = await self._route(scope, receive)
        except ClientGone:
            return
        except GatewayError as e:
            answer = Answer.problem(e, scope)
        except Exception:  # a bug, never a bad request: keep serving and say so
            log.exception("routing failed")
            answer = Answer.problem(GatewayError("internal error"), scope)
        await answer.send(send)
        if scope["method"] != "GET" or answer.status >= 500:
            peer = _peer(scope)
            log.info("routed method=%s path=%s status=%d uid=%s pid=%s via=%s",
                     scope["method"], scope["path"], answer.status,
                     peer.uid if peer else None, peer.pid if peer else None,
                     peer.via if peer else None)

    async def _route(self, scope: Scope, receive: Receive) -> Answer:
        body = await _read_body(receive)  # the whole body first: the connection stays usable
        _check_protocol(scope)
        peer = _peer(scope)
        if peer is not None and peer.via == "tcp":
            self._check_token(scope)
        else:
            self._authorize(peer)
        name = _volume_of(scope["path"], _params(scope, body))
        volume = self.node.volume(name)
        if volume is None:
            raise VolumeNotFound(f"no volume {name!r} on this node", data={"volume": name})
        if not volume.serving():
            raise _unavailable(volume)
        return await _forward(volume, scope, body)


def _volume_of(path: str, fields: dict[str, Any]) -> str:
    """The volume a request is for: its `volume` field, or for a clone, which names two,
    `src_volume` (= `dst_volume`: a clone across volumes is refused with 400 here, as the
    gateway would, since no single gateway could do it)."""
    if path == "/folder/clone":
        return clone_volume(fields)
    return params.text(fields, "volume")


def _peer(scope: Scope) -> Peer | None:
    peer: Peer | None = scope.get("extensions", {}).get("fusegw.peer")
    return peer


def _unavailable(volume: Volume) -> VolumeUnavailable:
    why = volume.problem or "its gateway is starting"
    return VolumeUnavailable(f"volume {volume.name!r} is not serving: {why}",
                             volume.retry_after(), data={"volume": volume.name})


async def _forward(volume: Volume, scope: Scope, body: bytes) -> Answer:
    """The request, as it came, to the volume's gateway; its answer, as it came."""
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    url = httpx.URL("http://fusegw").copy_with(raw_path=raw + (b"?" + query if query else b""))
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() == b"content-type"]
    try:
        request = volume.client.build_request(scope["method"], url, content=body,
                                              headers=headers)
        r = await volume.client.send(request, stream=True)
    except httpx.TimeoutException:
        raise GatewayTimeout(f"volume {volume.name!r}: no answer from its gateway",
                             data={"volume": volume.name}) from None
    except (httpx.HTTPError, OSError, RuntimeError):
        # it died, or is being replaced or stopped under the request (RuntimeError: its
        # supervisor closed the client)
        raise _unavailable(volume) from None
    return Answer.of(r)

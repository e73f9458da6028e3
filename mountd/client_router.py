"""The node's client API: one TCP listener (`[api.client] service-addr`) for every volume.

Users' browsers and the client SDK come with a token the manager got from the node endpoint;
its `volume` claim says whose gateway answers. The token is checked here with the gateways'
own rules (fusegw.client.tokens: a forged or expired token is a 401, a genuine one for another
operation a 403) before anything is forwarded, then the request goes to that volume's gateway
over its client socket (`<runtime dir>/NAME.client.sock`, 0600), streamed both ways: an
upload's body is passed on as it arrives and a download's as the gateway sends it, so neither
is ever held whole in mountd's memory. `OPTIONS` (tus capabilities, CORS preflights) carries
no token and is answered by any serving gateway.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
import trio

from fusegw.client.http import (
    TUS_CORS,
    Receive,
    Scope,
    Send,
    body_chunks,
    cors_for_download,
    drain,
    problem,
    query,
    respond,
)
from fusegw.client.tokens import Tokens
from fusegw.control.app import ClientGone, answered_unless_http
from fusegw.errors import GatewayError, NotFound, VolumeNotFound
from mountd.router import Answer, GatewayTimeout, VolumeUnavailable

log = logging.getLogger("fusegw.mountd.client")

FORWARD_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
OPS = {"/download": "download", "/upload": "upload"}
PASSED_REQUEST_HEADERS = {
    b"range", b"if-range", b"upload-offset", b"upload-length", b"upload-metadata",
    b"tus-resumable", b"content-type", b"content-length", b"origin",
    b"access-control-request-method", b"access-control-request-headers"}
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
              b"te", b"trailer", b"transfer-encoding", b"upgrade", b"date", b"server"}


class Volume(Protocol):
    @property
    def name(self) -> str: ...
    def serving(self) -> bool: ...
    def retry_after(self) -> int: ...
    @property
    def problem(self) -> str | None: ...


class Node(Protocol):
    @property
    def supervisors(self) -> Any: ...  # name -> Volume, in the file's order
    def volume(self, name: str) -> Volume | None: ...
    def client_socket(self, name: str) -> Path: ...


class ClientRouter:
    """The ASGI app of the node's client listener."""

    def __init__(self, node: Node, secret: str) -> None:
        self.node = node
        self.secret = secret
        self._clients: dict[Path, httpx.AsyncClient] = {}

    def client(self, name: str) -> httpx.AsyncClient:
        path = self.node.client_socket(name)
        client = self._clients.get(path)
        if client is None:
            client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)),
                                       base_url="http://fusegw", timeout=FORWARD_TIMEOUT)
            self._clients[path] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await answered_unless_http(scope, receive, send):
            return
        try:
            volume = self._volume_for(scope)
        except GatewayError as e:
            await drain(receive)
            await _refuse(scope, send, e)
            return
        try:
            r = await self._forward(volume, scope, receive)
        except GatewayError as e:
            await _refuse(scope, send, e)
            return
        except ClientGone:
            return
        answer = Answer(r.status_code, b"", _response_headers(r), r)
        if scope["method"] == "PATCH":
            await answer.send(send)
        else:  # a download nobody reads any more stops (its zip stops reading the mount)
            await _until_disconnect(receive, answer.send(send))

    def _volume_for(self, scope: Scope) -> Volume:
        """The serving volume whose gateway answers: the token's, or any for what carries
        none (OPTIONS, an unknown route: the gateway's own refusal)."""
        op = OPS.get(scope["path"])
        if scope["method"] == "OPTIONS" or op is None:
            for volume in self.node.supervisors.values():
                if volume.serving():
                    return volume  # type: ignore[no-any-return]
            if not self.node.supervisors:
                raise NotFound("this node has no volumes")
            raise _unavailable(next(iter(self.node.supervisors.values())))
        token = query(scope).get("token")
        name = claimed_volume(token)
        Tokens(self.secret, name, 0).verify(token, op)  # the gateways' rules: 401, 403
        volume = self.node.volume(name)
        if volume is None:
            raise VolumeNotFound(f"volume {name!r} is not on this node",
                                 data={"volume": name})
        if not volume.serving():
            raise _unavailable(volume)
        return volume

    async def _forward(self, volume: Volume, scope: Scope, receive: Receive) -> httpx.Response:
        raw = scope.get("raw_path") or scope["path"].encode()
        qs = scope.get("query_string") or b""
        url = httpx.URL("http://fusegw").copy_with(raw_path=raw + (b"?" + qs if qs else b""))
        headers = [(k, v) for k, v in scope.get("headers", [])
                   if k.lower() in PASSED_REQUEST_HEADERS]
        content: AsyncIterator[bytes] | None = None
        if scope["method"] == "PATCH":
            content = body_chunks(receive)
        else:
            await drain(receive)
        client = self.client(volume.name)
        try:
            request = client.build_request(scope["method"], url, headers=headers,
                                           content=content)
            return await client.send(request, stream=True)
        except httpx.TimeoutException:
            raise GatewayTimeout(f"volume {volume.name!r}: no answer from its gateway",
                                 data={"volume": volume.name}) from None
        except (httpx.HTTPError, OSError, RuntimeError):
            raise _unavailable(volume) from None


def claimed_volume(token: str | None) -> str:
    """The `volume` the token names, unverified: only to pick the secret's check (which then
    verifies everything, and says 401 for what does not decode)."""
    if not token:
        return ""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return ""
    volume = claims.get("volume") if isinstance(claims, dict) else None
    return volume if isinstance(volume, str) else ""


def _response_headers(r: httpx.Response) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in r.headers.raw if k.lower() not in HOP_BY_HOP]


def _unavailable(volume: Volume) -> VolumeUnavailable:
    why = volume.problem or "its gateway is starting"
    return VolumeUnavailable(f"volume {volume.name!r} is not serving: {why}",
                             volume.retry_after(), data={"volume": volume.name})


async def _refuse(scope: Scope, send: Send, error: GatewayError) -> None:
    """As the gateway refuses (fusegw.client.app): problem+json with the route's CORS."""
    headers, body = problem(error)
    if scope["path"] == "/upload":
        headers = [*TUS_CORS, *headers]
    else:
        headers = cors_for_download(scope, headers)
    if isinstance(error, VolumeUnavailable):
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if scope["method"] == "PATCH":
        headers.append((b"connection", b"close"))
    await respond(send, error.status, headers, b"" if scope["method"] == "HEAD" else body)


async def _until_disconnect(receive: Receive, answer: Awaitable[None]) -> None:
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await answer
        nursery.cancel_scope.cancel()

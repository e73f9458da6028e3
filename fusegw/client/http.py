"""The bits of HTTP the client API needs on top of ASGI: query, headers, answers, CORS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fusegw.control.app import ClientGone
from fusegw.errors import GatewayError, InvalidParameters

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# The storage proxy's tus handlers send these on every answer (api/client.py)
TUS_CORS: Headers = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-headers",
     b"Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Offset, Content-Type"),
    (b"access-control-expose-headers",
     b"Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Offset, Content-Type"),
    (b"access-control-allow-methods", b"*"),
]
SIMPLE_RESPONSE_HEADERS = {b"cache-control", b"content-language", b"content-type", b"expires",
                           b"last-modified", b"pragma"}


def query(scope: Scope) -> dict[str, str]:
    """The query parameters; one given twice is refused (which one counts would be a guess)."""
    try:
        pairs = parse_qsl(scope.get("query_string", b"").decode("ascii"),
                          keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise InvalidParameters("malformed query string") from None
    result: dict[str, str] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidParameters(f"{key!r} given more than once", data={key: "given twice"})
        result[key] = value
    return result


def header(scope: Scope, name: bytes) -> str | None:
    """A request header given once (lower-case name); twice is refused."""
    values = [v for k, v in scope.get("headers", []) if k.lower() == name]
    if len(values) > 1:
        raise InvalidParameters(f"{name.decode()} header given more than once",
                                data={name.decode(): "given twice"})
    return values[0].decode("latin-1") if values else None


def cors_for_download(scope: Scope, headers: Headers) -> Headers:
    """aiohttp_cors as the storage proxy sets it up for /download (credentials allowed,
    every header exposed): the request's Origin echoed, nothing without one."""
    origins = [v for k, v in scope.get("headers", []) if k.lower() == b"origin"]
    if len(origins) != 1:  # none, or ambiguous: no CORS grant (also on a refusal)
        return headers
    origin = origins[0].decode("latin-1")
    exposed = b",".join(k for k, _ in headers if k.lower() not in SIMPLE_RESPONSE_HEADERS)
    cors = [(b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true")]
    if exposed:
        cors.append((b"access-control-expose-headers", exposed))
    return headers + cors


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives; ends early (ClientGone) if the client goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


async def drain(receive: Receive) -> None:
    """Read and drop a (small) body, so the connection stays usable after the answer."""
    try:
        async for _ in body_chunks(receive):
            pass
    except ClientGone:
        pass


async def respond(send: Send, status: int, headers: Headers, body: bytes = b"") -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def problem(error: GatewayError) -> tuple[Headers, bytes]:
    data = json.dumps(error.problem()).encode()
    return [(b"content-type", b"application/problem+json")], data

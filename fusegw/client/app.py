"""The client API's ASGI app: `/download` and `/upload`, on a listener of their own.

Its callers are users' browsers and the client SDK, not the manager: they prove nothing but
the token the manager gave them, so every request is checked against its token first. Errors
are problem+json with the CORS headers of the route, so the web UI can read them.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable
from typing import Any

import trio

from fusegw.client.download import Downloads
from fusegw.client.http import (
    TUS_CORS,
    Headers,
    Receive,
    Scope,
    Send,
    cors_for_download,
    drain,
    header,
    problem,
    respond,
)
from fusegw.client.sessions import Invalidate, Release, Uploads
from fusegw.client.tokens import Tokens
from fusegw.client.upload import TusUploads
from fusegw.control.app import ClientGone, _check_protocol, answered_unless_http
from fusegw.errors import Forbidden, GatewayError, MethodNotAllowed, NotFound
from fusegw.ledger import Ledger
from fusegw.settings import MountSettings

log = logging.getLogger("fusegw.client")

METHODS = {"/download": ("GET", "HEAD", "OPTIONS"), "/upload": ("OPTIONS", "HEAD", "PATCH")}


class ClientApp:
    def __init__(self, downloads: Downloads, uploads: TusUploads) -> None:
        self.downloads = downloads
        self.uploads = uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await answered_unless_http(scope, receive, send):
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._route(scope, receive, tracked)
        except ClientGone:
            log.debug("client went away path=%s", scope["path"])
        except Exception as e:
            if started:  # mid-body: nothing to answer with; the connection is dropped
                log.warning("client request failed mid-answer path=%s error=%s",
                            scope["path"], e)
                return
            await self._refuse(scope, send, _as_problem(e))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if method != "PATCH":  # a PATCH body is the upload: read as it is written
            await drain(receive)
        _check_protocol(scope)
        if path not in METHODS:
            raise NotFound(f"no route {path}")
        if method not in METHODS[path]:
            raise MethodNotAllowed(f"{method} not allowed on {path}")
        if path == "/download":
            if method == "OPTIONS":
                await _preflight(scope, send)
            else:
                await _until_disconnect(receive, self.downloads.handle(scope, send))
        elif method == "OPTIONS":
            await self.uploads.options(scope, send)
        elif method == "HEAD":
            await self.uploads.head(scope, send)
        else:
            await self.uploads.patch(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, error: GatewayError) -> None:
        headers, body = problem(error)
        if scope["path"] == "/upload":
            headers = [*TUS_CORS, *headers]
        else:
            headers = cors_for_download(scope, headers)
        if scope["method"] == "PATCH":  # the body may be unread: this connection is done
            headers.append((b"connection", b"close"))
        await respond(send, error.status, headers, b"" if scope["method"] == "HEAD" else body)


async def _until_disconnect(receive: Receive, answer: Awaitable[None]) -> None:
    """Run `answer`, cancelled if the client goes away: hypercorn drops what is sent to a
    closed connection without an error, so a download nobody reads would go on reading the
    mount (a zip of a whole tree) to the end. The disconnect arrives through `receive`."""
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            log.info("download given up by the client path=%s", "/download")
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            await answer
        except Exception as e:  # raised bare after the nursery, not in an ExceptionGroup
            failure = e
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _preflight(scope: Scope, send: Send) -> None:
    """A CORS preflight of /download, answered as aiohttp_cors does for the storage proxy
    (any method and header, credentials allowed, the origin echoed)."""
    origin = header(scope, b"origin")
    method = header(scope, b"access-control-request-method")
    if origin is None or method is None:
        raise Forbidden("CORS preflight without Origin or Access-Control-Request-Method")
    headers: Headers = [(b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-allow-credentials", b"true"),
                        (b"access-control-allow-methods", method.encode("latin-1"))]
    asked = header(scope, b"access-control-request-headers")
    if asked:
        headers.append((b"access-control-allow-headers", asked.encode("latin-1")))
    await respond(send, 200, headers)


def _as_problem(e: Exception) -> GatewayError:
    if isinstance(e, GatewayError):
        return e
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
        return Forbidden(f"permission denied: {e.strerror}")
    log.error("client request failed", exc_info=e)
    return GatewayError("internal error")



class ClientAPI:
    """The client API of one gateway: its tokens, its upload sessions and its ASGI app
    (served only where a listener is configured; tokens are issued whenever a secret is)."""

    def __init__(self, s: MountSettings, ledger: Ledger, invalidate: Invalidate,
                 release: Release) -> None:
        assert s.client_secret
        self.tokens = Tokens(s.client_secret, s.volume, s.session_expire)
        self.uploads = Uploads(s.source, s.mountpoint, ledger, s.session_expire, invalidate,
                               release)
        self.app = ClientApp(Downloads(self.tokens, s.mountpoint),
                             TusUploads(self.tokens, self.uploads, s.max_upload_size))
        self.uploads.open()
        ledger.settlers.append(self.uploads)  # rescans count scope directories only

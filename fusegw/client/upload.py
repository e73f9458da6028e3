"""`/upload`: tus 1.0.0 core as the storage proxy speaks it (`OPTIONS`, `HEAD`, `PATCH`).

There is no creation extension: the manager creates the session (`POST /folder/file/upload`)
and hands out a token naming it; the client asks `HEAD` where the upload is and sends the rest
with `PATCH`. Stricter than the storage proxy (which appends whatever arrives): `Upload-Offset`
must be the upload's offset (409 otherwise, as tus says), the body must be
`application/offset+octet-stream` (415), and no byte past the token's `size` is taken (413).
"""

from __future__ import annotations

import email.utils

from fusegw.client.errors import TusVersionUnsupported, UnsupportedMediaType
from fusegw.client.http import (
    TUS_CORS,
    Headers,
    Receive,
    Scope,
    Send,
    body_chunks,
    header,
    query,
    respond,
)
from fusegw.client.paths import confine
from fusegw.client.sessions import Session, Uploads
from fusegw.client.tokens import Tokens
from fusegw.errors import InvalidParameters

TUS_VERSION = b"1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"


class TusUploads:
    def __init__(self, tokens: Tokens, uploads: Uploads, max_size: int) -> None:
        self.tokens = tokens
        self.uploads = uploads
        self.max_size = max_size

    async def options(self, scope: Scope, send: Send) -> None:
        """What this server speaks (the storage proxy's `tus_options`, plus the extension
        list tus asks for: `expiration`, since HEAD and PATCH say when a session goes)."""
        headers = [*TUS_CORS, (b"tus-resumable", TUS_VERSION), (b"tus-version", TUS_VERSION),
                   (b"tus-extension", b"expiration"),
                   (b"tus-max-size", str(self.max_size).encode()),
                   (b"x-content-type-options", b"nosniff")]
        await respond(send, 200, headers)

    def _session(self, scope: Scope) -> Session:
        claims = self.tokens.verify(query(scope).get("token"), "upload")
        return self.uploads.find(claims)

    def _headers(self, session: Session, offset: int) -> Headers:
        expires = email_date(session.expires)
        return [*TUS_CORS, (b"cache-control", b"no-store"), (b"tus-resumable", TUS_VERSION),
                (b"upload-offset", str(offset).encode()),
                (b"upload-length", str(session.size).encode()),
                (b"upload-expires", expires.encode())]

    async def head(self, scope: Scope, send: Send) -> None:
        session = self._session(scope)
        offset = await self.uploads.complete_if_whole(session)
        await respond(send, 200, self._headers(session, offset))

    async def patch(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self._session(scope)
        _check_tus(scope)
        offset = _offset(header(scope, b"upload-offset"))
        prefix = confine(query(scope).get("dst_dir"), "dst_dir", allow_root=True)
        pos = await self.uploads.append(session, offset, body_chunks(receive), prefix)
        await respond(send, 204, self._headers(session, pos))


def _check_tus(scope: Scope) -> None:
    version = header(scope, b"tus-resumable")
    if version is not None and version.encode() != TUS_VERSION:
        raise TusVersionUnsupported(f"Tus-Resumable {version!r}: this server speaks 1.0.0",
                                    data={"Tus-Version": "1.0.0"})
    ctype = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if ctype != OFFSET_TYPE:
        raise UnsupportedMediaType(f"Content-Type must be {OFFSET_TYPE}, not {ctype or 'none'}")


def _offset(value: str | None) -> int:
    if value is None or not value.isdigit() or len(value) > 19:
        raise InvalidParameters("Upload-Offset must be a non-negative integer",
                                data={"Upload-Offset": "missing or not an integer"})
    return int(value)


def email_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)

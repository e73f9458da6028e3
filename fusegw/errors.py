"""Errors that carry their meaning: an errno for the filesystem, a problem type for the API.

Every failure the gateway reports is one of these, so the FUSE layer can turn it into an errno
and the control socket into an `application/problem+json` body without parsing messages.
"""

from __future__ import annotations

import errno
from typing import Any

PROBLEM_BASE = "https://api.backend.ai/probs/storage/"


class GatewayError(Exception):
    """A failure with a problem type (for HTTP) and an errno (for FUSE and the CLI)."""

    kind = "generic"
    title = "Storage gateway error"
    status = 500
    errno = errno.EIO

    def __init__(self, detail: str = "", data: dict[str, Any] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.data = data

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.data is not None:
            body["data"] = self.data
        return body


class InvalidParameters(GatewayError):
    kind = "invalid-api-params"
    title = "Invalid API parameters"
    status = 400
    errno = errno.EINVAL


class ProtocolRefused(InvalidParameters):
    """A request asking to leave plain HTTP/1.1 (an `Upgrade` header, an HTTP/2 preface).

    Refused as invalid parameters rather than 426 (which asks the client to upgrade) or 505
    (a 5xx); the answer closes the connection, since what follows the request may already be
    in the other protocol.
    """


class Forbidden(GatewayError):
    kind = "forbidden"
    title = "The caller may not do this"
    status = 403
    errno = errno.EPERM


class VolumeNotFound(GatewayError):
    kind = "volume/not-found"
    title = "Volume not found"
    status = 404
    errno = errno.ENOENT


class QuotaScopeNotFound(GatewayError):
    kind = "quota/scope/not-found"
    title = "Quota scope not found"
    status = 404
    errno = errno.ENOENT


class VFolderNotFound(GatewayError):
    kind = "vfolder/not-found"
    title = "Virtual folder not found"
    status = 404
    errno = errno.ENOENT


class QuotaScopeExists(GatewayError):
    kind = "quota/scope/already-exists"
    title = "Quota scope already exists"
    status = 409
    errno = errno.EEXIST


class QuotaScopeNotEmpty(GatewayError):
    kind = "quota-directory-not-empty"
    title = "Quota Directory Not Empty"
    status = 409
    errno = errno.ENOTEMPTY


class VFolderExists(GatewayError):
    kind = "vfolder/already-exists"
    title = "Virtual folder already exists"
    status = 409
    errno = errno.EEXIST


class NotFound(GatewayError):
    kind = "not-found"
    title = "No such route"
    status = 404
    errno = errno.ENOENT


class MethodNotAllowed(GatewayError):
    kind = "method-not-allowed"
    title = "Method not allowed on this route"
    status = 405
    errno = errno.EINVAL


class PayloadTooLarge(GatewayError):
    kind = "payload-too-large"
    title = "Request body too large"
    status = 413
    errno = errno.E2BIG


class VolumeRefused(GatewayError):
    """The volume cannot be served as it is (old layout, lease held elsewhere, newer format)."""

    kind = "volume/refused"
    title = "Volume cannot be served"
    status = 409
    errno = errno.EBUSY


class BackendFailure(GatewayError):
    """The storage's quota mechanism failed; the scope was left as it was."""

    kind = "backend/failure"
    title = "The storage backend failed"
    status = 502
    errno = errno.EIO

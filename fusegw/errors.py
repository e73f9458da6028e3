"""Errors that carry their meaning: an errno for the filesystem, a problem type for the API.

Every failure the gateway reports is one of these, so the FUSE layer can turn it into an errno
and the control socket into an `application/problem+json` body without parsing messages.

Every body carries `msg` (the detail: the manager shows it to users, building
`InvalidAPIParameters(msg=body["msg"], data=body)`) and `error_code`,
`<domain>_<operation>_<detail>` in the vocabulary of Backend.AI's `ErrorDomain`,
`ErrorOperation` and `ErrorDetail` (ai/backend/common/exception.py): newer managers parse it
with `ErrorCode.from_str`, which refuses any other word, and pick their handling by the domain.
The domain is the error's own resource (a vfolder, a quota scope, the volume) or else the
route's; the operation is the route's; the detail is the error's (by default its status).
"""

from __future__ import annotations

import errno
from typing import Any

PROBLEM_BASE = "https://api.backend.ai/probs/storage/"

OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/volumes"): "list-query",
    ("GET", "/quota-scopes"): "list-query",
    ("DELETE", "/quota-scope/quota"): "update",
    ("POST", "/quota-scope/check"): "check-limit",
    ("POST", "/folder/delete"): "purge",
    ("POST", "/folder/file/list"): "read",
    ("POST", "/folder/file/fetch"): "read",
    ("POST", "/folder/file/download"): "access",
    ("POST", "/folder/file/upload"): "access",
    ("POST", "/folder/file/rename"): "update",
    ("POST", "/folder/file/move"): "update",
    ("POST", "/folder/file/delete"): "purge",
}
"""Operations of routes whose method does not say it (the rest: METHOD_OPERATIONS)."""

METHOD_OPERATIONS = {"GET": "read", "HEAD": "read", "POST": "create", "PATCH": "update",
                     "PUT": "update", "DELETE": "purge"}

STATUS_DETAILS = {400: "invalid-parameters", 401: "unauthorized", 403: "forbidden",
                  404: "not-found", 409: "conflict", 410: "gone", 503: "unavailable",
                  504: "timeout"}


def route_domain(path: str) -> str:
    """The resource a route acts on, as Backend.AI's ErrorDomain names it."""
    if path.startswith("/folder"):
        return "vfolder"
    if path.startswith("/quota-scope"):
        return "quota-scope"
    if path.startswith("/volume"):  # /volumes, /volume/hwinfo, ...
        return "storage"
    return "storage-proxy"


def route_operation(method: str, path: str) -> str:
    """The operation a route performs, as Backend.AI's ErrorOperation names it."""
    op = OPERATIONS.get((method, path))
    if op is None:
        op = METHOD_OPERATIONS.get(method, "request")
    return op


class GatewayError(Exception):
    """A failure with a problem type (for HTTP) and an errno (for FUSE and the CLI)."""

    kind = "generic"
    title = "Storage gateway error"
    status = 500
    errno = errno.EIO
    code_domain: str | None = None  # None: the route's (route_domain)
    code_operation: str | None = None  # None: the route's (route_operation)
    code_detail: str | None = None  # None: from the status (STATUS_DETAILS)

    def __init__(self, detail: str = "", data: dict[str, Any] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.data = data

    def error_code(self, method: str = "", path: str = "") -> str:
        """`<domain>_<operation>_<detail>` for this error answered on `method path`."""
        domain = self.code_domain or route_domain(path)
        operation = self.code_operation or route_operation(method, path)
        detail = self.code_detail or STATUS_DETAILS.get(
            self.status, "internal-error" if self.status >= 500 else "bad-request")
        return f"{domain}_{operation}_{detail}"

    def problem(self, method: str = "", path: str = "") -> dict[str, Any]:
        """The problem+json body, with `msg` and `error_code` for the manager."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "msg": self.detail,
            "error_code": self.error_code(method, path),
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

    code_domain = "storage-proxy"
    code_operation = "request"
    code_detail = "bad-request"


class Forbidden(GatewayError):
    kind = "forbidden"
    title = "The caller may not do this"
    status = 403
    errno = errno.EPERM
    code_operation = "auth"


class VolumeNotFound(GatewayError):
    kind = "volume/not-found"
    title = "Volume not found"
    status = 404
    errno = errno.ENOENT
    code_domain = "storage"


class QuotaScopeNotFound(GatewayError):
    kind = "quota/scope/not-found"
    title = "Quota scope not found"
    status = 404
    errno = errno.ENOENT
    code_domain = "quota-scope"


class VFolderNotFound(GatewayError):
    kind = "vfolder/not-found"
    title = "Virtual folder not found"
    status = 404
    errno = errno.ENOENT
    code_domain = "vfolder"


class QuotaScopeExists(GatewayError):
    kind = "quota/scope/already-exists"
    title = "Quota scope already exists"
    status = 409
    errno = errno.EEXIST
    code_domain = "quota-scope"
    code_detail = "already-exists"


class QuotaScopeNotEmpty(GatewayError):
    kind = "quota-directory-not-empty"
    title = "Quota Directory Not Empty"
    status = 409
    errno = errno.ENOTEMPTY
    code_domain = "quota-scope"


class VFolderExists(GatewayError):
    kind = "vfolder/already-exists"
    title = "Virtual folder already exists"
    status = 409
    errno = errno.EEXIST
    code_domain = "vfolder"
    code_detail = "already-exists"


class NotFound(GatewayError):
    kind = "not-found"
    title = "No such route"
    status = 404
    errno = errno.ENOENT
    code_domain = "storage-proxy"
    code_operation = "request"


class MethodNotAllowed(GatewayError):
    kind = "method-not-allowed"
    title = "Method not allowed on this route"
    status = 405
    errno = errno.EINVAL
    code_domain = "storage-proxy"
    code_operation = "request"
    code_detail = "bad-request"


class PayloadTooLarge(GatewayError):
    kind = "payload-too-large"
    title = "Request body too large"
    status = 413
    errno = errno.E2BIG
    code_domain = "storage-proxy"
    code_operation = "request"
    code_detail = "bad-request"


class VolumeRefused(GatewayError):
    """The volume cannot be served as it is (old layout, lease held elsewhere, newer format)."""

    kind = "volume/refused"
    title = "Volume cannot be served"
    status = 409
    errno = errno.EBUSY
    code_domain = "storage"
    code_detail = "unavailable"


class BackendFailure(GatewayError):
    """The storage's quota mechanism failed; the scope was left as it was."""

    kind = "backend/failure"
    title = "The storage backend failed"
    status = 502
    errno = errno.EIO


class InvalidSubpath(InvalidParameters):
    """A subpath that is absolute, leaves its vfolder (`..`, a symlink out) or is malformed."""

    kind = "subpath/invalid"  # the storage proxy's own type (its InvalidSubpathError)
    title = "Invalid Subpath"
    code_domain = "vfolder"


class Deprecated(GatewayError):
    """A route the storage proxy keeps only to refuse: per-vfolder quotas (`/volume/quota`)
    gave way to quota scopes. The storage proxy answers 400 with that reason; so do we."""

    kind = "api/deprecated"
    title = "Deprecated API"
    status = 400
    errno = errno.EOPNOTSUPP
    code_detail = "deprecated"


class VolumeUnavailable(GatewayError):
    """The backing volume (or the mount) does not answer within the deadline."""

    kind = "volume/unavailable"
    title = "Volume temporarily unavailable"
    status = 503
    errno = errno.EIO
    code_domain = "storage"

"""The client API's refusals, as problem+json types beside the control socket's."""

from __future__ import annotations

import errno

from fusegw.errors import GatewayError
from fusegw.ledger.usage import QuotaExceeded


class TokenInvalid(GatewayError):
    """Not a token this gateway signed (forged, truncated, another secret, no `exp`)."""

    kind = "invalid-token"
    title = "Invalid token"
    status = 401
    errno = errno.EACCES


class TokenExpired(TokenInvalid):
    kind = "token-expired"
    title = "The token has expired"


class TokenMismatch(GatewayError):
    """A genuine token used for what it was not issued for (another op or volume)."""

    kind = "token-mismatch"
    title = "The token does not allow this"
    status = 403
    errno = errno.EPERM


class NoSuchUploadSession(GatewayError):
    kind = "no-such-upload-session"
    title = "No such upload session"
    status = 404
    errno = errno.ENOENT


class UploadConflict(GatewayError):
    """tus: the client's `Upload-Offset` is not where the upload is (or a PATCH is running)."""

    kind = "upload-offset-mismatch"
    title = "Upload-Offset does not match the upload"
    status = 409
    errno = errno.EINVAL


class UploadTooLarge(GatewayError):
    """More bytes than the token's `size` (tus: past `Upload-Length`)."""

    kind = "upload-too-large"
    title = "More data than the upload's size"
    status = 413
    errno = errno.EFBIG


class UploadQuotaExceeded(QuotaExceeded):
    """The scope's limit, for an upload: 413, which tus clients do not retry (the web UI's
    tus-js-client retries 409, which is the ledger's own status for this)."""

    status = 413


class UnsupportedMediaType(GatewayError):
    kind = "unsupported-media-type"
    title = "PATCH bodies must be application/offset+octet-stream"
    status = 415
    errno = errno.EINVAL


class TusVersionUnsupported(GatewayError):
    kind = "tus-version-unsupported"
    title = "Only tus 1.0.0 is spoken here"
    status = 412
    errno = errno.EINVAL


class ClientAPIDisabled(GatewayError):
    kind = "client-api-disabled"
    title = "The client API is not configured on this gateway"
    status = 409
    errno = errno.ENOTSUP

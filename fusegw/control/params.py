"""Validation of request parameters: each bad field becomes a 400 naming that field."""

from __future__ import annotations

from typing import Any

from backends import QuotaLimits
from fusegw.errors import InvalidParameters
from fusegw.ids import QuotaScopeID, VFolderID

MAX_SIZE = 2**63 - 1
LIMIT_FIELDS = ("limit_bytes", "limit_inodes")


def require(params: dict[str, Any], name: str) -> Any:
    if name not in params:
        raise InvalidParameters(f"missing parameter {name!r}", data={name: "required"})
    return params[name]


def text(params: dict[str, Any], name: str) -> str:
    value = require(params, name)
    if not isinstance(value, str) or not value:
        raise InvalidParameters(f"{name} must be a non-empty string", data={name: "not a string"})
    return value


def qsid(params: dict[str, Any]) -> QuotaScopeID:
    return QuotaScopeID.parse(require(params, "qsid"))


def vfid(params: dict[str, Any]) -> VFolderID:
    return VFolderID.parse(require(params, "vfid"))


def size(value: Any, name: str) -> int:
    """A byte or inode count: a non-negative integer that fits in 63 bits; null is 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameters(f"{name} must be an integer", data={name: "not an integer"})
    if value < 0 or value > MAX_SIZE:
        raise InvalidParameters(f"{name} out of range 0..2^63-1", data={name: "out of range"})
    return value


def options(params: dict[str, Any], required: bool) -> dict[str, Any]:
    opts = params.get("options")
    if opts is None:
        if required:
            raise InvalidParameters("missing parameter 'options'", data={"options": "required"})
        return {}
    if not isinstance(opts, dict):
        raise InvalidParameters("options must be an object", data={"options": "not an object"})
    return opts


def limit_changes(opts: dict[str, Any], required: bool) -> dict[str, int]:
    """The limits an `options` object sets; unknown keys are refused so typos do not pass."""
    unknown = sorted(set(opts) - set(LIMIT_FIELDS))
    if unknown:
        raise InvalidParameters(f"unknown options {unknown}", data={k: "unknown" for k in unknown})
    changes = {k: size(opts[k], k) for k in LIMIT_FIELDS if k in opts}
    if required and not changes:
        raise InvalidParameters("options must set limit_bytes or limit_inodes",
                                data={"options": "no limit given"})
    return changes


def flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if isinstance(value, str) and value in ("true", "false", "1", "0"):  # from a query string
        return value in ("true", "1")
    if not isinstance(value, bool):
        raise InvalidParameters(f"{name} must be a boolean", data={name: "not a boolean"})
    return value


def initial_limit(opts: dict[str, Any]) -> int:
    """`options.initial_max_size_for_quota_scope` of POST /folder/create (0: unlimited)."""
    key = "initial_max_size_for_quota_scope"
    unknown = sorted(set(opts) - {key})
    if unknown:
        raise InvalidParameters(f"unknown options {unknown}", data={k: "unknown" for k in unknown})
    return size(opts.get(key), key)


def limits(opts: dict[str, Any]) -> QuotaLimits:
    return QuotaLimits(**limit_changes(opts, required=False))

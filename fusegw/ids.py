"""Quota scope and vfolder identifiers, exactly as the storage proxy spells them.

`user:<uuid>` and `project:<uuid>` name a quota scope; its directory on the volume is the UUID's
32-digit hex with no type prefix. A vfolder ID is `<quota scope id>/<folder uuid hex>`.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from fusegw.errors import InvalidParameters
from fusegw.layout import vfolder_relpath


class QuotaScopeType(enum.StrEnum):
    USER = "user"
    PROJECT = "project"


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidParameters(f"{field} must be a string", data={field: "not a string"})
    return value


def _parse_uuid(text: str, field: str) -> uuid.UUID:
    try:
        # uuid.UUID accepts braces and "urn:uuid:"; the storage proxy accepts hex or hyphenated.
        if not text or text.startswith(("{", "urn:")):
            raise ValueError(text)
        return uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        raise InvalidParameters(
            f"{field} is not a UUID: {text!r}", data={field: "not a UUID"}
        ) from None


@dataclass(frozen=True, slots=True)
class QuotaScopeID:
    scope_type: QuotaScopeType
    scope_uuid: uuid.UUID

    @classmethod
    def parse(cls, text: object, field: str = "qsid") -> QuotaScopeID:
        """Split on the first `:`; the type is case-insensitive, the rest must be a UUID."""
        kind, sep, rest = _text(text, field).partition(":")
        if not sep:
            raise InvalidParameters(
                f"{field} must look like user:<uuid> or project:<uuid>", data={field: "no type"}
            )
        try:
            scope_type = QuotaScopeType(kind.lower())
        except ValueError:
            raise InvalidParameters(
                f"unknown quota scope type {kind!r}", data={field: "unknown scope type"}
            ) from None
        return cls(scope_type, _parse_uuid(rest, field))

    @property
    def pathname(self) -> str:
        """The scope's directory name on the volume: the UUID's hex, no type prefix."""
        return self.scope_uuid.hex

    def __str__(self) -> str:
        return f"{self.scope_type.value}:{self.scope_uuid}"


@dataclass(frozen=True, slots=True)
class VFolderID:
    quota_scope_id: QuotaScopeID
    folder_id: uuid.UUID

    @classmethod
    def parse(cls, text: object, field: str = "vfid") -> VFolderID:
        qsid, sep, fid = _text(text, field).rpartition("/")
        if not sep:
            raise InvalidParameters(
                f"{field} must look like <quota scope id>/<folder uuid hex>", data={field: "no /"}
            )
        return cls(QuotaScopeID.parse(qsid, field), _parse_uuid(fid, field))

    @property
    def hex(self) -> str:
        return self.folder_id.hex

    def relpath(self) -> str:
        """Path of the vfolder below the volume root (layout v3)."""
        return vfolder_relpath(self.quota_scope_id.pathname, self.hex)

    def __str__(self) -> str:
        return f"{self.quota_scope_id}/{self.hex}"

"""The one small interface every quota backend implements."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """0 means unlimited, as in XFS and CephFS."""

    limit_bytes: int = 0
    limit_inodes: int = 0


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    used_bytes: int | None
    limit_bytes: int | None
    used_inodes: int | None = None
    limit_inodes: int | None = None


class QuotaBackend(abc.ABC):
    """Create, describe, update, unset and delete a quota scope's directory and native limit.

    `enforces_bytes`/`enforces_inodes` tell the gateway what the storage refuses by itself;
    what it does not, the gateway's ledger enforces.
    """

    name: ClassVar[str]
    enforces_bytes: ClassVar[bool] = False
    enforces_inodes: ClassVar[bool] = False
    capabilities: ClassVar[frozenset[str]] = frozenset({"vfolder", "quota"})

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None) -> None:
        self.volume = volume
        self.options = dict(options or {})

    def scope_path(self, pathname: str) -> Path:
        return self.volume / pathname

    @abc.abstractmethod
    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None: ...

    @abc.abstractmethod
    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        """Native figures, or None where the gateway's own ledger is the source."""

    @abc.abstractmethod
    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None: ...

    @abc.abstractmethod
    async def unset_scope(self, pathname: str) -> None: ...

    @abc.abstractmethod
    async def delete_scope(self, pathname: str) -> None: ...

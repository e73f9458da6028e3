"""`vfs`: plain directories. The storage enforces nothing; the gateway's ledger does it all."""

from __future__ import annotations

import os

from backends.base import QuotaBackend, QuotaLimits, QuotaUsage


class VFSBackend(QuotaBackend):
    name = "vfs"
    capabilities = frozenset({"vfolder", "quota", "fast-size"})

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        os.mkdir(self.scope_path(pathname), 0o755)

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        return None

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        return None

    async def unset_scope(self, pathname: str) -> None:
        return None

    async def delete_scope(self, pathname: str) -> None:
        os.rmdir(self.scope_path(pathname))


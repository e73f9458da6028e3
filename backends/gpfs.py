"""`gpfs`: IBM Storage Scale (GPFS) filesets and fileset quotas over the management API.

(Being written: issue 14.)
"""

from __future__ import annotations

from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage


class GPFSBackend(QuotaBackend):
    name = "gpfs"
    enforces_bytes = True
    network = True
    option_keys = frozenset({
        "gpfs_endpoint",
        "gpfs_username",
        "gpfs_password",
        "gpfs_fs_name",
        "gpfs_owner",
        "gpfs_verify_ssl",
        "appliance_timeout",
    })

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        raise BackendError("gpfs: not implemented yet")

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        raise BackendError("gpfs: not implemented yet")

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        raise BackendError("gpfs: not implemented yet")

    async def unset_scope(self, pathname: str) -> None:
        raise BackendError("gpfs: not implemented yet")

    async def delete_scope(self, pathname: str) -> None:
        raise BackendError("gpfs: not implemented yet")

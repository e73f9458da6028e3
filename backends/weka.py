"""`weka`: WEKA directory quotas over the WEKA REST API.

(Being written: issue 14.)
"""

from __future__ import annotations

from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage


class WekaBackend(QuotaBackend):
    name = "weka"
    enforces_bytes = True
    network = True
    option_keys = frozenset({
        "weka_endpoint",
        "weka_username",
        "weka_password",
        "weka_organization",
        "weka_fs_name",
        "weka_verify_ssl",
        "appliance_timeout",
    })

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        raise BackendError("weka: not implemented yet")

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        raise BackendError("weka: not implemented yet")

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        raise BackendError("weka: not implemented yet")

    async def unset_scope(self, pathname: str) -> None:
        raise BackendError("weka: not implemented yet")

    async def delete_scope(self, pathname: str) -> None:
        raise BackendError("weka: not implemented yet")

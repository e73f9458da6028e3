"""`dellemc-onefs`: Dell PowerScale OneFS directory quotas over PAPI.

(Being written: issue 14.)
"""

from __future__ import annotations

from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage


class OneFSBackend(QuotaBackend):
    name = "dellemc-onefs"
    enforces_bytes = True
    network = True
    option_keys = frozenset({
        "dell_endpoint",
        "dell_admin",
        "dell_password",
        "dell_api_version",
        "dell_system_name",
        "appliance_timeout",
    })

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        raise BackendError("dellemc-onefs: not implemented yet")

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        raise BackendError("dellemc-onefs: not implemented yet")

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        raise BackendError("dellemc-onefs: not implemented yet")

    async def unset_scope(self, pathname: str) -> None:
        raise BackendError("dellemc-onefs: not implemented yet")

    async def delete_scope(self, pathname: str) -> None:
        raise BackendError("dellemc-onefs: not implemented yet")

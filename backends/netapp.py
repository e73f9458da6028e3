"""`netapp`: NetApp ONTAP qtrees and tree quota rules over ONTAP REST.

(Being written: issue 14.)
"""

from __future__ import annotations

from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage


class NetAppBackend(QuotaBackend):
    name = "netapp"
    enforces_bytes = True
    network = True
    option_keys = frozenset({
        "netapp_ontap_endpoint",
        "netapp_ontap_user",
        "netapp_ontap_password",
        "netapp_svm",
        "netapp_volume_name",
        "appliance_timeout",
    })

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        raise BackendError("netapp: not implemented yet")

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        raise BackendError("netapp: not implemented yet")

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        raise BackendError("netapp: not implemented yet")

    async def unset_scope(self, pathname: str) -> None:
        raise BackendError("netapp: not implemented yet")

    async def delete_scope(self, pathname: str) -> None:
        raise BackendError("netapp: not implemented yet")

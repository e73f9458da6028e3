"""`netapp`: NetApp ONTAP qtrees and tree quota rules over ONTAP REST; ONTAP enforces.

Each quota scope is a qtree of the volume `netapp_volume_name` (in SVM `netapp_svm`, or the
one SVM that has a volume by that name), named after the scope's pathname, so it appears as
the scope directory in the NFS export the gateway serves from. A byte limit is a tree quota
rule on that qtree (`space.hard_limit`, with `soft_limit` set to the same, as the storage proxy
sets it), and quotas are switched on for the volume the first time a rule is made (ONTAP's
"quota already on" answer to that is not an error). ONTAP refuses writes past the hard limit
itself: the NFS client's EDQUOT passes through the gateway. Inode limits stay with the
gateway's ledger. Figures come from the volume's quota report (`space.used.total`: blocks
used, `space.hard_limit`).

ONTAP answers most changes with 202 and a job: every job is polled to `success` or `failure`
with a deadline, and a failed job's own message becomes the error. Requests that create a
named object (a qtree, a tree rule) are safe to send again after a connection error or a 5xx:
ONTAP refuses a second qtree of one name or a second tree rule for one qtree, so a retry can
never make a duplicate.

Unlike the storage proxy, which refuses `unset`, unsetting a limit deletes the rule; deleting a
scope deletes the qtree (and any rule ONTAP left behind). A create whose rule cannot be made
deletes the qtree it made; an update that made a rule but could not switch quotas on deletes
that rule: a failed operation leaves the scope as it was.

Options (the storage proxy's names): `netapp_ontap_endpoint` (https://cluster-mgmt),
`netapp_ontap_user`, `netapp_ontap_password`, `netapp_volume_name`, `netapp_svm`; the proxy's
`netapp_nfs_host` and `netapp_xcp_cmd` are accepted (so its configuration carries over) and
unused. fusegw's own: `netapp_verify_ssl` (default true; the storage proxy never verifies, so a
cluster with a self-signed certificate needs its CA in SSL_CERT_FILE or this set to false) and
`appliance_timeout` (seconds, the read timeout, default 30).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import trio

from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage
from backends.rest import READ_TIMEOUT, ApplianceClient, ApplianceError, truthy

log = logging.getLogger("backends.netapp")

APPLIANCE = "NetApp ONTAP"
QUOTA_ALREADY_ON = "5308507"  # the volume's quotas are already on (storage proxy: "pass")
# ONTAP's generic error codes for a refused input: the status the gateway answers then
GENERIC_STATUS = {"1": 409, "2": 400, "4": 404}
JOB_DEADLINE = 120.0
VISIBLE_DEADLINE = 10.0  # a new qtree shows in the NFS mount (attribute caches) within this
QTREE_PERMISSIONS = 755  # ONTAP's unix_permissions: octal digits written as a decimal number
REQUIRED = ("netapp_ontap_endpoint", "netapp_ontap_user", "netapp_ontap_password",
            "netapp_volume_name")


class NetAppBackend(QuotaBackend):
    """Scopes are qtrees with tree quota rules; ONTAP enforces bytes."""

    name = "netapp"
    enforces_bytes = True
    network = True
    option_keys = frozenset({
        "netapp_ontap_endpoint",
        "netapp_ontap_user",
        "netapp_ontap_password",
        "netapp_svm",
        "netapp_volume_name",
        "netapp_nfs_host",
        "netapp_xcp_cmd",
        "netapp_verify_ssl",
        "appliance_timeout",
    })

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(volume, options)
        self._client: ApplianceClient | None = None
        self._lock = trio.Lock()
        self.volume_uuid = ""
        self.svm_uuid = ""
        self.quota_on = False

    # -- the appliance -----------------------------------------------------------------------

    def _option(self, key: str) -> str:
        value = self.options.get(key)
        if value is None or str(value) == "":
            raise BackendError(f"netapp: option {key} is required", errno.EINVAL)
        return str(value)

    async def _api(self) -> ApplianceClient:
        """The client, made on first use inside the trio loop, with the volume resolved."""
        async with self._lock:
            if self._client is None:
                endpoint = self._option("netapp_ontap_endpoint").rstrip("/")
                try:
                    timeout = float(self.options.get("appliance_timeout", READ_TIMEOUT))
                except (TypeError, ValueError):
                    raise BackendError("netapp: appliance_timeout must be a number of "
                                       "seconds", errno.EINVAL) from None
                auth = httpx.BasicAuth(self._option("netapp_ontap_user"),
                                       self._option("netapp_ontap_password"))
                self._client = ApplianceClient(
                    APPLIANCE, endpoint, truthy(self.options.get("netapp_verify_ssl")),
                    auth=auth, headers={"Accept": "application/json"}, timeout=timeout)
            if not self.volume_uuid:
                await self._resolve_volume(self._client)
            return self._client

    async def _resolve_volume(self, api: ApplianceClient) -> None:
        name = self._option("netapp_volume_name")
        params = {"name": name, "fields": "uuid,name,svm,quota.enabled"}
        svm = self.options.get("netapp_svm")
        if svm:
            params["svm.name"] = str(svm)
        records = (await api.request("GET", "/api/storage/volumes", params=params)
                   ).json().get("records") or []
        where = f" in SVM {svm}" if svm else ""
        if not records:
            raise ApplianceError(APPLIANCE, f"no volume {name}{where}", 404, errno.ENOENT)
        if len(records) > 1:
            svms = ", ".join(sorted(str(r.get("svm", {}).get("name")) for r in records))
            raise ApplianceError(APPLIANCE, f"volume {name} exists in several SVMs ({svms}): "
                                 "set netapp_svm", 400, errno.EINVAL)
        record = records[0]
        self.svm_uuid = str(record["svm"]["uuid"])
        self.quota_on = bool(record.get("quota", {}).get("enabled"))
        self.volume_uuid = str(record["uuid"])

    async def _job(self, api: ApplianceClient, response: httpx.Response, what: str,
                   allowed: tuple[str, ...] = ()) -> None:
        """Wait for the job a 202 answer started; its failure (unless `allowed`) raises."""
        if response.status_code != 202:
            return  # done synchronously
        job = (response.json() or {}).get("job") or {}
        uuid = str(job.get("uuid", ""))
        href = str(job.get("_links", {}).get("self", {}).get("href", ""))
        path = href if href.startswith("/api/") else f"/api/cluster/jobs/{uuid}"
        final: dict[str, Any] = {}

        async def done() -> bool:
            record = (await api.request("GET", path,
                                        params={"fields": "state,message,code,error"})).json()
            if record.get("state") in ("success", "failure"):
                final.update(record)
                return True
            return False

        await api.poll(done, f"{what} (job {uuid})", JOB_DEADLINE)
        if final["state"] == "success":
            return
        error = final.get("error") or {}
        code = str(error.get("code", final.get("code", "")))
        message = error.get("message") or final.get("message") or "failed"
        if code in allowed:
            log.debug("%s: job %s answered %s (%s): fine", what, uuid, code, message)
            return
        raise ApplianceError(APPLIANCE, f"{what} failed: {message} (code {code})",
                             GENERIC_STATUS.get(code, 502),
                             errno.ENOENT if code == "4" else errno.EIO)

    async def _qtree_id(self, api: ApplianceClient, pathname: str) -> int | None:
        records = (await api.request("GET", "/api/storage/qtrees", params={
            "volume.uuid": self.volume_uuid, "name": pathname, "fields": "id,name"},
        )).json().get("records") or []
        return int(records[0]["id"]) if records else None

    async def _rule(self, api: ApplianceClient, pathname: str) -> dict[str, Any] | None:
        records = (await api.request("GET", "/api/storage/quota/rules", params={
            "volume.uuid": self.volume_uuid, "type": "tree", "qtree.name": pathname,
            "fields": "uuid,space"},
        )).json().get("records") or []
        return dict(records[0]) if records else None

    async def _create_rule(self, api: ApplianceClient, pathname: str, limit: int) -> None:
        """A tree rule, then quotas on for the volume if they were not; the rule goes again
        if quotas cannot be switched on."""
        response = await api.request("POST", "/api/storage/quota/rules", json={
            "svm": {"uuid": self.svm_uuid}, "volume": {"uuid": self.volume_uuid},
            "type": "tree", "qtree": {"name": pathname},
            "space": {"hard_limit": limit, "soft_limit": limit}}, repeatable=True)
        await self._job(api, response, f"creating the quota rule of qtree {pathname}")
        if self.quota_on:
            return
        try:
            response = await api.request("PATCH", f"/api/storage/volumes/{self.volume_uuid}",
                                         json={"quota": {"enabled": True}}, repeatable=True)
            await self._job(api, response, "switching quotas on", (QUOTA_ALREADY_ON,))
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self._delete_rule(api, pathname)
                except BackendError as e:
                    log.error("undo after failing to switch quotas on: deleting the rule of "
                              "qtree %s: %s", pathname, e)
            raise
        self.quota_on = True

    async def _delete_rule(self, api: ApplianceClient, pathname: str) -> None:
        rule = await self._rule(api, pathname)
        if rule is not None:
            response = await api.request("DELETE", f"/api/storage/quota/rules/{rule['uuid']}")
            await self._job(api, response, f"deleting the quota rule of qtree {pathname}")

    async def _delete_qtree(self, api: ApplianceClient, pathname: str) -> None:
        qtree = await self._qtree_id(api, pathname)
        if qtree is not None:
            response = await api.request("DELETE",
                                         f"/api/storage/qtrees/{self.volume_uuid}/{qtree}")
            await self._job(api, response, f"deleting qtree {pathname}")

    async def _visible(self, pathname: str) -> None:
        """Wait until the new qtree shows in the mount (listing the parent, which NFS does
        not serve from a stale attribute cache)."""
        path = self.scope_path(pathname)

        def seen() -> bool:
            try:
                return any(e.name == pathname and e.is_dir() for e in os.scandir(path.parent))
            except OSError:
                return False

        with trio.move_on_after(VISIBLE_DEADLINE):
            while not await trio.to_thread.run_sync(seen):
                await trio.sleep(0.1)
            return
        raise BackendError(f"netapp: qtree {pathname} was created but {path} did not appear "
                           f"within {VISIBLE_DEADLINE:g} s (is the volume's export mounted "
                           "there?)", errno.ENOENT)

    # -- QuotaBackend ------------------------------------------------------------------------

    async def check_volume(self) -> None:
        """Refuse to start without the options, or when the appliance cannot name the
        volume (unreachable, wrong credentials, no such volume or SVM)."""
        for key in REQUIRED:
            self._option(key)
        await self._api()

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """The qtree, then (with a limit) its rule; a failure after the qtree was asked for
        deletes it again, unless ONTAP said it was there already."""
        _check(limits)
        api = await self._api()
        try:
            response = await api.request("POST", "/api/storage/qtrees", json={
                "svm": {"uuid": self.svm_uuid}, "volume": {"uuid": self.volume_uuid},
                "name": pathname, "security_style": "unix",
                "unix_permissions": QTREE_PERMISSIONS,
                "user": {"id": os.getuid()}, "group": {"id": os.getgid()}}, repeatable=True)
            await self._job(api, response, f"creating qtree {pathname}")
            await self._visible(pathname)
            if limits.limit_bytes:
                await self._create_rule(api, pathname, limits.limit_bytes)
        except BaseException as e:
            if not (isinstance(e, ApplianceError) and e.status == 409):
                with trio.CancelScope(shield=True):
                    await self._undo_create(api, pathname)
            raise

    async def _undo_create(self, api: ApplianceClient, pathname: str) -> None:
        """Delete the qtree a failed create may have made; only while it is empty, as a new
        one is (ONTAP deletes a qtree with everything in it)."""
        try:
            if await trio.to_thread.run_sync(os.listdir, self.scope_path(pathname)):
                log.error("undo after failed create: qtree %s is not empty; left as it is",
                          pathname)
                return
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("undo after failed create: listing qtree %s: %s", pathname, e)
            return
        try:
            await self._delete_qtree(api, pathname)
        except BackendError as e:
            log.error("undo after failed create: deleting qtree %s: %s", pathname, e)

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        """The quota report's figures; None (the ledger's) where ONTAP has no report for the
        qtree (no rule, or quotas still initialising)."""
        if not os.path.isdir(self.scope_path(pathname)):
            return None
        api = await self._api()
        records = (await api.request("GET", "/api/storage/quota/reports", params={
            "volume.uuid": self.volume_uuid, "type": "tree", "qtree.name": pathname,
            "fields": "space"},
        )).json().get("records") or []
        if not records:
            return None
        space = records[0].get("space") or {}
        used = _bytes(space.get("used", {}).get("total"))
        limit = _bytes(space.get("hard_limit"))
        return QuotaUsage(used_bytes=used, limit_bytes=limit or None)

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """PATCH the rule, make one where there is none, delete it for no limit."""
        _check(limits)
        api = await self._api()
        rule = await self._rule(api, pathname)
        if not limits.limit_bytes:
            if rule is not None:
                await self._delete_rule(api, pathname)
            return
        if rule is None:
            await self._create_rule(api, pathname, limits.limit_bytes)
            return
        response = await api.request("PATCH", f"/api/storage/quota/rules/{rule['uuid']}",
                                     json={"space": {"hard_limit": limits.limit_bytes,
                                                     "soft_limit": limits.limit_bytes}},
                                     repeatable=True)
        await self._job(api, response, f"changing the quota rule of qtree {pathname}")

    async def unset_scope(self, pathname: str) -> None:
        api = await self._api()
        await self._delete_rule(api, pathname)

    async def delete_scope(self, pathname: str) -> None:
        """Refuse (ENOTEMPTY) while the scope holds entries (ONTAP would delete them with the
        qtree); then the qtree, any rule left, and a plain directory left there."""
        path = self.scope_path(pathname)
        try:
            if os.listdir(path):
                raise BackendError(f"quota scope directory {path} is not empty",
                                   errno.ENOTEMPTY)
        except FileNotFoundError:
            pass
        api = await self._api()
        await self._delete_qtree(api, pathname)
        await self._delete_rule(api, pathname)
        self.remove_empty_scope_dir(pathname)


def _check(limits: QuotaLimits) -> None:
    if limits.limit_bytes < 0 or limits.limit_inodes < 0:
        raise BackendError(f"negative limit: {limits}", errno.EINVAL)


def _bytes(value: Any) -> int | None:
    """A figure from a report; None where ONTAP gives none (or a negative one, as the
    storage proxy saw it do)."""
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None

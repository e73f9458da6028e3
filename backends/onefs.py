"""`dellemc-onefs`: Dell PowerScale OneFS directory quotas over PAPI.

A scope is a directory on the volume (made by the gateway, as the storage proxy makes it over
NFS) with an enforced OneFS *directory quota* on its `/ifs` path: `POST
/platform/{dell_api_version}/quota/quotas` with `thresholds.hard`, `thresholds_on:
fslogicalsize`, `include_snapshots: false` (the storage proxy's request). OneFS enforces the
hard threshold (the NFS client's EDQUOT passes through); `describe_scope` reads the quota's
`usage.fslogical` (logical bytes: file sizes) and `thresholds.hard`. Inode limits are the
gateway's: a directory quota has no file-count threshold.

Paths. The volume is the appliance's `dell_ifs_path` mounted locally (the storage proxy's
`dell_ifs_path`): the scope `<volume>/<pathname>` is `<dell_ifs_path>/<pathname>` on the
appliance. `dell_system_name` is accepted for configurations that carry it (the storage
proxy only uses it for workload statistics).

Quota ids. OneFS names a quota by an opaque id. The gateway keeps scope -> id in
`<volume>/.fusegw/dellemc-onefs.json` (written atomically), adopts the id of a `.quota_id`
file the storage proxy left in a scope directory, and when it knows no id (or the one it
knows is gone) finds the quota by listing `?path=<ifs path>&type=directory`: a scope is
described from its path, never answered 404 as the storage proxy does, so the file is a
cache and a lost one costs a listing.

Auth is HTTP basic on every request, as the storage proxy does it (`dell_admin`, alias
`dell_username`; `dell_password`). The storage proxy never verifies TLS; here verification is
on unless `dell_verify_ssl = false` (logged as a warning by ApplianceClient).

Failure leaves the scope as it was: a failed create removes the quota it made (or, when the
answer was lost, the quota found on the path) and the directory; a failed delete puts the
quota back. The POST that creates a quota is safe to repeat: a duplicate is refused with
AEC_CONFLICT and the existing quota is adopted instead.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import httpx
import trio

from backends.atomic import write_atomic
from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage
from backends.rest import READ_TIMEOUT, ApplianceClient, ApplianceError, truthy

log = logging.getLogger("backends.onefs")

APPLIANCE = "OneFS"
STATE_FILE = "dellemc-onefs.json"
STATE_DIR = ".fusegw"  # fusegw.layout.STATE_DIR; backends do not import fusegw
QUOTA_ID_FILE = ".quota_id"  # where the storage proxy keeps a scope's quota id
DEFAULT_API_VERSION = "12"  # the storage proxy's OneFSClient default


class OneFSBackend(QuotaBackend):
    """Scopes are directories with an enforced OneFS directory quota; OneFS enforces bytes."""

    name = "dellemc-onefs"
    enforces_bytes = True
    network = True
    option_keys = frozenset({
        "dell_endpoint",
        "dell_admin",
        "dell_username",  # the storage proxy's other name for dell_admin
        "dell_password",
        "dell_api_version",
        "dell_ifs_path",
        "dell_system_name",
        "dell_verify_ssl",
        "appliance_timeout",
    })
    scope_hidden_names: ClassVar[frozenset[str]] = frozenset({QUOTA_ID_FILE})
    """Names in a scope directory that belong to the storage, not to users: the gateway should
    neither show nor count them (needs the core change described in the issue-14 report)."""

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(volume, options)
        self._client: ApplianceClient | None = None
        self._ids: dict[str, str] | None = None
        self._state_lock: trio.Lock | None = None

    # -- options -----------------------------------------------------------------------------

    def _option(self, key: str, *aliases: str) -> str:
        for name in (key, *aliases):
            value = self.options.get(name)
            if value is not None and str(value) != "":
                return str(value)
        raise BackendError(f"{self.name}: option {key} is required", errno.EINVAL)

    @property
    def api_version(self) -> str:
        value = self.options.get("dell_api_version")
        return str(value) if value not in (None, "") else DEFAULT_API_VERSION

    @property
    def ifs_path(self) -> PurePosixPath:
        path = PurePosixPath(self._option("dell_ifs_path"))
        if not path.is_absolute():
            raise BackendError(f"{self.name}: dell_ifs_path {path} is not an absolute /ifs "
                               "path", errno.EINVAL)
        return path

    def appliance_path(self, pathname: str) -> str:
        """The scope's directory as OneFS names it."""
        return str(self.ifs_path / pathname)

    def _quotas(self) -> str:
        return f"/platform/{self.api_version}/quota/quotas"

    def client(self) -> ApplianceClient:
        """Made on first use (inside the trio loop); lives as long as the daemon."""
        if self._client is None:
            endpoint = self._option("dell_endpoint").rstrip("/")
            user = self._option("dell_admin", "dell_username")
            password = self._option("dell_password")
            timeout = float(self.options.get("appliance_timeout") or READ_TIMEOUT)
            self._client = ApplianceClient(
                f"{APPLIANCE} {endpoint}", endpoint,
                verify=truthy(self.options.get("dell_verify_ssl"), True),
                auth=httpx.BasicAuth(user, password), timeout=timeout,
                headers={"Accept": "application/json"})
        return self._client

    # -- the id file ---------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.volume / STATE_DIR / STATE_FILE

    def _load_ids(self) -> dict[str, str]:
        if self._ids is None:
            ids: dict[str, str] = {}
            try:
                data = json.loads(self.state_path.read_bytes())
                raw = data.get("quotas") if isinstance(data, dict) else None
                if not isinstance(raw, dict):
                    raise ValueError("no quotas object")
                ids = {str(k): str(v) for k, v in raw.items() if isinstance(v, str) and v}
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as e:  # a cache: the paths find the quotas again
                log.warning("%s unreadable (%s); quota ids are found by path", self.state_path,
                            e)
            self._ids = ids
        return self._ids

    async def _store_id(self, pathname: str, quota_id: str | None) -> None:
        """Record (or, with None, forget) a scope's quota id durably; OSError when the file
        cannot be written, the old content kept on disk and in memory."""
        if self._state_lock is None:
            self._state_lock = trio.Lock()
        async with self._state_lock:
            ids = dict(self._load_ids())
            if quota_id is None:
                if ids.pop(pathname, None) is None:
                    return
            else:
                if ids.get(pathname) == quota_id:
                    return
                ids[pathname] = quota_id
            body = json.dumps({"quotas": ids}, indent=1, sort_keys=True).encode() + b"\n"

            def write() -> None:
                self.state_path.parent.mkdir(mode=0o700, exist_ok=True)
                write_atomic(self.state_path, body, 0o600)

            await trio.to_thread.run_sync(write)
            self._ids = ids

    async def _forget_id(self, pathname: str) -> None:
        """Forget a deleted quota's id; a stale id left by a failed write costs a 404 and a
        listing later, so the failure is logged, not raised."""
        try:
            await self._store_id(pathname, None)
        except OSError as e:
            log.warning("could not update %s scope=%s error=%s", self.state_path, pathname,
                        e.strerror)

    def _proxy_id(self, pathname: str) -> str | None:
        try:
            text = (self.scope_path(pathname) / QUOTA_ID_FILE).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("unreadable %s in scope %s: %s", QUOTA_ID_FILE, pathname, e)
            return None
        return text or None

    async def _known_id(self, pathname: str) -> str | None:
        """The id the gateway keeps, else the storage proxy's `.quota_id` (adopted)."""
        quota_id = self._load_ids().get(pathname)
        if quota_id is not None:
            return quota_id
        quota_id = await trio.to_thread.run_sync(self._proxy_id, pathname)
        if quota_id is not None:
            log.info("adopting the storage proxy's quota id scope=%s id=%s", pathname, quota_id)
            await self._remember(pathname, quota_id)
        return quota_id

    async def _remember(self, pathname: str, quota_id: str) -> None:
        try:
            await self._store_id(pathname, quota_id)
        except OSError as e:
            log.warning("could not record quota id in %s scope=%s error=%s", self.state_path,
                        pathname, e.strerror)

    def _drop_proxy_id(self, pathname: str) -> None:
        try:
            os.unlink(self.scope_path(pathname) / QUOTA_ID_FILE)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:
            raise BackendError(f"remove {QUOTA_ID_FILE} of scope {pathname}: {e.strerror}",
                               e.errno or errno.EIO) from None

    # -- PAPI ----------------------------------------------------------------------------------

    async def _get(self, quota_id: str) -> dict[str, Any] | None:
        """The quota, or None when OneFS knows no such id."""
        r = await self.client().request("GET", f"{self._quotas()}/{quota_id}", ok=(404,))
        if r.status_code == 404:
            return None
        return _first_quota(self.client(), r)

    async def _find(self, pathname: str) -> dict[str, Any] | None:
        """The directory quota on the scope's path, by listing; None if there is none."""
        path = self.appliance_path(pathname)
        r = await self.client().request("GET", self._quotas(),
                                        params={"path": path, "type": "directory"})
        quotas = _json(self.client(), r).get("quotas") or []
        found = [q for q in quotas if isinstance(q, dict) and q.get("path") == path
                 and q.get("type") == "directory" and not q.get("persona")]
        found.sort(key=lambda q: (bool(q.get("include_snapshots")), not q.get("enforced")))
        return found[0] if found else None

    async def _lookup(self, pathname: str) -> dict[str, Any] | None:
        """The scope's quota: by its known id, else (or when that id is gone) by path; a
        quota found by path has its id recorded."""
        quota_id = await self._known_id(pathname)
        if quota_id is not None:
            quota = await self._get(quota_id)
            if quota is not None:
                return quota
            log.warning("quota id %s of scope %s is gone on %s; looking by path", quota_id,
                        pathname, APPLIANCE)
        quota = await self._find(pathname)
        if quota is not None and quota.get("id"):
            await self._remember(pathname, str(quota["id"]))
        elif quota_id is not None:
            await self._forget_id(pathname)
        return quota

    async def _set_hard(self, quota_id: str, hard: int) -> None:
        await self.client().request("PUT", f"{self._quotas()}/{quota_id}",
                                    json={"thresholds": {"hard": hard}})

    async def _create_quota(self, pathname: str, hard: int) -> str:
        """POST the directory quota; one already on the path (a retried POST whose answer
        was lost, a leftover) is refused with 409 and adopted instead. Its id."""
        body = {"path": self.appliance_path(pathname), "type": "directory",
                "thresholds": {"hard": hard}, "thresholds_on": "fslogicalsize",
                "enforced": True, "include_snapshots": False}
        try:
            r = await self.client().request("POST", self._quotas(), json=body,
                                            repeatable=True)
        except ApplianceError as e:
            if e.status != 409:
                raise
            existing = await self._find(pathname)
            if existing is None or not existing.get("id"):
                raise
            quota_id = str(existing["id"])
            log.info("adopting the quota already on %s id=%s", body["path"], quota_id)
            await self._set_hard(quota_id, hard)
            return quota_id
        new_id = _json(self.client(), r).get("id")
        if not isinstance(new_id, str) or not new_id:
            raise ApplianceError(self.client().appliance, f"no quota id in the answer to "
                                 f"POST {self._quotas()}: {r.text[:200]}")
        return new_id

    async def _delete_quota(self, quota_id: str) -> None:
        await self.client().request("DELETE", f"{self._quotas()}/{quota_id}", ok=(404,))

    async def _new_quota(self, pathname: str, hard: int) -> str:
        """Create and record a quota; if recording fails, the quota goes again."""
        quota_id = await self._create_quota(pathname, hard)
        try:
            await self._store_id(pathname, quota_id)
        except OSError as e:
            with trio.CancelScope(shield=True):
                await self._undo(f"delete quota {quota_id}", self._delete_quota(quota_id))
            raise BackendError(f"cannot record the quota id in {self.state_path}: "
                               f"{e.strerror}", e.errno or errno.EIO) from None
        return quota_id

    async def _undo(self, what: str, step: Any) -> None:
        try:
            await step
        except (BackendError, OSError) as e:
            log.error("undo failed (%s): %s", what, e)

    async def _remove_quota(self, pathname: str, quota: dict[str, Any] | None = None
                            ) -> None:
        """DELETE the scope's quota (`quota`, else by its known id, else or when that is gone
        the one on its path; none is fine), forget its id and the storage proxy's file."""
        quota_id = str(quota["id"]) if quota and quota.get("id") else (
            await self._known_id(pathname))
        gone = quota_id is None
        if quota_id is not None:
            r = await self.client().request("DELETE", f"{self._quotas()}/{quota_id}",
                                            ok=(404,))
            gone = r.status_code == 404
        if gone:
            found = await self._find(pathname)
            if found is not None and found.get("id"):
                await self._delete_quota(str(found["id"]))
        await self._forget_all(pathname)

    async def _forget_all(self, pathname: str) -> None:
        await self._forget_id(pathname)
        await trio.to_thread.run_sync(self._drop_proxy_id, pathname)

    # -- QuotaBackend --------------------------------------------------------------------------

    async def check_volume(self) -> None:
        """The options the API needs are there (no call is made: the appliance may be away
        at start, and the gateway serves meanwhile); the id file is read."""
        self._option("dell_endpoint")
        self._option("dell_admin", "dell_username")
        self._option("dell_password")
        _ = self.ifs_path
        if not os.path.isdir(self.volume):
            raise BackendError(f"volume {self.volume} is not a directory", errno.ENOENT)
        await trio.to_thread.run_sync(self._load_ids)

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """mkdir, then the quota (none for an unlimited scope); on failure both go again."""
        _check(limits)
        path = self.scope_path(pathname)
        try:
            await trio.to_thread.run_sync(os.mkdir, path, 0o755)
        except OSError as e:
            raise BackendError(f"mkdir {path}: {e.strerror}", e.errno or errno.EIO) from None
        try:
            if limits.limit_bytes:
                await self._new_quota(pathname, limits.limit_bytes)
        except BaseException as e:
            with trio.CancelScope(shield=True):
                if not (isinstance(e, ApplianceError) and 400 <= e.status < 500):
                    # the answer may be lost while OneFS made the quota: remove what is there
                    await self._undo(f"remove the quota on {pathname}",
                                     self._remove_quota(pathname))
                await self._undo(f"rmdir {path}", trio.to_thread.run_sync(os.rmdir, path))
            raise

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        """OneFS's figures; None (the ledger's) when the scope has no quota. While OneFS's
        accounting is not ready (a QuotaScan running) the used bytes are the ledger's."""
        quota = await self._lookup(pathname)
        if quota is None:
            return None
        usage = quota.get("usage") or {}
        thresholds = quota.get("thresholds") or {}
        used = usage.get("fslogical")
        hard = thresholds.get("hard")
        if quota.get("ready") is False or usage.get("fslogical_ready") is False:
            used = None
        if (isinstance(used, int) and used < 0) or (isinstance(hard, int) and hard < 0):
            log.warning("%s gave negative figures for scope %s: fslogical=%s hard=%s",
                        APPLIANCE, pathname, used, hard)
        return QuotaUsage(used_bytes=used if isinstance(used, int) and used >= 0 else None,
                          limit_bytes=hard if isinstance(hard, int) and hard > 0 else None)

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """PUT the new hard threshold, or create the quota if the scope has none; a limit of
        0 removes the quota."""
        _check(limits)
        if not limits.limit_bytes:
            await self._remove_quota(pathname)
            return
        quota_id = await self._known_id(pathname)
        if quota_id is not None:
            r = await self.client().request("PUT", f"{self._quotas()}/{quota_id}",
                                            json={"thresholds": {"hard": limits.limit_bytes}},
                                            ok=(404,))
            if r.status_code != 404:
                return
            log.warning("quota id %s of scope %s is gone on %s; looking by path", quota_id,
                        pathname, APPLIANCE)
            await self._forget_id(pathname)
        found = await self._find(pathname)
        if found is not None and found.get("id"):
            await self._set_hard(str(found["id"]), limits.limit_bytes)
            await self._remember(pathname, str(found["id"]))
        else:
            await self._new_quota(pathname, limits.limit_bytes)

    async def unset_scope(self, pathname: str) -> None:
        await self._remove_quota(pathname)

    async def delete_scope(self, pathname: str) -> None:
        """Refuse (ENOTEMPTY) while the scope holds entries besides `.quota_id`; DELETE the
        quota, then rmdir; if the rmdir fails the quota is made again."""
        path = self.scope_path(pathname)

        def entries() -> list[str]:
            try:
                return [n for n in os.listdir(path) if n not in self.scope_hidden_names]
            except FileNotFoundError:
                return []

        if await trio.to_thread.run_sync(entries):
            raise BackendError(f"quota scope directory {path} is not empty", errno.ENOTEMPTY)
        quota = await self._lookup(pathname)  # its limit, should the rmdir fail
        if quota is not None:
            await self._remove_quota(pathname, quota)
        else:
            await self._forget_all(pathname)
        try:
            await trio.to_thread.run_sync(self.remove_empty_scope_dir, pathname)
        except BaseException:
            hard = ((quota or {}).get("thresholds") or {}).get("hard")
            if isinstance(hard, int) and hard > 0:
                with trio.CancelScope(shield=True):
                    await self._undo(f"recreate the quota of {pathname}",
                                     self._new_quota(pathname, hard))
            raise


def _check(limits: QuotaLimits) -> None:
    if limits.limit_bytes < 0 or limits.limit_inodes < 0:
        raise BackendError(f"negative limit: {limits}", errno.EINVAL)


def _json(client: ApplianceClient, response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApplianceError(client.appliance, f"not a JSON object in the answer to "
                             f"{response.request.method} {response.request.url.path}: "
                             f"{response.text[:200]}")
    return body


def _first_quota(client: ApplianceClient, response: httpx.Response) -> dict[str, Any]:
    quotas = _json(client, response).get("quotas")
    if not isinstance(quotas, list) or not quotas or not isinstance(quotas[0], dict):
        raise ApplianceError(client.appliance, f"no quota in the answer to GET "
                             f"{response.request.url.path}")
    return quotas[0]

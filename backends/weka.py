"""`weka`: WEKA directory quotas over the WEKA REST API, as the storage proxy's `weka` volume
sets them.

A scope is a directory on the mounted WEKA filesystem (SOURCE is that mount, its root the
filesystem's root), and its limit a WEKA directory quota on the directory's inode. WEKA
enforces it: the WEKA client's EDQUOT passes through the gateway, whose ledger still keeps the
per-vfolder figures.

What is sent, mirroring the storage proxy (src/ai/backend/storage/volumes/weka/):

- `POST /api/v2/login` {username, password, org} gives a bearer token (`data.access_token`,
  `refresh_token`, `expires_in`); it is refreshed with `POST /api/v2/login/refresh`
  {refresh_token} shortly before it expires (a refused refresh logs in again), and once more
  when a request is answered 401 (the token expired early), that request then sent again.
- `GET /api/v2/fileSystems` once: the uid of the filesystem named `weka_fs_name`.
- The inode id is the directory's `st_ino` on the mount, as the storage proxy takes it.
- Set (create, update): the JSON-RPC method `set_directory_quota` (`POST /api/v1`) with
  `inode_context` = the inode id, `path` = "/" + the scope's path below the filesystem root,
  `hard_limit_bytes` = `soft_limit_bytes` = the limit, `activate: true`. A JSON-RPC error is
  an error (the storage proxy ignores the answer).
- Describe: `GET /api/v2/fileSystems/{fs_uid}/quota/{inode_id}` (`data.used_bytes`,
  `data.hard_limit_bytes`); "Directory has no quota" (WEKA answers it as a 500) means the
  ledger's figures stand.
- Unset, and a limit of 0: `DELETE /api/v2/fileSystems/{fs_uid}/quota/{inode_id}`, no quota
  being fine. Delete: that, then rmdir (refused while the scope holds anything).

Unlike the storage proxy, TLS verification is on unless `weka_verify_ssl` is false, and the
appliance is first asked on first use, not at start (a gateway starts while it is away).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import trio

from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage
from backends.rest import READ_TIMEOUT, ApplianceClient, ApplianceError, truthy

log = logging.getLogger("backends.weka")

APPLIANCE = "weka"
REQUIRED = ("weka_endpoint", "weka_username", "weka_password", "weka_fs_name")
DEFAULT_ORG = "Root"  # WEKA's default organization
UNLIMITED = 2**63 - 1  # WEKA reports an unlimited hard limit as the largest int64
NO_QUOTA = "has no quota"  # WEKA's "Directory has no quota", answered with HTTP 500
REFRESH_MARGIN = 60.0  # refresh a token this long before it expires (at most)
JSONRPC_INPUT_ERRORS = (-32600, -32602)  # invalid request / invalid params: our input


class WekaBackend(QuotaBackend):
    """Scopes are WEKA directories with a directory quota on their inode; WEKA enforces bytes,
    the gateway inodes (WEKA directory quotas have no inode limit)."""

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

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(volume, options)
        self._client: ApplianceClient | None = None
        self._auth_lock = trio.Lock()  # one login or refresh at a time
        self._access: str | None = None
        self._refresh: str | None = None
        self._valid_until = 0.0  # time.monotonic() when the access token expires
        self._lifetime = 0.0
        self._fs_uid: str | None = None

    # -- options and the client --------------------------------------------------------------

    def _option(self, key: str) -> str:
        value = self.options.get(key)
        if value is None or str(value).strip() == "":
            raise BackendError(f"weka: option {key} is required", errno.EINVAL)
        return str(value)

    def _timeout(self) -> float:
        raw = self.options.get("appliance_timeout", READ_TIMEOUT)
        try:
            timeout = float(raw)
        except (TypeError, ValueError):
            raise BackendError(f"weka: appliance_timeout must be a number of seconds, not "
                               f"{raw!r}", errno.EINVAL) from None
        if timeout <= 0:
            raise BackendError("weka: appliance_timeout must be positive", errno.EINVAL)
        return timeout

    def _http(self) -> ApplianceClient:
        """The client, made on first use (inside the trio loop) and kept for the daemon's
        life."""
        if self._client is None:
            endpoint = self._option("weka_endpoint").rstrip("/")
            self._client = ApplianceClient(
                APPLIANCE, endpoint, verify=truthy(self.options.get("weka_verify_ssl")),
                headers={"Accept": "application/json"}, timeout=self._timeout())
        return self._client

    async def check_volume(self) -> None:
        """The options must be there and the volume a directory; the appliance itself is asked
        on first use."""
        for key in REQUIRED:
            self._option(key)
        self._timeout()
        if not os.path.isdir(self.volume):
            raise BackendError(f"volume {self.volume} is not a directory", errno.ENOENT)

    # -- authentication ----------------------------------------------------------------------

    def _take_tokens(self, response: httpx.Response, what: str) -> None:
        try:
            data = response.json()["data"]
            access, refresh = str(data["access_token"]), str(data["refresh_token"])
            lifetime = float(data["expires_in"])
        except (ValueError, KeyError, TypeError):
            raise ApplianceError(APPLIANCE, f"{what}: unexpected answer (no data.access_token"
                                 ", refresh_token, expires_in)") from None
        self._access, self._refresh = access, refresh
        self._lifetime = lifetime
        self._valid_until = time.monotonic() + lifetime
        log.info("weka: %s, token valid for %.0f s", what, lifetime)

    async def _login(self) -> None:
        org = str(self.options.get("weka_organization") or DEFAULT_ORG)
        body = {"username": self._option("weka_username"),
                "password": self._option("weka_password"), "org": org}
        response = await self._http().request("POST", "/api/v2/login", json=body,
                                               repeatable=True)
        self._take_tokens(response, "logged in")

    async def _renew(self) -> None:
        """Refresh with the refresh token; log in again if there is none or it is refused."""
        if self._refresh is not None:
            response = await self._http().request(
                "POST", "/api/v2/login/refresh", json={"refresh_token": self._refresh},
                repeatable=True, ok=(401, 403))
            if response.status_code < 400:
                self._take_tokens(response, "token refreshed")
                return
            log.info("weka: refresh refused (HTTP %d); logging in again",
                     response.status_code)
            self._refresh = None
        await self._login()

    def _expiring(self) -> bool:
        margin = min(REFRESH_MARGIN, self._lifetime / 5)
        return time.monotonic() >= self._valid_until - margin

    async def _token(self, refused: str | None = None) -> str:
        """A valid access token: the current one, refreshed when it is about to expire or
        when `refused` (a token the appliance answered 401) is still the current one."""
        async with self._auth_lock:
            if self._access is None:
                await self._login()
            elif self._access == refused or self._expiring():
                await self._renew()
            assert self._access is not None
            return self._access

    async def _call(self, method: str, path: str, *, json: Any = None,
                    ok: tuple[int, ...] = (), repeatable: bool | None = None
                    ) -> httpx.Response:
        """An authenticated request; a 401 (token expired early) refreshes the token and
        sends it once more."""
        token = await self._token()
        response = await self._http().request(
            method, path, json=json, ok=(*ok, 401), repeatable=repeatable,
            headers={"Authorization": f"Bearer {token}"})
        if response.status_code != 401 or 401 in ok:
            return response
        log.info("weka: %s %s answered 401; renewing the token", method, path)
        token = await self._token(refused=token)
        return await self._http().request(
            method, path, json=json, ok=ok, repeatable=repeatable,
            headers={"Authorization": f"Bearer {token}"})

    # -- WEKA calls --------------------------------------------------------------------------

    async def _fs(self) -> str:
        """The uid of the filesystem named `weka_fs_name` (asked once)."""
        if self._fs_uid is None:
            name = self._option("weka_fs_name")
            response = await self._call("GET", "/api/v2/fileSystems")
            filesystems = _data(response)
            if not isinstance(filesystems, list):
                raise ApplianceError(APPLIANCE, "GET /fileSystems: unexpected answer")
            for fs in filesystems:
                if isinstance(fs, dict) and fs.get("name") == name:
                    self._fs_uid = str(fs["uid"])
                    break
            else:
                names = ", ".join(str(fs.get("name")) for fs in filesystems
                                  if isinstance(fs, dict)) or "none"
                raise ApplianceError(APPLIANCE, f"filesystem {name!r} not found (the "
                                     f"cluster has: {names}); check weka_fs_name")
        return self._fs_uid

    async def _inode(self, pathname: str) -> int:
        """The scope directory's inode id, as the storage proxy takes it (st_ino on the
        mount)."""
        path = self.scope_path(pathname)
        try:
            st = await trio.to_thread.run_sync(os.stat, path)
        except OSError as e:
            raise BackendError(f"stat {path}: {e.strerror}", e.errno or errno.EIO) from None
        if not stat.S_ISDIR(st.st_mode):
            raise BackendError(f"quota scope {path} is not a directory", errno.ENOTDIR)
        return st.st_ino

    async def _get_quota(self, fs_uid: str, inode: int) -> dict[str, Any] | None:
        """The directory's quota as WEKA reports it, None if it has none."""
        response = await self._call("GET", f"/api/v2/fileSystems/{fs_uid}/quota/{inode}",
                                    ok=(404, 500))
        if _no_quota(response):
            return None
        if response.status_code >= 400:
            raise self._http().error(response)
        data = _data(response)
        if isinstance(data, dict) and "inode_id" not in data and data:
            data = next(iter(data.values()))  # keyed by quota id, as older releases answer
        return data if isinstance(data, dict) and data else None

    async def _set_quota(self, pathname: str, inode: int, limit_bytes: int) -> None:
        """`set_directory_quota` over the JSON-RPC API, as the storage proxy sets quotas
        (setting a limit again is harmless, so it is retried like an idempotent request)."""
        rel = "/" + pathname.strip("/")
        body = {"jsonrpc": "2.0", "method": "set_directory_quota",
                "id": int(time.time() * 1000),
                "params": {"inode_context": inode, "path": rel,
                           "hard_limit_bytes": limit_bytes, "soft_limit_bytes": limit_bytes,
                           "activate": True}}
        response = await self._call("POST", "/api/v1", json=body, repeatable=True)
        try:
            answer = response.json()
        except ValueError:
            raise ApplianceError(APPLIANCE, "set_directory_quota: the answer is not JSON"
                                 ) from None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(error)
            status = 400 if code in JSONRPC_INPUT_ERRORS else 502
            raise ApplianceError(APPLIANCE, f"set_directory_quota {rel}: "
                                 f"{message} (JSON-RPC error {code})", status,
                                 errno.EINVAL if status == 400 else errno.EIO)
        if not isinstance(answer, dict) or "result" not in answer:
            raise ApplianceError(APPLIANCE, "set_directory_quota: no result in the answer")

    async def _remove_quota(self, fs_uid: str, inode: int) -> None:
        """DELETE the directory's quota; none there is fine (a retry after a lost answer)."""
        response = await self._call("DELETE", f"/api/v2/fileSystems/{fs_uid}/quota/{inode}",
                                    ok=(404, 500))
        if response.status_code >= 400 and not _no_quota(response):
            raise self._http().error(response)

    async def _apply(self, pathname: str, limit_bytes: int) -> None:
        fs_uid = await self._fs()
        inode = await self._inode(pathname)
        if limit_bytes:
            await self._set_quota(pathname, inode, limit_bytes)
        else:
            await self._remove_quota(fs_uid, inode)

    # -- QuotaBackend ------------------------------------------------------------------------

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """mkdir, then the quota; if setting it fails, the quota (should a lost answer have
        set it) and the directory go again."""
        if limits.limit_bytes < 0 or limits.limit_inodes < 0:
            raise BackendError(f"negative limit: {limits}", errno.EINVAL)
        if limits.limit_bytes:
            await self._fs()  # appliance trouble (credentials, fs name) before any mkdir
        path = self.scope_path(pathname)
        try:
            os.mkdir(path, 0o755)
        except OSError as e:
            raise BackendError(f"mkdir {path}: {e.strerror}", e.errno or errno.EIO) from None
        if not limits.limit_bytes:
            return
        inode: int | None = None
        try:
            inode = await self._inode(pathname)
            await self._set_quota(pathname, inode, limits.limit_bytes)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._undo_create(pathname, inode)
            raise

    async def _undo_create(self, pathname: str, inode: int | None) -> None:
        path = self.scope_path(pathname)
        if inode is not None:
            try:
                await self._remove_quota(await self._fs(), inode)
            except BackendError as e:
                log.error("undo after failed create of %s: removing its quota: %s", path, e)
        try:
            os.rmdir(path)
        except OSError as e:
            log.error("undo after failed create of %s: rmdir: %s", path, e.strerror)

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        """WEKA's used bytes and hard limit; None (the ledger's figures) without a quota."""
        if not os.path.isdir(self.scope_path(pathname)):
            return None
        quota = await self._get_quota(await self._fs(), await self._inode(pathname))
        if quota is None:
            return None
        used = quota.get("used_bytes", quota.get("total_bytes"))
        hard = quota.get("hard_limit_bytes")
        return QuotaUsage(
            used_bytes=int(used) if isinstance(used, int | float) and used >= 0 else None,
            limit_bytes=int(hard) if isinstance(hard, int | float) and 0 < hard < UNLIMITED
            else None)

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """Set the limit (one call: WEKA keeps the old one if it fails); 0 removes it."""
        if limits.limit_bytes < 0 or limits.limit_inodes < 0:
            raise BackendError(f"negative limit: {limits}", errno.EINVAL)
        await self._apply(pathname, limits.limit_bytes)

    async def unset_scope(self, pathname: str) -> None:
        await self._apply(pathname, 0)

    async def delete_scope(self, pathname: str) -> None:
        """Refuse (ENOTEMPTY) while the scope holds entries; remove the quota, then the
        directory (the quota is put back should the rmdir fail)."""
        path = self.scope_path(pathname)
        if not os.path.isdir(path):
            return  # gone: a retry after a failure past the rmdir
        if os.listdir(path):
            raise BackendError(f"quota scope directory {path} is not empty", errno.ENOTEMPTY)
        fs_uid = await self._fs()
        inode = await self._inode(pathname)
        quota = await self._get_quota(fs_uid, inode)
        if quota is not None:
            await self._remove_quota(fs_uid, inode)
        try:
            self.remove_empty_scope_dir(pathname)
        except BackendError:
            hard = quota.get("hard_limit_bytes") if quota else None
            if isinstance(hard, int) and 0 < hard < UNLIMITED:
                with trio.CancelScope(shield=True):
                    try:
                        await self._set_quota(pathname, inode, hard)
                    except BackendError as e:
                        log.error("restoring the quota of %s after a failed rmdir: %s", path, e)
            raise


def _data(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        raise ApplianceError(APPLIANCE, f"{response.request.method} {response.request.url.path}"
                             ": the answer is not JSON") from None
    return body.get("data") if isinstance(body, dict) else None


def _no_quota(response: httpx.Response) -> bool:
    """WEKA's way of saying a directory has no quota: 404, or a 500 saying so."""
    if response.status_code == 404:
        return True
    if response.status_code != 500:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and NO_QUOTA in str(body.get("message", "")).lower()

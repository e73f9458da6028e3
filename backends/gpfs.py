"""`gpfs` (alias `spectrumscale`): IBM Storage Scale filesets with fileset quotas, over the
management API (`/scalemgmt/v2`, the GUI node's REST API, HTTP basic auth).

Each quota scope is a fileset whose junction is the scope directory, so the file system itself
counts what the scope holds and refuses writes past the fileset's hard block limit (EDQUOT on
the native client or NFS); the gateway passes that through and reports the appliance's figures.
Requests, as the storage proxy sends them:

- create: `POST /filesystems/{fs}/filesets` {filesetName, path (the junction: the scope
  directory's path on the filesystem), owner}; then, with a limit,
- `POST /filesystems/{fs}/quotas` {operationType: setQuota, quotaType: FILESET, objectName,
  blockSoftLimit = blockHardLimit}: the limit goes as KiB with mmsetquota's `K` suffix (a bare
  number is bytes to mmsetquota, which is what the storage proxy sends: the same amount);
  unset sets both to 0 (mmsetquota removes a quota entry whose limits are all 0);
- describe: `GET /filesystems/{fs}/filesets/{name}/quotas`, whose `blockUsage`/`blockLimit`
  are KiB (as mmrepquota reports them);
- delete: `DELETE /filesystems/{fs}/filesets/{name}` (the API unlinks and deletes; refused here
  while the scope holds entries, since a forced delete takes the data with it).

Every change answers 202 with jobs; each is polled at `/jobs/{id}` until COMPLETED or FAILED,
with a deadline, and a failed job's stderr is the error (EFSSP1102C, "already exists", is a 409).
The fileset name is `gpfs_fileset_prefix` + the scope's pathname, as the storage proxy names it.
Inode limits stay with the gateway's ledger (the storage proxy sets none on the appliance).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import trio

from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage
from backends.rest import READ_TIMEOUT, ApplianceClient, ApplianceError, message_of, truthy

log = logging.getLogger("backends.gpfs")

API_ROOT = "/scalemgmt/v2"
DEFAULT_OWNER = "1000:1000"  # the storage proxy's default `gpfs_owner`
ALREADY_EXISTS = "EFSSP1102C"  # a job refused because the object exists (IBM's CSI driver)
UNDO_DEADLINE = 60.0  # for removing a half-made fileset after a failed create
REQUIRED = ("gpfs_endpoint", "gpfs_username", "gpfs_password", "gpfs_fs_name")


class StorageScaleClient(ApplianceClient):
    """The appliance client, reading Storage Scale's error body: {"status": {"code",
    "message"}}."""

    def error(self, response: httpx.Response) -> ApplianceError:
        base = super().error(response)
        message = status_message(response)
        if message is None:
            return base
        return ApplianceError(self.appliance, f"HTTP {response.status_code}: {message}",
                              base.status, base.errno)


def status_message(response: httpx.Response) -> str | None:
    """`status.message` of a Storage Scale answer, if it has one."""
    try:
        body = response.json()
    except ValueError:
        return None
    status = body.get("status") if isinstance(body, dict) else None
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) and message else None


def limit_kib(limit_bytes: int) -> str:
    """A byte limit as mmsetquota takes KiB: rounded up, so the limit is never below what was
    asked (the appliance keeps KiB; describe answers the rounded figure)."""
    return f"{-(-limit_bytes // 1024)}K"


def job_message(job: Mapping[str, Any]) -> str:
    """What a failed job said: its stderr, else its stdout, else its status."""
    result = job.get("result")
    if not isinstance(result, dict):
        result = {}
    for key in ("stderr", "stdout"):
        lines = result.get(key)
        if isinstance(lines, list):
            text = " ".join(str(line).strip() for line in lines if str(line).strip())
        else:
            text = str(lines or "").strip()
        if text:
            return text
    return f"status {job.get('status')}"


class GPFSBackend(QuotaBackend):
    """A fileset per scope, limited by its fileset quota; Storage Scale enforces the bytes.

    Options (the storage proxy's): `gpfs_endpoint` (https://gui-node:443, the API root
    /scalemgmt/v2 is added), `gpfs_username`, `gpfs_password`, `gpfs_fs_name`, `gpfs_owner`
    (uid:gid of a new fileset's root, default 1000:1000), `gpfs_fileset_prefix`,
    `gpfs_verify_ssl` (default on here; the storage proxy's default is off); and
    `appliance_timeout` (seconds to wait for an answer, default 30).
    """

    name = "gpfs"
    enforces_bytes = True
    network = True
    option_keys = frozenset({
        "gpfs_endpoint",
        "gpfs_username",
        "gpfs_password",
        "gpfs_fs_name",
        "gpfs_owner",
        "gpfs_fileset_prefix",
        "gpfs_verify_ssl",
        "appliance_timeout",
    })

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(volume, options)
        self._client: StorageScaleClient | None = None
        self.fs = str(self.options.get("gpfs_fs_name") or "")
        self.owner = str(self.options.get("gpfs_owner") or DEFAULT_OWNER)
        self.prefix = str(self.options.get("gpfs_fileset_prefix") or "")
        self.appliance = appliance_label(str(self.options.get("gpfs_endpoint") or ""))

    # -- the client ----------------------------------------------------------------------------

    def _missing(self) -> list[str]:
        return [key for key in REQUIRED if not self.options.get(key)]

    def client(self) -> StorageScaleClient:
        """Made on first use, inside the trio loop; it lives as long as the daemon."""
        if self._client is None:
            missing = self._missing()
            if missing:
                raise BackendError(f"{self.name}: options missing: {', '.join(missing)}",
                                   errno.EINVAL)
            try:
                timeout = float(self.options.get("appliance_timeout") or READ_TIMEOUT)
            except (TypeError, ValueError):
                raise BackendError(f"{self.name}: appliance_timeout must be a number of "
                                   "seconds", errno.EINVAL) from None
            self._client = StorageScaleClient(
                self.appliance, api_url(str(self.options["gpfs_endpoint"])),
                verify=truthy(self.options.get("gpfs_verify_ssl"), default=True),
                auth=httpx.BasicAuth(str(self.options["gpfs_username"]),
                                     str(self.options["gpfs_password"])),
                headers={"Accept": "application/json"}, timeout=timeout)
        return self._client

    def fileset(self, pathname: str) -> str:
        return self.prefix + pathname

    def junction(self, pathname: str) -> str:
        return str(self.scope_path(pathname))

    async def _job(self, method: str, path: str, what: str, *, json: Any = None,
                   repeatable: bool | None = None, ok: tuple[int, ...] = ()
                   ) -> httpx.Response:
        """Send a change and wait for the jobs it started; the answer (one in `ok` is
        returned without waiting)."""
        client = self.client()
        response = await client.request(method, path, json=json, repeatable=repeatable, ok=ok)
        if response.status_code in ok:
            return response
        try:
            body = response.json()
        except ValueError:
            body = {}
        jobs = body.get("jobs") if isinstance(body, dict) else None
        for job in jobs if isinstance(jobs, list) else []:
            await self._wait(job, what)
        return response

    async def _wait(self, job: Mapping[str, Any], what: str) -> None:
        client = self.client()
        job_id = job.get("jobId")
        if job_id is None:
            raise ApplianceError(self.appliance, f"{what}: the answer names no job")
        state: dict[str, Any] = dict(job)

        def finished() -> bool:
            status = str(state.get("status", "RUNNING")).upper()
            if status in ("FAILED", "CANCELLED"):
                message = job_message(state)
                raise ApplianceError(self.appliance, f"{what}: job {job_id} {status.lower()}:"
                                     f" {message}", 409 if ALREADY_EXISTS in message else 502)
            return status == "COMPLETED"

        async def done() -> bool:
            if finished():
                return True
            r = await client.request("GET", f"jobs/{job_id}", params={"fields": ":all:"})
            found = r.json().get("jobs") or []
            if found and isinstance(found[0], dict):
                state.clear()
                state.update(found[0])
            return finished()

        await client.poll(done, f"{what} (job {job_id})")

    async def _set_quota(self, pathname: str, limit_bytes: int) -> None:
        name = self.fileset(pathname)
        kib = limit_kib(limit_bytes)
        await self._job("POST", f"filesystems/{self.fs}/quotas",
                        f"setting the quota of fileset {name}",
                        json={"operationType": "setQuota", "quotaType": "FILESET",
                              "objectName": name, "blockSoftLimit": kib,
                              "blockHardLimit": kib},
                        repeatable=True)  # the same limits again change nothing

    async def _delete_fileset(self, name: str) -> bool:
        """DELETE the fileset (the API unlinks it first); False if it was not there."""
        r = await self._job("DELETE", f"filesystems/{self.fs}/filesets/{name}",
                            f"deleting fileset {name}", ok=(400, 404))
        if r.status_code in (400, 404):
            message = status_message(r) or message_of(r)
            if r.status_code == 404 or "filesetname" in message.lower():
                return False
            raise self.client().error(r)
        return True

    async def _undo_create(self, pathname: str) -> None:
        """After a failed create: remove the fileset if it is there at our junction (a
        request that failed on the way back may have made it); never another's fileset."""
        name = self.fileset(pathname)
        try:
            with trio.move_on_after(UNDO_DEADLINE):
                r = await self.client().request("GET", f"filesystems/{self.fs}/filesets/{name}",
                                                ok=(400, 404))
                if r.status_code in (400, 404):
                    return
                found = r.json().get("filesets") or [{}]
                config = found[0].get("config") or {}
                if config.get("path") != self.junction(pathname):
                    return
                await self._delete_fileset(name)
                return
            log.error("undo after failed create: fileset %s not removed within %gs; a "
                      "retry of the create adopts it", name, UNDO_DEADLINE)
        except BackendError as e:
            log.error("undo after failed create: fileset %s not removed: %s; a retry of the "
                      "create adopts it", name, e)

    # -- QuotaBackend ------------------------------------------------------------------------

    async def check_volume(self) -> None:
        """The options the API needs are there, and the client is made (so a TLS warning is
        logged at start). The appliance itself is not asked: the data path does not need the
        GUI node, so its absence does not stop the mount; its first use says what fails."""
        missing = self._missing()
        if missing:
            raise BackendError(f"backend {self.name} needs the options {', '.join(missing)} "
                               "in [volume.NAME.options]", errno.EINVAL)
        if not self.volume.is_dir():
            raise BackendError(f"volume {self.volume} is not a directory", errno.ENOENT)
        self.client()

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """The fileset, linked at the scope directory; then its quota. A failure leaves no
        fileset of ours behind (one that may have been made is removed again)."""
        if limits.limit_bytes < 0 or limits.limit_inodes < 0:
            raise BackendError(f"negative limit: {limits}", errno.EINVAL)
        name = self.fileset(pathname)
        made = False  # past the fileset's job: it is ours to remove again
        try:
            await self._job("POST", f"filesystems/{self.fs}/filesets",
                            f"creating fileset {name}",
                            json={"filesetName": name, "path": self.junction(pathname),
                                  "owner": self.owner})
            made = True
            if limits.limit_bytes:
                await self._set_quota(pathname, limits.limit_bytes)
        except BaseException as e:
            # refused (4xx: our input, e.g. a fileset of that name exists): nothing was made;
            # anything else (no answer, a failed job, the quota refused) may have made it
            if made or not (isinstance(e, ApplianceError) and 400 <= e.status < 500):
                with trio.CancelScope(shield=True):
                    await self._undo_create(pathname)
            raise

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        if not self.scope_path(pathname).is_dir():
            return None
        name = self.fileset(pathname)
        r = await self.client().request("GET", f"filesystems/{self.fs}/filesets/{name}/quotas")
        quotas = r.json().get("quotas") or []
        mine = [q for q in quotas if isinstance(q, dict) and not q.get("isDefaultQuota")
                and str(q.get("quotaType", "FILESET")).upper() == "FILESET"
                and q.get("objectName", name) == name]
        if not mine:  # no entry: quota accounting has nothing for it yet
            return QuotaUsage(used_bytes=None, limit_bytes=None)
        quota = mine[0]
        used, hard = quota.get("blockUsage"), quota.get("blockLimit")
        return QuotaUsage(used_bytes=int(used) * 1024 if used is not None else None,
                          limit_bytes=int(hard) * 1024 if hard else None)

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        if limits.limit_bytes < 0 or limits.limit_inodes < 0:
            raise BackendError(f"negative limit: {limits}", errno.EINVAL)
        await self._set_quota(pathname, limits.limit_bytes)

    async def unset_scope(self, pathname: str) -> None:
        await self._set_quota(pathname, 0)

    async def delete_scope(self, pathname: str) -> None:
        """Refuse (ENOTEMPTY) while the scope holds entries (the API's delete is forced and
        would take them along); a fileset already gone is fine."""
        path = self.scope_path(pathname)
        if path.is_dir() and any(path.iterdir()):
            raise BackendError(f"quota scope directory {path} is not empty", errno.ENOTEMPTY)
        await self._delete_fileset(self.fileset(pathname))
        self.remove_empty_scope_dir(pathname)  # a plain directory left, or none


class SpectrumScaleBackend(GPFSBackend):
    """The same backend under the storage proxy's other name, so the volume reports the name
    its configuration gave (registry: "spectrumscale")."""

    name = "spectrumscale"


def api_url(endpoint: str) -> str:
    """The API root below the endpoint, as the storage proxy adds it (not twice)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(API_ROOT) else endpoint + API_ROOT


def appliance_label(endpoint: str) -> str:
    """How errors name the appliance: product and address, never credentials."""
    try:
        url = httpx.URL(endpoint)
    except (httpx.InvalidURL, TypeError):
        return "IBM Storage Scale"
    if not url.host:
        return "IBM Storage Scale"
    port = f":{url.port}" if url.port else ""
    return f"IBM Storage Scale at {url.scheme}://{url.host}{port}"

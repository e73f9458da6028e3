"""An emulator of IBM Storage Scale's management API (`/scalemgmt/v2`, the GUI node's REST API)
for the `gpfs`/`spectrumscale` backend.

It follows IBM's "IBM Storage Scale: Administration Guide / REST API reference" topics:
`Filesystems/{filesystemName}/filesets: POST` (filesetName, path, owner, permissions),
`Filesystems/{filesystemName}/filesets/{filesetName}: GET` and `: DELETE`,
`Filesystems/{filesystemName}/quotas: POST` (operationType setQuota, quotaType, objectName,
blockSoftLimit, blockHardLimit) and `: GET` (filter=objectName=...),
`Filesystems/{filesystemName}/filesets/{filesetName}/quotas: GET`, `Jobs/{jobId}: GET`;
with the command semantics of mmcrfileset/mmlinkfileset (a new fileset's root directory is
owned by the given owner, mode 0700 unless `permissions` says otherwise), mmdelfileset -f
(the API's delete unlinks and deletes, data included), mmsetquota (a block limit with a
K/M/G/T/P suffix, a bare number is bytes; at most 999999999999999 K; limits all 0 remove the
entry) and mmrepquota (usage and limits reported in KiB). Where IBM's pages do not say, the
answers follow what IBM's CSI driver (ibm-spectrum-scale-csi, connectors/rest_v2.go) expects:
an unknown fileset is 400 "Invalid value in 'filesetName'", a job refused because the object
exists fails with EFSSP1102C.

Behaviour:
- HTTP basic auth (`USER`/`PASSWORD`); anything else is 401 with the API's body.
- Errors: `{"status": {"code": N, "message": "..."}}`.
- One filesystem, `FS`, mounted at `root` (the gateway's SOURCE) and its `root` fileset. A new
  fileset's junction must be an absolute path under `root` whose parent exists and which does
  not exist; the job that links it makes the directory.
- Every change answers 202 with one job (`jobs: [{jobId, status: RUNNING, ...}]`); the job does
  its work when it is polled the second time (`GET /jobs/{id}`), and then reads COMPLETED or
  FAILED (its `result.stderr` says why).
- Usage is counted from the junction directory: `du -s -B1` in KiB, rounded up
  (`blockUsage`), and its entries plus the fileset root (`filesUsage`).
- Vendor fault `job_failure`: the job the matching request starts fails (it does nothing).

The emulator cannot enforce a limit on a local directory: the behaviour suite's
EDQUOT-at-the-limit check cannot run against it (the appliance is the enforcer).
"""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulators.common import (
    EmulatorApp,
    Fault,
    HTTPError,
    Request,
    Response,
    allocated_bytes,
    inodes,
)

TLS = True
USER = "admin"
PASSWORD = "admin001"
FS = "gpfs0"
API = "/scalemgmt/v2"
MAX_KIB = 999_999_999_999_999
UNITS = {"K": 1, "M": 1024, "G": 1024**2, "T": 1024**3, "P": 1024**4}


def gateway_options(url: str) -> dict[str, Any]:
    return {"gpfs_endpoint": url, "gpfs_username": USER, "gpfs_password": PASSWORD,
            "gpfs_fs_name": FS}


class JobFailure(Exception):
    """A job's command failed; the message is its stderr."""


@dataclass
class Job:
    job_id: int
    method: str
    url: str
    data: Any
    command: str
    action: Callable[[], None]
    doomed: str | None = None  # the job_failure fault's message
    status: str = "RUNNING"
    polls: int = 0
    submitted: float = field(default_factory=time.time)
    completed: float | None = None
    stderr: list[str] = field(default_factory=list)
    exit_code: int | None = None

    def body(self) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.submitted))
        done = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.completed))
                if self.completed else "N/A")
        result: dict[str, Any] = {"commands": [self.command], "progress": [], "stdout": [],
                                  "stderr": list(self.stderr)}
        if self.exit_code is not None:
            result["exitCode"] = self.exit_code
        return {"jobId": self.job_id, "status": self.status, "submitted": stamp,
                "completed": done, "runtime": int(((self.completed or time.time())
                                                   - self.submitted) * 1000),
                "request": {"type": self.method, "url": self.url,
                            "data": json.dumps(self.data) if self.data is not None else ""},
                "result": result, "pids": []}


@dataclass
class Fileset:
    name: str
    fileset_id: int
    path: str | None  # the junction; None when unlinked
    owner: str
    comment: str = ""
    created: float = field(default_factory=time.time)


@dataclass
class Quota:
    soft_kib: int = 0
    hard_kib: int = 0


def parse_limit(value: Any, field_name: str) -> int:
    """A block limit as mmsetquota reads it, in KiB (rounded up): `10G`, `2048K`, or a bare
    number of bytes."""
    text = str(value).strip().upper() if value is not None else "0"
    if text.endswith("B") and len(text) > 1 and text[-2] in UNITS:
        text = text[:-1]
    try:
        if text and text[-1] in UNITS:
            kib = int(text[:-1]) * UNITS[text[-1]]
        else:
            kib = -(-int(text) // 1024)
    except ValueError:
        raise HTTPError(400, f"Invalid value in '{field_name}'", 400) from None
    if kib < 0 or kib > MAX_KIB:
        raise HTTPError(400, f"Invalid value in '{field_name}'", 400)
    return kib


class GPFSEmulator(EmulatorApp):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.mount_point = str(root.resolve())
        self.filesets: dict[str, Fileset] = {
            "root": Fileset("root", 0, self.mount_point, "0:0", "root fileset")}
        self.quotas: dict[str, Quota] = {}
        self.jobs: dict[int, Job] = {}
        self.next_job = 1000000000001
        self.next_fileset_id = 1
        self.doom_next_job: str | None = None
        self.headers_seen: list[dict[str, Any]] = []
        fs = f"{API}/filesystems/{{fs}}"
        self.route("GET", f"{API}/filesystems", self.list_filesystems)
        self.route("GET", fs, self.get_filesystem)
        self.route("GET", f"{fs}/filesets", self.list_filesets)
        self.route("POST", f"{fs}/filesets", self.create_fileset)
        self.route("GET", f"{fs}/filesets/{{name}}", self.get_fileset)
        self.route("DELETE", f"{fs}/filesets/{{name}}", self.delete_fileset)
        self.route("GET", f"{fs}/filesets/{{name}}/quotas", self.fileset_quotas)
        self.route("GET", f"{fs}/quotas", self.list_quotas)
        self.route("POST", f"{fs}/quotas", self.set_quota)
        self.route("GET", f"{API}/jobs/{{job_id}}", self.get_job)

    # -- the common hooks ---------------------------------------------------------------------

    def error_body(self, status: int, message: str, code: Any) -> Any:
        return {"status": {"code": status, "message": message}}

    def authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        self.headers_seen.append({"method": request.method, "path": request.path,
                                  "authorization": header,
                                  "accept": request.headers.get("accept"),
                                  "content_type": request.headers.get("content-type")})
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if header != expected:
            raise HTTPError(401, "Unauthorized: the user name or password is not valid", 401)

    async def vendor_fault(self, fault: Fault, request: Request) -> Response | None:
        if fault.kind == "job_failure":
            self.doom_next_job = ("EFSSG0001C The command failed to run on the cluster "
                                  "(emulated job failure).")
            return None
        return None

    def _control(self, request: Request) -> Response:
        if request.path == "/_emulator/headers":
            return Response(200, self.headers_seen)
        return super()._control(request)

    def state(self) -> Any:
        return {
            "filesets": [{"name": f.name, "id": f.fileset_id, "path": f.path, "owner": f.owner}
                         for f in self.filesets.values() if f.name != "root"],
            "quotas": [{"objectName": name, "blockSoftLimit": q.soft_kib,
                        "blockHardLimit": q.hard_kib} for name, q in self.quotas.items()],
            "jobs": [{"jobId": j.job_id, "status": j.status, "type": j.method, "url": j.url}
                     for j in self.jobs.values()],
        }

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def ok(body: dict[str, Any], status: int = 200) -> Response:
        message = ("The request was accepted for processing." if status == 202 else
                   "The request finished successfully.")
        return Response(status, {"status": {"code": status, "message": message}, **body})

    def _fs(self, request: Request) -> str:
        name = request.params["fs"]
        if name != FS:
            raise HTTPError(400, "Invalid value in 'filesystemName'", 400)
        return name

    def _fileset(self, name: str) -> Fileset:
        fileset = self.filesets.get(name)
        if fileset is None:
            raise HTTPError(400, "Invalid value in 'filesetName'", 400)
        return fileset

    def _submit(self, request: Request, command: str, action: Callable[[], None]) -> Response:
        job = Job(self.next_job, request.method, request.path, request.body, command, action,
                  doomed=self.doom_next_job)
        self.doom_next_job = None
        self.next_job += 1
        self.jobs[job.job_id] = job
        return self.ok({"jobs": [job.body()]}, 202)

    def _filesystem_body(self) -> dict[str, Any]:
        return {"name": FS, "type": "local", "mount": {"mountPoint": self.mount_point,
                                                        "status": "mounted"},
                "quota": {"quotasAccountingEnabled": "user;group;fileset",
                          "quotasEnforced": "user;group;fileset", "perfilesetQuotas": False}}

    def _fileset_body(self, fileset: Fileset) -> dict[str, Any]:
        return {"filesetName": fileset.name, "filesystemName": FS,
                "config": {"filesetName": fileset.name, "filesystemName": FS,
                           "id": fileset.fileset_id, "oid": fileset.fileset_id,
                           "path": fileset.path or "--",
                           "status": "Linked" if fileset.path else "Unlinked",
                           "comment": fileset.comment, "inodeSpace": 0,
                           "isInodeSpaceOwner": fileset.name == "root",
                           "created": time.strftime("%Y-%m-%d %H:%M:%S",
                                                    time.localtime(fileset.created))}}

    def _quota_body(self, fileset: Fileset) -> dict[str, Any]:
        quota = self.quotas.get(fileset.name, Quota())
        usage_kib = files = 0
        if fileset.path and os.path.isdir(fileset.path):
            usage_kib = -(-allocated_bytes(Path(fileset.path)) // 1024)
            files = inodes(Path(fileset.path)) + 1
        return {"quotaId": fileset.fileset_id + 1, "filesystemName": FS,
                "filesetName": fileset.name, "quotaType": "FILESET",
                "objectName": fileset.name, "objectId": fileset.fileset_id,
                "blockUsage": usage_kib, "blockQuota": quota.soft_kib,
                "blockLimit": quota.hard_kib, "blockInDoubt": 0, "blockGrace": "none",
                "filesUsage": files, "filesQuota": 0, "filesLimit": 0, "filesInDoubt": 0,
                "filesGrace": "none", "isDefaultQuota": False}

    def _junction(self, path: Any) -> str:
        """A junction path the API accepts: absolute, below the filesystem's mount point."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise HTTPError(400, "Invalid value in 'path'", 400)
        resolved = os.path.normpath(path)
        if os.path.commonpath([resolved, self.mount_point]) != self.mount_point or (
                resolved == self.mount_point):
            raise HTTPError(400, f"Invalid value in 'path': {path} is not in file system {FS}",
                            400)
        return resolved

    @staticmethod
    def _owner_ids(owner: str) -> tuple[int, int]:
        user, _, group = owner.partition(":")
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        if not group:
            gid = pwd.getpwuid(uid).pw_gid
        else:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        return uid, gid

    # -- endpoints ----------------------------------------------------------------------------

    def list_filesystems(self, request: Request) -> Response:
        return self.ok({"filesystems": [self._filesystem_body()]})

    def get_filesystem(self, request: Request) -> Response:
        self._fs(request)
        return self.ok({"filesystems": [self._filesystem_body()]})

    def list_filesets(self, request: Request) -> Response:
        self._fs(request)
        return self.ok({"filesets": [self._fileset_body(f) for f in self.filesets.values()]})

    def get_fileset(self, request: Request) -> Response:
        self._fs(request)
        return self.ok({"filesets": [self._fileset_body(self._fileset(request.params["name"]))]})

    def create_fileset(self, request: Request) -> Response:
        self._fs(request)
        body = request.body if isinstance(request.body, dict) else {}
        name = body.get("filesetName")
        if not isinstance(name, str) or not name or len(name) > 255 or "/" in name or (
                name == "new"):
            raise HTTPError(400, "Invalid value in 'filesetName'", 400)
        path = self._junction(body["path"]) if body.get("path") is not None else None
        owner = str(body.get("owner") or "0:0")
        try:
            uid, gid = self._owner_ids(owner)
        except (KeyError, ValueError):
            raise HTTPError(400, "Invalid value in 'owner'", 400) from None
        permissions = body.get("permissions")
        try:
            mode = int(str(permissions), 8) if permissions is not None else 0o700
        except ValueError:
            raise HTTPError(400, "Invalid value in 'permissions'", 400) from None

        def run() -> None:
            if name in self.filesets:
                raise JobFailure(f"EFSSP1102C The fileset {name} already exists in file "
                                 f"system {FS}.")
            if path is not None:
                if os.path.lexists(path):
                    raise JobFailure(f"EFSSG0103C The junction path {path} already exists.")
                if not os.path.isdir(os.path.dirname(path)):
                    raise JobFailure(f"EFSSG0104C The parent directory of {path} does not "
                                     "exist.")
                os.mkdir(path)
                os.chmod(path, mode)
                if os.geteuid() == 0:
                    os.chown(path, uid, gid)
            self.filesets[name] = Fileset(name, self.next_fileset_id, path, owner,
                                          str(body.get("comment") or ""))
            self.next_fileset_id += 1

        command = f"mmcrfileset {FS} {name}" + (f"; mmlinkfileset {FS} {name} -J {path}"
                                                if path else "")
        return self._submit(request, command, run)

    def delete_fileset(self, request: Request) -> Response:
        self._fs(request)
        name = request.params["name"]
        fileset = self._fileset(name)
        if name == "root":
            raise HTTPError(400, "The root fileset cannot be deleted.", 400)

        def run() -> None:
            current = self.filesets.get(name)
            if current is not fileset:
                raise JobFailure(f"EFSSG0073C The fileset {name} does not exist.")
            if fileset.path and os.path.isdir(fileset.path):
                shutil.rmtree(fileset.path)  # unlink -f, delete -f: the data goes too
            del self.filesets[name]
            self.quotas.pop(name, None)

        return self._submit(request, f"mmunlinkfileset {FS} {name} -f; mmdelfileset {FS} "
                                     f"{name} -f", run)

    def fileset_quotas(self, request: Request) -> Response:
        self._fs(request)
        fileset = self._fileset(request.params["name"])
        return self.ok({"quotas": [self._quota_body(fileset)]})

    def list_quotas(self, request: Request) -> Response:
        self._fs(request)
        wanted = None
        flt = request.query.get("filter", "")
        if flt.startswith("objectName="):
            wanted = flt.split("=", 1)[1]
        return self.ok({"quotas": [self._quota_body(f) for f in self.filesets.values()
                                   if wanted is None or f.name == wanted]})

    def set_quota(self, request: Request) -> Response:
        self._fs(request)
        body = request.body if isinstance(request.body, dict) else {}
        if body.get("operationType") != "setQuota":
            raise HTTPError(400, "Invalid value in 'operationType'", 400)
        if str(body.get("quotaType", "")).upper() != "FILESET":
            raise HTTPError(400, "Invalid value in 'quotaType': the emulator keeps fileset "
                                 "quotas only", 400)
        name = body.get("objectName")
        if not isinstance(name, str) or name not in self.filesets:
            raise HTTPError(400, "Invalid value in 'objectName'", 400)
        soft = parse_limit(body.get("blockSoftLimit", 0), "blockSoftLimit")
        hard = parse_limit(body.get("blockHardLimit", 0), "blockHardLimit")
        if hard and soft > hard:
            raise HTTPError(400, "The soft limit must not be greater than the hard limit.", 400)

        def run() -> None:
            if name not in self.filesets:
                raise JobFailure(f"EFSSG0073C The fileset {name} does not exist.")
            if soft == 0 and hard == 0:
                self.quotas.pop(name, None)  # mmsetquota: all limits 0 removes the entry
            else:
                self.quotas[name] = Quota(soft, hard)

        return self._submit(request, f"mmsetquota {FS}:{name} --block {soft}K:{hard}K", run)

    def get_job(self, request: Request) -> Response:
        try:
            job = self.jobs[int(request.params["job_id"])]
        except (KeyError, ValueError):
            raise HTTPError(400, "Invalid value in 'jobId'", 400) from None
        job.polls += 1
        if job.status == "RUNNING" and job.polls >= 2:
            try:
                if job.doomed is not None:
                    raise JobFailure(job.doomed)
                job.action()
            except JobFailure as e:
                job.status, job.stderr, job.exit_code = "FAILED", [str(e)], 1
            except OSError as e:
                job.status, job.stderr, job.exit_code = "FAILED", [f"EFSSG0000C {e}"], 1
            else:
                job.status, job.exit_code = "COMPLETED", 0
            job.completed = time.time()
        return self.ok({"jobs": [job.body()]})


def make_app(root: Path) -> EmulatorApp:
    return GPFSEmulator(root)

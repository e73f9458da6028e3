"""An emulator of NetApp ONTAP's REST API, as far as the `netapp` backend and the storage
proxy use it: one SVM with one FlexVol volume whose root is `root`.

Follows the ONTAP REST API reference (docs.netapp.com/us-en/ontap-restapi): "Storage quota
endpoints" overview (rules, enabling quotas with `PATCH /api/storage/volumes/{uuid}`
`quota.enabled`, reports), `POST /storage/qtrees`, `DELETE /storage/qtrees/{volume.uuid}/{id}`,
`POST`/`PATCH`/`DELETE /storage/quota/rules[/{uuid}]`, `GET /storage/quota/reports`, the
cluster jobs endpoint (`GET /cluster/jobs/{uuid}`: states running/success/failure, `message`,
`code`, `error`), and the ONTAP error body `{"error": {"message": ..., "code": "..."}}`.

- Basic authentication (`USER`/`PASSWORD`); anything else is 401 with ONTAP's body (code 6).
- Changes are asynchronous as on ONTAP: 202 and a job link; the job completes on its second
  poll, or one second after it started, whichever comes first; its effect happens then. A
  change's input is checked at once (an unknown SVM 917505 or volume 917506, a duplicate qtree
  or rule 409 code 1, a rule for a qtree that does not exist 404 code 4, an invalid value 400
  code 2, an unknown rule UUID 404 code 5308545, the default qtree 5242894).
- Switching quotas on when they are on is a failed job with code 5308507 ("already on"), as
  the storage proxy expects.
- A qtree is a directory under `root` (mode from `unix_permissions`, owner from `user.id`/
  `group.id` where the emulator may chown); deleting it deletes its contents and its rules.
- Tree rules: `space.hard_limit`/`soft_limit` in bytes, below 1024 rounded up to 1024 as the
  reference says; they take effect at once while quotas are on (ONTAP resizes on each rule
  change). Reports exist only for rules in effect (quotas on) and count `space.used.total` as
  the blocks the qtree's directory holds (`du -s -B1`).
- Vendor faults: `job_failure` (the next job fails with an ONTAP message, code 393271, a node
  out of quorum, and changes nothing) and `unauthorized` (the matching requests are answered
  401, as after the password was changed on the cluster).

The emulator cannot enforce a limit on a local directory: the behaviour suite's
EDQUOT-at-the-limit check cannot run against it (real ONTAP refuses the NFS write).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import time
import uuid
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

TLS = False
USER = "admin"
PASSWORD = "netapp-emulator-secret"
SVM = "svm0"
SVM_UUID = "0d7b2a4e-8a51-11e9-9c1f-005056a7f717"
VOLUME = "vol0"
VOLUME_UUID = "314a328f-502d-11e9-8771-005056a7f717"
QUOTA_ALREADY_ON = "5308507"
JOB_SECONDS = 1.0


def gateway_options(url: str) -> dict[str, Any]:
    return {"netapp_ontap_endpoint": url, "netapp_ontap_user": USER,
            "netapp_ontap_password": PASSWORD, "netapp_svm": SVM,
            "netapp_volume_name": VOLUME}


@dataclass
class Job:
    uuid: str
    description: str
    action: Callable[[], None]
    started: float = field(default_factory=time.monotonic)
    polls: int = 0
    state: str = "running"
    message: str = ""
    code: str = "0"
    fail: tuple[str, str] | None = None

    def record(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "uuid": self.uuid, "description": self.description, "state": self.state,
            "message": self.message or self.state, "code": int(self.code),
            "_links": {"self": {"href": f"/api/cluster/jobs/{self.uuid}"}}}
        if self.state == "failure":
            body["error"] = {"message": self.message, "code": self.code}
        return body


class ONTAPEmulator(EmulatorApp):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.quota_enabled = False
        self.qtrees: dict[int, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self.next_qtree_id = 1
        self.fail_next_job = False
        r = self.route
        r("GET", "/api/storage/volumes", self.list_volumes)
        r("GET", "/api/storage/volumes/{uuid}", self.get_volume)
        r("PATCH", "/api/storage/volumes/{uuid}", self.patch_volume)
        r("GET", "/api/storage/qtrees", self.list_qtrees)
        r("POST", "/api/storage/qtrees", self.post_qtree)
        r("GET", "/api/storage/qtrees/{volume}/{id}", self.get_qtree)
        r("DELETE", "/api/storage/qtrees/{volume}/{id}", self.delete_qtree)
        r("GET", "/api/storage/quota/rules", self.list_rules)
        r("POST", "/api/storage/quota/rules", self.post_rule)
        r("GET", "/api/storage/quota/rules/{uuid}", self.get_rule)
        r("PATCH", "/api/storage/quota/rules/{uuid}", self.patch_rule)
        r("DELETE", "/api/storage/quota/rules/{uuid}", self.delete_rule)
        r("GET", "/api/storage/quota/reports", self.list_reports)
        r("GET", "/api/cluster/jobs/{uuid}", self.get_job)

    # -- the emulator's frame ----------------------------------------------------------------

    def error_body(self, status: int, message: str, code: Any) -> Any:
        return {"error": {"message": message, "code": str(code)}}

    def authorize(self, request: Request) -> None:
        """Basic credentials; the header goes in the request log too (as `authorization`),
        so tests can check what the backend sent."""
        self.settle()
        if self.log:
            self.log[-1]["authorization"] = request.headers.get("authorization")
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if request.headers.get("authorization") != expected:
            raise HTTPError(401, "not authorized for that command", "6")

    async def vendor_fault(self, fault: Fault, request: Request) -> Response | None:
        if fault.kind == "job_failure":
            self.fail_next_job = True
            return None
        if fault.kind == "unauthorized":
            return Response(401, self.error_body(401, "not authorized for that command", 6))
        return None

    def state(self) -> Any:
        return {
            "volumes": [{"name": VOLUME, "uuid": VOLUME_UUID, "svm": SVM,
                         "quota_enabled": self.quota_enabled}],
            "qtrees": [{"id": q["id"], "name": q["name"]} for q in self.qtrees.values()],
            "rules": [{"uuid": u, "qtree": r["qtree"]["name"],
                       "hard_limit": r["space"].get("hard_limit"),
                       "soft_limit": r["space"].get("soft_limit")}
                      for u, r in self.rules.items()],
            "jobs_running": [j.uuid for j in self.jobs.values() if j.state == "running"],
        }

    # -- jobs --------------------------------------------------------------------------------

    def job(self, description: str, action: Callable[[], None]) -> Response:
        job = Job(str(uuid.uuid4()), description, action)
        if self.fail_next_job:
            self.fail_next_job = False
            job.fail = (f"{description}: node \"cluster1-01\" is out of quorum; retry the "
                        "operation later", "393271")
        self.jobs[job.uuid] = job
        return Response(202, {"job": {"uuid": job.uuid, "_links": {
            "self": {"href": f"/api/cluster/jobs/{job.uuid}"}}}})

    def settle(self, polled: Job | None = None) -> None:
        """Complete, in the order they started, the jobs that are due."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.state != "running":
                continue
            if job is polled or now - job.started >= JOB_SECONDS:
                self.complete(job)
            if job is polled:
                break

    def complete(self, job: Job) -> None:
        if job.fail is not None:
            job.state, (job.message, job.code) = "failure", job.fail
            return
        try:
            job.action()
        except HTTPError as e:
            job.state, job.message, job.code = "failure", e.message, str(e.code)
            return
        job.state, job.message = "success", "success"

    def get_job(self, request: Request) -> Response:
        job = self.jobs.get(request.params["uuid"])
        if job is None:
            raise HTTPError(404, f"job {request.params['uuid']} not found", "4")
        job.polls += 1
        if job.polls >= 2:
            self.settle(job)
        return Response(200, job.record())

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def collection(records: list[dict[str, Any]], path: str) -> Response:
        return Response(200, {"records": records, "num_records": len(records),
                              "_links": {"self": {"href": path}}})

    @staticmethod
    def flat(body: Any) -> dict[str, Any]:
        """ONTAP takes nested objects and dotted names alike: {"svm": {"uuid"}} or
        {"svm.uuid"}; both as dotted names."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        if not isinstance(body, dict):
            raise HTTPError(400, "Invalid JSON input, an object was expected", "262199")
        walk("", body)
        return out

    def check_svm_volume(self, body: dict[str, Any]) -> None:
        svm_uuid, svm_name = body.get("svm.uuid"), body.get("svm.name")
        if svm_uuid is None and svm_name is None:
            raise HTTPError(400, 'Missing value: "svm.uuid" or "svm.name"', "262177")
        if svm_uuid not in (None, SVM_UUID) or svm_name not in (None, SVM):
            raise HTTPError(404, f'Vserver "{svm_name or svm_uuid}" not found', "917505")
        vol_uuid, vol_name = body.get("volume.uuid"), body.get("volume.name")
        if vol_uuid is None and vol_name is None:
            raise HTTPError(400, 'Missing value: "volume.uuid" or "volume.name"', "262177")
        if vol_uuid not in (None, VOLUME_UUID) or vol_name not in (None, VOLUME):
            raise HTTPError(404, f'Volume "{vol_name or vol_uuid}" not found', "917506")

    @staticmethod
    def matches(record: dict[str, Any], query: dict[str, str]) -> bool:
        """The query's field filters (dotted names) against a record; `fields` and other
        control parameters are not filters."""
        for key, wanted in query.items():
            if key in ("fields", "return_records", "return_timeout", "max_records"):
                continue
            value: Any = record
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is None or str(value).lower() != wanted.lower():
                return False
        return True

    def qtree_by_name(self, name: str) -> dict[str, Any] | None:
        return next((q for q in self.qtrees.values() if q["name"] == name), None)

    @staticmethod
    def limit(value: Any, name: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HTTPError(400, f'Invalid value "{value}" for field "{name}"', "2")
        return max(value, 1024) if value else 0

    # -- volumes -----------------------------------------------------------------------------

    def volume_record(self) -> dict[str, Any]:
        return {"uuid": VOLUME_UUID, "name": VOLUME, "svm": {"name": SVM, "uuid": SVM_UUID},
                "nas": {"path": f"/{VOLUME}"},
                "quota": {"enabled": self.quota_enabled,
                          "state": "on" if self.quota_enabled else "off"},
                "_links": {"self": {"href": f"/api/storage/volumes/{VOLUME_UUID}"}}}

    def list_volumes(self, request: Request) -> Response:
        records = [self.volume_record()]
        return self.collection([r for r in records if self.matches(r, request.query)],
                               request.path)

    def get_volume(self, request: Request) -> Response:
        if request.params["uuid"] != VOLUME_UUID:
            raise HTTPError(404, f"A volume with UUID {request.params['uuid']} was not found",
                            "918235")
        return Response(200, self.volume_record())

    def patch_volume(self, request: Request) -> Response:
        self.get_volume(request)
        body = self.flat(request.body)
        if "quota.enabled" not in body:
            raise HTTPError(400, "You must provide one or more values to apply your changes",
                            "262190")
        enable = body["quota.enabled"]
        if isinstance(enable, str):
            enable = enable.lower() == "true"

        def apply() -> None:
            if enable and self.quota_enabled:
                raise HTTPError(400, f'Quotas are already ON for volume "{VOLUME}" in '
                                f'Vserver "{SVM}".', QUOTA_ALREADY_ON)
            self.quota_enabled = bool(enable)

        return self.job(f"PATCH /api/storage/volumes/{VOLUME_UUID}", apply)

    # -- qtrees ------------------------------------------------------------------------------

    def list_qtrees(self, request: Request) -> Response:
        records = [q for q in self.qtrees.values() if self.matches(q, request.query)]
        return self.collection(records, request.path)

    def the_qtree(self, request: Request) -> dict[str, Any]:
        if request.params["volume"] != VOLUME_UUID:
            raise HTTPError(404, f"A volume with UUID {request.params['volume']} was not "
                            "found", "918235")
        try:
            qtree_id = int(request.params["id"])
        except ValueError:
            raise HTTPError(400, f'Invalid value "{request.params["id"]}" for field "id"',
                            "2") from None
        if qtree_id == 0:
            raise HTTPError(400, "The default qtree cannot be deleted.", "5242894")
        qtree = self.qtrees.get(qtree_id)
        if qtree is None:
            raise HTTPError(404, f'Qtree with ID {qtree_id} not found in volume "{VOLUME}"',
                            "4")
        return qtree

    def get_qtree(self, request: Request) -> Response:
        return Response(200, self.the_qtree(request))

    def post_qtree(self, request: Request) -> Response:
        body = self.flat(request.body)
        self.check_svm_volume(body)
        name = body.get("name")
        if not isinstance(name, str) or not name or "/" in name or len(name) > 64:
            raise HTTPError(400, f'Invalid value "{name}" for field "name"', "2")
        if self.qtree_by_name(name) is not None or (self.root / name).exists():
            raise HTTPError(409, f'Qtree "{name}" already exists in volume "{VOLUME}" of '
                            f'Vserver "{SVM}".', "1")
        perms = body.get("unix_permissions", 755)
        try:
            mode = int(str(perms), 8)
        except ValueError:
            raise HTTPError(400, f'Invalid value "{perms}" for field "unix_permissions"',
                            "2") from None
        uid, gid = body.get("user.id"), body.get("group.id")

        def apply() -> None:
            if self.qtree_by_name(name) is not None:
                raise HTTPError(409, f'Qtree "{name}" already exists.', "1")
            path = self.root / name
            path.mkdir()
            os.chmod(path, mode)
            if uid is not None or gid is not None:
                with contextlib.suppress(PermissionError):
                    os.chown(path, -1 if uid is None else int(uid),
                             -1 if gid is None else int(gid))
            qtree_id = self.next_qtree_id
            self.next_qtree_id += 1
            self.qtrees[qtree_id] = {
                "id": qtree_id, "name": name, "path": f"/{VOLUME}/{name}",
                "security_style": body.get("security_style", "unix"),
                "unix_permissions": int(str(perms)),
                "svm": {"name": SVM, "uuid": SVM_UUID},
                "volume": {"name": VOLUME, "uuid": VOLUME_UUID},
                "_links": {"self": {"href": f"/api/storage/qtrees/{VOLUME_UUID}/{qtree_id}"}}}

        return self.job("POST /api/storage/qtrees", apply)

    def delete_qtree(self, request: Request) -> Response:
        qtree = self.the_qtree(request)

        def apply() -> None:
            if self.qtrees.pop(qtree["id"], None) is None:
                raise HTTPError(400, "Failed to delete the qtree.", "5242895")
            shutil.rmtree(self.root / qtree["name"], ignore_errors=True)
            for rule_uuid in [u for u, r in self.rules.items()
                              if r["qtree"]["name"] == qtree["name"]]:
                del self.rules[rule_uuid]

        return self.job(f"DELETE /api/storage/qtrees/{VOLUME_UUID}/{qtree['id']}", apply)

    # -- quota rules -------------------------------------------------------------------------

    def list_rules(self, request: Request) -> Response:
        records = [r for r in self.rules.values() if self.matches(r, request.query)]
        return self.collection(records, request.path)

    def the_rule(self, request: Request) -> dict[str, Any]:
        rule = self.rules.get(request.params["uuid"])
        if rule is None:
            raise HTTPError(404, "The specified quota rule UUID is invalid.", "5308545")
        return rule

    def get_rule(self, request: Request) -> Response:
        return Response(200, self.the_rule(request))

    def post_rule(self, request: Request) -> Response:
        body = self.flat(request.body)
        self.check_svm_volume(body)
        if body.get("type") != "tree":
            raise HTTPError(400, f'Invalid value "{body.get("type")}" for field "type" (the '
                            "emulator has tree rules only)", "2")
        name = body.get("qtree.name")
        if not isinstance(name, str):
            raise HTTPError(400, 'Missing value: "qtree.name"', "262177")
        if name and self.qtree_by_name(name) is None:
            raise HTTPError(404, f'Qtree "{name}" does not exist in volume "{VOLUME}" of '
                            f'Vserver "{SVM}".', "4")
        if any(r["qtree"]["name"] == name for r in self.rules.values()):
            raise HTTPError(409, f'Duplicate tree quota rule for qtree "{name}" in volume '
                            f'"{VOLUME}".', "1")
        space = {k: v for k, v in (
            ("hard_limit", self.limit(body.get("space.hard_limit"), "space.hard_limit")),
            ("soft_limit", self.limit(body.get("space.soft_limit"), "space.soft_limit")),
        ) if v}
        rule_uuid = str(uuid.uuid4())

        def apply() -> None:
            if any(r["qtree"]["name"] == name for r in self.rules.values()):
                raise HTTPError(409, f'Duplicate tree quota rule for qtree "{name}".', "1")
            self.rules[rule_uuid] = {
                "uuid": rule_uuid, "type": "tree", "qtree": {"name": name},
                "svm": {"name": SVM, "uuid": SVM_UUID},
                "volume": {"name": VOLUME, "uuid": VOLUME_UUID}, "space": space, "files": {},
                "_links": {"self": {"href": f"/api/storage/quota/rules/{rule_uuid}"}}}

        return self.job("POST /api/storage/quota/rules", apply)

    def patch_rule(self, request: Request) -> Response:
        rule = self.the_rule(request)
        body = self.flat(request.body)
        changes = {k.split(".", 1)[1]: self.limit(v, k) for k, v in body.items()
                   if k in ("space.hard_limit", "space.soft_limit")}
        if not changes:
            raise HTTPError(400, "You must provide one or more values to apply your changes",
                            "262190")

        def apply() -> None:
            for key, value in changes.items():
                if value:
                    rule["space"][key] = value
                else:
                    rule["space"].pop(key, None)

        return self.job(f"PATCH /api/storage/quota/rules/{rule['uuid']}", apply)

    def delete_rule(self, request: Request) -> Response:
        rule = self.the_rule(request)

        def apply() -> None:
            if self.rules.pop(rule["uuid"], None) is None:
                raise HTTPError(404, "The specified quota rule UUID is invalid.", "5308545")

        return self.job(f"DELETE /api/storage/quota/rules/{rule['uuid']}", apply)

    # -- reports -----------------------------------------------------------------------------

    def list_reports(self, request: Request) -> Response:
        records = []
        if self.quota_enabled:
            for index, rule in enumerate(self.rules.values(), start=1):
                qtree = self.qtree_by_name(rule["qtree"]["name"])
                if qtree is None:
                    continue
                path = self.root / qtree["name"]
                used = allocated_bytes(path)
                space: dict[str, Any] = {"used": {"total": used}}
                for key in ("hard_limit", "soft_limit"):
                    if rule["space"].get(key):
                        space[key] = rule["space"][key]
                        space["used"][f"{key}_percent"] = used * 100 // rule["space"][key]
                records.append({
                    "svm": {"name": SVM, "uuid": SVM_UUID},
                    "volume": {"name": VOLUME, "uuid": VOLUME_UUID},
                    "index": index, "type": "tree",
                    "qtree": {"name": qtree["name"], "id": qtree["id"]},
                    "space": space, "files": {"used": {"total": inodes(path) + 1}},
                    "_links": {"self": {"href": f"/api/storage/quota/reports/{VOLUME_UUID}/"
                                                f"{index}"}}})
        return self.collection([r for r in records if self.matches(r, request.query)],
                               request.path)


def make_app(root: Path) -> EmulatorApp:
    return ONTAPEmulator(root)

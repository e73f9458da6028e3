"""A Dell PowerScale OneFS PAPI emulator: SmartQuotas directory quotas.

Follows the OneFS API reference as Dell's generated SDK documents it (Isilon/isilon_sdk_python
docs: QuotaApi.md — `POST/GET /platform/{v}/quota/quotas`, `GET/PUT/DELETE
/platform/{v}/quota/quotas/{id}`; QuotaQuotaCreateParams, QuotaQuotaExtended,
QuotaQuotaThresholds, QuotaQuotaUsage) and the PAPI error convention (an `errors` list of
`{"code": "AEC_…", "message": …}`, AEC_BAD_REQUEST 400, AEC_UNAUTHORIZED 401,
AEC_NOT_FOUND 404, AEC_CONFLICT 409, AEC_SERVICE_UNAVAILABLE 503, AEC_EXCEPTION 500).

- Auth: HTTP basic on every request (`USER`/`PASSWORD`); anything else is 401
  AEC_UNAUTHORIZED.
- `/ifs` paths: `IFS_ROOT` is the emulator's `root` (the gateway's SOURCE, as the NFS export
  of that directory would be). A quota's path must be an existing directory there (404
  AEC_NOT_FOUND otherwise, 400 for a path outside /ifs); one directory quota per path and
  `include_snapshots` (409 AEC_CONFLICT); unknown fields are refused (400).
- A child's hard threshold may not exceed an ancestor directory quota's hard threshold unless
  `ignore_limit_checks` (400 AEC_BAD_REQUEST), as OneFS checks nested quotas.
- Usage is computed from the directory at each read: `fslogical`/`applogical` = the sum of
  file sizes (OneFS's logical size, `common.logical_bytes`), `fsphysical`/`physical` =
  allocated blocks, `inodes` = entries below plus the directory.
- PUT merges the given fields (thresholds key by key; null clears one); DELETE removes.
- Vendor faults: `notready`, the next matching GET answers its quota(s) as OneFS does while
  a QuotaScan job runs (`ready: false`, `usage.*_ready: false`, figures 0); `lost`, the
  request is carried out but answered 503, as when an answer is lost after the change.

The emulator cannot enforce a hard threshold on a local directory (no EDQUOT at the limit):
the behaviour suite's EDQUOT-at-the-limit check cannot run against it; OneFS enforces on the
real appliance.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path, PurePosixPath
from typing import Any

from emulators.common import (
    EmulatorApp,
    Fault,
    HTTPError,
    Request,
    Response,
    allocated_bytes,
    inodes,
    logical_bytes,
)

TLS = True
USER = "fusegw-papi"
PASSWORD = "Emulated-OneFS-Pa55"
IFS_ROOT = "/ifs/data/fusegw"
QUOTA_TYPES = ("directory", "user", "group", "default-user", "default-group")
CREATE_FIELDS = {"path", "type", "thresholds", "thresholds_on", "enforced",
                 "include_snapshots", "container", "force", "ignore_limit_checks", "linked",
                 "persona", "thresholds_include_overhead"}
UPDATE_FIELDS = {"thresholds", "thresholds_on", "enforced", "container", "force",
                 "ignore_limit_checks", "linked", "thresholds_include_overhead"}
THRESHOLDS = {"hard", "soft", "advisory", "soft_grace", "percent_advisory", "percent_soft"}
THRESHOLDS_ON = ("applogicalsize", "fslogicalsize", "physicalsize")
AEC = {400: "AEC_BAD_REQUEST", 401: "AEC_UNAUTHORIZED", 403: "AEC_FORBIDDEN",
       404: "AEC_NOT_FOUND", 409: "AEC_CONFLICT", 503: "AEC_SERVICE_UNAVAILABLE"}


def gateway_options(url: str) -> dict[str, Any]:
    """The storage proxy's option names, pointing at this emulator."""
    return {"dell_endpoint": url, "dell_admin": USER, "dell_password": PASSWORD,
            "dell_api_version": "12", "dell_ifs_path": IFS_ROOT, "dell_system_name": "nfs"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class OneFSEmulator(EmulatorApp):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.quotas: dict[str, dict[str, Any]] = {}
        self.not_ready = 0
        base = "/platform/{v}/quota/quotas"
        self.route("GET", base, self.list_quotas)
        self.route("POST", base, self.create_quota)
        self.route("GET", base + "/{qid}", self.get_quota)
        self.route("PUT", base + "/{qid}", self.update_quota)
        self.route("DELETE", base + "/{qid}", self.delete_quota)

    # -- the common hooks ------------------------------------------------------------------

    def error_body(self, status: int, message: str, code: Any) -> Any:
        aec = code if isinstance(code, str) else AEC.get(status, "AEC_EXCEPTION")
        return {"errors": [{"code": aec, "message": message}]}

    def authorize(self, request: Request) -> None:
        if request.headers.get("authorization") != basic(USER, PASSWORD):
            raise HTTPError(401, "Authorization required", "AEC_UNAUTHORIZED")

    def state(self) -> Any:
        return {"quotas": sorted(
            ({"id": q["id"], "path": q["path"], "type": q["type"],
              "hard": q["thresholds"].get("hard"), "enforced": q["enforced"],
              "thresholds_on": q["thresholds_on"]} for q in self.quotas.values()),
            key=lambda q: str(q["path"]))}

    async def vendor_fault(self, fault: Fault, request: Request) -> Response | None:
        if fault.kind == "notready":
            self.not_ready += 1
            return None  # the request is answered, as not ready
        if fault.kind == "lost":  # done, but the answer lost: a 503 instead of it
            self.authorize(request)
            for method, regex, handler in self.routes:
                match = regex.match(request.path)
                if match and method == request.method:
                    request.params = match.groupdict()
                    handler(request)
                    break
            return Response(503, self.error_body(503, "emulated failure after the change",
                                                 None))
        return None

    # -- paths ---------------------------------------------------------------------------------

    def local(self, ifs_path: str) -> Path:
        path = PurePosixPath(ifs_path)
        if not path.is_absolute() or path.parts[:2] != ("/", "ifs") or ".." in path.parts:
            raise HTTPError(400, f"Path '{ifs_path}' must be an absolute path within /ifs")
        try:
            rel = path.relative_to(IFS_ROOT)
        except ValueError:
            raise HTTPError(404, f"Path '{ifs_path}' does not exist") from None
        local = self.root / rel
        if not local.is_dir():
            raise HTTPError(404, f"Path '{ifs_path}' does not exist or is not a directory")
        return local

    # -- rendering -----------------------------------------------------------------------------

    def render(self, q: dict[str, Any]) -> dict[str, Any]:
        local = self.root / PurePosixPath(q["path"]).relative_to(IFS_ROOT)
        ready = True
        if self.not_ready:
            self.not_ready -= 1
            ready = False
        logical = physical = count = 0
        if ready and local.is_dir():
            logical = logical_bytes(local)
            physical = allocated_bytes(local)
            count = inodes(local) + 1
        thresholds = {k: q["thresholds"].get(k) for k in
                      ("advisory", "hard", "soft", "soft_grace", "percent_advisory",
                       "percent_soft")}
        thresholds.update(advisory_exceeded=False, hard_exceeded=bool(
            thresholds["hard"] is not None and logical > thresholds["hard"]),
            soft_exceeded=False, advisory_last_exceeded=None, hard_last_exceeded=None,
            soft_last_exceeded=None)
        return {
            "id": q["id"], "path": q["path"], "type": q["type"], "persona": q["persona"],
            "enforced": q["enforced"], "include_snapshots": q["include_snapshots"],
            "container": q["container"], "linked": False, "notifications": "default",
            "ready": ready, "thresholds_on": q["thresholds_on"], "thresholds": thresholds,
            "description": "", "efficiency_ratio": None, "reduction_ratio": None,
            "usage": {"applogical": logical, "applogical_ready": ready,
                      "fslogical": logical, "fslogical_ready": ready,
                      "fsphysical": physical, "fsphysical_ready": ready,
                      "inodes": count, "inodes_ready": ready,
                      "physical": physical, "physical_data": physical,
                      "physical_data_ready": ready, "physical_protection": 0,
                      "physical_protection_ready": ready, "physical_ready": ready,
                      "shadow_refs": 0, "shadow_refs_ready": ready},
        }

    # -- checks --------------------------------------------------------------------------------

    @staticmethod
    def check_fields(body: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise HTTPError(400, "Request body must be a JSON object")
        for key in body:
            if key not in allowed:
                raise HTTPError(400, f"Field: {key} is not a valid field for this resource")
        return body

    @staticmethod
    def check_thresholds(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise HTTPError(400, "Field: thresholds must be an object")
        for key, v in value.items():
            if key not in THRESHOLDS:
                raise HTTPError(400, f"Field: thresholds.{key} is not a valid field")
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise HTTPError(400, f"Field: thresholds.{key} must be a non-negative "
                                "integer")
        return value

    def check_parents(self, path: str, hard: int | None, ignore: bool, own: str = "") -> None:
        """A child's hard threshold may not exceed an enclosing quota's."""
        if hard is None or ignore:
            return
        p = PurePosixPath(path)
        for q in self.quotas.values():
            parent_hard = q["thresholds"].get("hard")
            if (q["id"] != own and q["type"] == "directory" and parent_hard is not None
                    and PurePosixPath(q["path"]) in p.parents and hard > parent_hard):
                raise HTTPError(400, f"The hard threshold {hard} of '{path}' exceeds the hard "
                                f"threshold {parent_hard} of the parent quota on "
                                f"'{q['path']}'")

    def quota(self, request: Request) -> dict[str, Any]:
        q = self.quotas.get(request.params["qid"])
        if q is None:
            raise HTTPError(404, f"Quota {request.params['qid']} not found")
        return q

    # -- handlers ------------------------------------------------------------------------------

    def list_quotas(self, request: Request) -> Response:
        query = request.query
        found = list(self.quotas.values())
        if "path" in query:
            want = PurePosixPath(query["path"])
            children = query.get("recurse_path_children") == "true"
            parents = query.get("recurse_path_parents") == "true"
            found = [q for q in found if PurePosixPath(q["path"]) == want
                     or (children and want in PurePosixPath(q["path"]).parents)
                     or (parents and PurePosixPath(q["path"]) in want.parents)]
        if "type" in query:
            found = [q for q in found if q["type"] == query["type"]]
        for key in ("enforced", "include_snapshots"):
            if key in query:
                found = [q for q in found if q[key] == (query[key] == "true")]
        rendered = [self.render(q) for q in sorted(found, key=lambda q: str(q["path"]))]
        return Response(200, {"quotas": rendered, "resume": None, "total": len(rendered)})

    def create_quota(self, request: Request) -> Response:
        body = self.check_fields(request.body, CREATE_FIELDS)
        for key in ("path", "type", "enforced", "include_snapshots"):
            if key not in body:
                raise HTTPError(400, f"Field: {key} is required")
        if body["type"] not in QUOTA_TYPES:
            raise HTTPError(400, f"Field: type has an invalid value '{body['type']}'")
        if body["type"] != "directory":
            raise HTTPError(400, "This emulator implements directory quotas only")
        path = str(body["path"]).rstrip("/") or "/"
        self.local(path)
        thresholds = self.check_thresholds(body.get("thresholds") or {})
        on = body.get("thresholds_on", "fslogicalsize")
        if on not in THRESHOLDS_ON:
            raise HTTPError(400, f"Field: thresholds_on has an invalid value '{on}'")
        snaps = bool(body["include_snapshots"])
        for q in self.quotas.values():
            if q["path"] == path and q["type"] == "directory" and q["include_snapshots"] == snaps:
                raise HTTPError(409, f"Quota already exists on '{path}' (id {q['id']})")
        self.check_parents(path, thresholds.get("hard"), bool(body.get("ignore_limit_checks")))
        qid = "AAB" + secrets.token_hex(12).upper()
        self.quotas[qid] = {
            "id": qid, "path": path, "type": "directory", "persona": None,
            "enforced": bool(body["enforced"]), "include_snapshots": snaps,
            "container": bool(body.get("container", False)), "thresholds_on": on,
            "thresholds": {k: v for k, v in thresholds.items() if v is not None}}
        return Response(201, {"id": qid})

    def get_quota(self, request: Request) -> Response:
        return Response(200, {"quotas": [self.render(self.quota(request))]})

    def update_quota(self, request: Request) -> Response:
        q = self.quota(request)
        body = self.check_fields(request.body, UPDATE_FIELDS)
        thresholds = dict(q["thresholds"])
        if "thresholds" in body:
            for key, value in self.check_thresholds(body["thresholds"]).items():
                if value is None:
                    thresholds.pop(key, None)
                else:
                    thresholds[key] = value
        on = body.get("thresholds_on", q["thresholds_on"])
        if on not in THRESHOLDS_ON:
            raise HTTPError(400, f"Field: thresholds_on has an invalid value '{on}'")
        self.check_parents(q["path"], thresholds.get("hard"),
                           bool(body.get("ignore_limit_checks")), q["id"])
        q["thresholds"] = thresholds
        q["thresholds_on"] = on
        for key in ("enforced", "container"):
            if key in body:
                q[key] = bool(body[key])
        return Response(204)

    def delete_quota(self, request: Request) -> Response:
        q = self.quota(request)
        del self.quotas[q["id"]]
        return Response(204)


def make_app(root: Path) -> EmulatorApp:
    return OneFSEmulator(root)

"""An emulator of a Pure Storage FlashBlade's management API (Purity//FB REST 1.x).

It follows Pure's purity_fb Python SDK documentation (purity-fb.readthedocs.io: the
AuthenticationApi `login`/`logout`, FileSystemsApi `list_file_systems` and the performance
listing; the models FileSystemResponse, FileSystem, Space, FileSystemPerformance,
PaginationInfo and, for errors, ErrorResponse/PureError of REST 1.8) and the calls the storage
proxy's `purestorage/purity.py` makes:

    GET  /api/api_version                       {"versions": [...]}, no session needed
    POST /api/login         header api-token    200 {"username": ...}, header x-auth-token;
                                                a wrong token: 401
    POST /api/logout        header x-auth-token ends the session
    GET  /api/{v}/file-systems?names=A,B        {"pagination_info", "total", "items"}
    GET  /api/{v}/file-systems/performance?names=A&protocol=NFS
    GET  /api/{v}/arrays                        the array (the storage proxy's hwinfo)

Every other request needs a live session's `x-auth-token` (401 otherwise); `limit`/`token`
page listings as Purity does (`continuation_token`). A named object that does not exist is a
400, an unknown API version a 404. Errors have Purity's shape:
`{"error": [{"code": N, "context": ..., "message": ...}]}`.

The file system `FB-NFS1` is the exported directory (`root`): its `space.total_physical` and
`unique` are what `du -s -B1` counts there (`allocated_bytes`), `space.virtual` the logical
sizes; it is provisioned `PROVISIONED` bytes. A second file system, `FB-NFS2`, is empty, so
that `names=` has something to filter out. Performance figures are fixed numbers.

Nothing is enforced here, as on a real FlashBlade (no directory quota): the gateway's ledger is
the enforcer for `purestorage`, so the behaviour suite's EDQUOT check does run against this
backend. Faults: the common ones, and `expire_token` (every session expires at the matching
request, which is then answered 401 as an expired session is).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from emulators.common import (
    EmulatorApp,
    Fault,
    HTTPError,
    Request,
    Response,
    allocated_bytes,
    logical_bytes,
)

TLS = False
API_TOKEN = "T-5a1f0c3e-7d2b-4e59-9c81-2f6a0b4d7e13"
USERNAME = "pureuser"
FS_NAME = "FB-NFS1"
OTHER_FS = "FB-NFS2"
PROVISIONED = 50 * 2**40
VERSIONS = ["1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8", "1.9", "1.10",
            "1.11", "1.12"]
PERFORMANCE = {"reads_per_sec": 1520.0, "writes_per_sec": 830.0,
               "read_bytes_per_sec": 412_000_000.0, "write_bytes_per_sec": 97_500_000.0,
               "usec_per_read_op": 410.5, "usec_per_write_op": 905.25,
               "others_per_sec": 60.0, "usec_per_other_op": 120.0}
OPEN = ("/api/login", "/api/api_version")


def gateway_options(url: str) -> dict[str, Any]:
    """The storage proxy's `purity_*` options pointing at this emulator."""
    return {"purity_endpoint": url, "purity_api_token": API_TOKEN,
            "purity_api_version": "1.8", "purity_fs_name": FS_NAME}


class FlashBlade(EmulatorApp):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.sessions: dict[str, str] = {}  # x-auth-token -> username
        self.logins = 0
        self.failed_logins = 0
        self.expired = 0
        self.headers_log: list[dict[str, str]] = []  # the credential headers, per request
        self.route("GET", "/api/api_version", self.api_version)
        self.route("POST", "/api/login", self.login)
        self.route("POST", "/api/logout", self.logout)
        self.route("GET", "/api/{version}/file-systems", self.file_systems)
        self.route("GET", "/api/{version}/file-systems/performance", self.fs_performance)
        self.route("GET", "/api/{version}/arrays", self.arrays)

    # -- the vendor's shapes --------------------------------------------------------------------

    def error_body(self, status: int, message: str, code: Any) -> Any:
        context = None
        if isinstance(code, tuple):
            code, context = code
        return {"error": [{"code": code, "context": context, "message": message}]}

    def authorize(self, request: Request) -> None:
        if request.path in OPEN:
            return
        if request.headers.get("x-auth-token") not in self.sessions:
            raise HTTPError(401, "Authentication failed: the x-auth-token is invalid or "
                            "has expired; log in again", 401)

    async def vendor_fault(self, fault: Fault, request: Request) -> Response | None:
        if fault.kind == "expire_token":
            self.expired += len(self.sessions)
            self.sessions.clear()
            return None  # the request goes on, and finds its session gone
        raise AssertionError(f"unknown fault kind {fault.kind!r}")

    def state(self) -> Any:
        return {"file_systems": [FS_NAME, OTHER_FS], "sessions": len(self.sessions),
                "logins": self.logins, "failed_logins": self.failed_logins,
                "expired_sessions": self.expired}

    # -- the request log, with the credential headers (for the exact-request tests) --------------

    async def _answer(self, request: Request, send: Any) -> Response | None:
        if not request.path.startswith("/_emulator/"):  # logged by the base, in this order
            self.headers_log.append({k: request.headers[k] for k in ("api-token",
                                     "x-auth-token") if k in request.headers})
        return await super()._answer(request, send)

    def _control(self, request: Request) -> Response:
        if request.path == "/_emulator/requests":
            return Response(200, [{**entry, "headers": headers} for entry, headers
                                  in zip(self.log, self.headers_log, strict=True)])
        return super()._control(request)

    # -- handlers -------------------------------------------------------------------------------

    def api_version(self, request: Request) -> Response:
        return Response(200, {"versions": VERSIONS})

    def login(self, request: Request) -> Response:
        if request.headers.get("api-token") != API_TOKEN:
            self.failed_logins += 1
            raise HTTPError(401, "Authentication failed: invalid API token", 401)
        token = str(uuid.uuid4())
        self.sessions[token] = USERNAME
        self.logins += 1
        return Response(200, {"username": USERNAME}, {"x-auth-token": token})

    def logout(self, request: Request) -> Response:
        self.sessions.pop(request.headers.get("x-auth-token", ""), None)
        return Response(200, {})

    def _version(self, request: Request) -> None:
        if request.params["version"] not in VERSIONS:
            raise HTTPError(404, f"API version {request.params['version']} is not supported",
                            404)

    def _file_system(self, name: str) -> dict[str, Any]:
        if name == FS_NAME:
            physical, virtual = allocated_bytes(self.root), logical_bytes(self.root)
            provisioned, created = PROVISIONED, 1_700_000_000_000
        else:
            physical = virtual = 0
            provisioned, created = 10 * 2**40, 1_700_000_500_000
        return {"name": name, "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                "created": created, "provisioned": provisioned, "destroyed": False,
                "fast_remove_directory_enabled": False, "snapshot_directory_enabled": True,
                "hard_limit_enabled": False, "time_remaining": None,
                "nfs": {"enabled": True, "v3_enabled": True, "v4_1_enabled": False,
                        "rules": "*(rw,no_root_squash)"},
                "http": {"enabled": False}, "smb": {"enabled": False, "acl_mode": "shared"},
                "space": {"virtual": virtual, "unique": physical, "snapshots": 0,
                          "total_physical": physical,
                          "data_reduction": round(virtual / physical, 2) if physical else 1.0}}

    def _named(self, request: Request) -> list[str]:
        names = [n for n in request.query.get("names", "").split(",") if n]
        for name in names:
            if name not in (FS_NAME, OTHER_FS):
                raise HTTPError(400, "File system does not exist.", (400, name))
        return names or [FS_NAME, OTHER_FS]

    def _page(self, request: Request, items: list[dict[str, Any]], total: Any) -> Response:
        start = int(request.query.get("token") or 0)
        limit = int(request.query.get("limit") or request.query.get("items_returned") or 0)
        end = start + limit if limit else len(items)
        more = str(end) if end < len(items) else None
        return Response(200, {"pagination_info": {"continuation_token": more,
                                                  "total_item_count": len(items)},
                              "total": total, "items": items[start:end]})

    def file_systems(self, request: Request) -> Response:
        self._version(request)
        items = [self._file_system(n) for n in self._named(request)]
        space = {k: sum(i["space"][k] for i in items)
                 for k in ("virtual", "unique", "snapshots", "total_physical")}
        total = {"name": None, "provisioned": sum(i["provisioned"] for i in items),
                 "space": space}
        return self._page(request, items, total)

    def fs_performance(self, request: Request) -> Response:
        self._version(request)
        protocol = request.query.get("protocol")
        if protocol not in (None, "NFS", "HTTP", "S3", "SMB"):
            raise HTTPError(400, f"Invalid protocol: {protocol}", (400, protocol))
        now = int(time.time() * 1000)
        items = [{"name": n, "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, n)), "time": now,
                  **(PERFORMANCE if n == FS_NAME else dict.fromkeys(PERFORMANCE, 0.0))}
                 for n in self._named(request)]
        return self._page(request, items, None)

    def arrays(self, request: Request) -> Response:
        self._version(request)
        item = {"id": "0d3a7c2e-6a44-4f6e-9d6b-3bd1c2f0a011", "name": "fb-emulated",
                "os": "Purity//FB", "revision": "202301010000+emulated", "version": "3.3.3"}
        return self._page(request, [item], None)


def make_app(root: Path) -> FlashBlade:
    return FlashBlade(root)

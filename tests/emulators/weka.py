"""An emulator of the WEKA management API's parts the `weka` backend uses.

It follows the WEKA REST API reference (v2, `/api/v2`, release 5.1: the Login, Filesystem and
Quota sections of the OpenAPI document WEKA publishes with the cluster, e.g. at
https://<cluster>:14000/api/v2/docs) and, for the JSON-RPC method `set_directory_quota` on
`/api/v1` (undocumented by WEKA), what the storage proxy sends
(src/ai/backend/storage/volumes/weka/weka_client.py). `root` stands for the mounted filesystem
`FS_NAME`: quotas are on its directories' inodes (st_ino), usage is counted from them.

- `POST /api/v2/login` {username, password, org} and `POST /api/v2/login/refresh`
  {refresh_token}: {"data": {access_token, refresh_token, expires_in, token_type,
  password_change_required}}; tokens expire after `token_lifetime` seconds (300; settable for
  the tests by `POST /_emulator/weka/config` {"token_lifetime": s}); a refresh hands out a new
  pair and invalidates the refresh token used. Everything else needs `Authorization: Bearer`
  with a live token, else 401 {"message": ..., "data": "Unauthorized"}.
- `GET /api/v2/fileSystems`, `GET /api/v2/fileSystems/{uid}`: two filesystems, `default` and
  `FS_NAME` (the one over `root`), with the documented capacity fields.
- `GET /api/v2/fileSystems/{uid}/quota`: the quotas (with `quota_id`).
- `GET|DELETE /api/v2/fileSystems/{uid}/quota/{inode_id}`: the directory's quota
  (`inode_id`, `used_bytes` and `total_bytes` = `du -s -B1` of the directory, `data_blocks`,
  `metadata_blocks`, `hard_limit_bytes`, `soft_limit_bytes`, `grace_seconds`, `status`, ...);
  a directory without one is answered as WEKA does, 500 {"message": "Directory has no
  quota"}; an inode that is no directory of the filesystem 404.
- `POST /api/v1` JSON-RPC 2.0, method `set_directory_quota` {inode_context, path,
  hard_limit_bytes, soft_limit_bytes, grace_seconds, activate}: `path` must be a directory
  of the filesystem whose inode is `inode_context`, limits non-negative integers (0 or absent:
  none), soft not above hard; errors as JSON-RPC error objects (HTTP 200; -32602 invalid
  params, -32601 unknown method, -32600 not a JSON-RPC request).
- Errors of the v2 API in WEKA's body: {"message": ..., "data": ...}.

A quota belongs to its directory: one whose directory was removed (or replaced: another
inode at its path) is no longer found by its inode, and `state()` lists it under
`detached_quotas`, a quota nobody removed through the API.

Faults (besides common.py's 5xx/timeout/drop): `expire_token` (every access token issued so
far stops being valid: the request it matched, and any other sent with such a token, gets
401), `expire_session` (the same, and the refresh tokens too: only a new login helps),
`reject` (the request is refused as invalid input: 400 in WEKA's body, or a JSON-RPC -32602
error on `/api/v1`).

Not emulated: enforcement (the emulator cannot make a local directory refuse writes past a
hard limit, so the behaviour suite's EDQUOT-at-the-limit check cannot run against it), soft
limits' grace periods, the v2 `PUT`/`PATCH` quota calls, default quotas, pagination, TLS
(WEKA serves HTTPS on 14000 usually; the backend's TLS handling is tested with other
vendors).
"""

from __future__ import annotations

import os
import secrets
import stat
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
    Send,
    allocated_bytes,
)

TLS = False
USERNAME = "fusegw-admin"
PASSWORD = "Weka-emulated-pass-42"
ORG = "Root"
FS_NAME = "fusegw-fs"
REFRESH_LIFETIME = 3600.0
NO_QUOTA = "Directory has no quota"


def gateway_options(url: str) -> dict[str, Any]:
    return {"weka_endpoint": url, "weka_username": USERNAME, "weka_password": PASSWORD,
            "weka_organization": ORG, "weka_fs_name": FS_NAME}


def make_app(root: Path) -> WekaEmulator:
    return WekaEmulator(root)


class WekaEmulator(EmulatorApp):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.token_lifetime = 300.0
        self.access: dict[str, float] = {}  # token -> expiry (monotonic)
        self.refresh: dict[str, float] = {}
        self.logins = 0
        self.refreshes = 0
        self.filesystems = [
            {"id": "FSId<0>", "name": "default", "uid": str(uuid.uuid4())},
            {"id": "FSId<1>", "name": FS_NAME, "uid": str(uuid.uuid4())},
        ]
        self.fs_uid = self.filesystems[1]["uid"]
        self.quotas: dict[int, dict[str, Any]] = {}  # inode id -> quota (with its path)
        self.route("POST", "/api/v2/login", self.login)
        self.route("POST", "/api/v2/login/refresh", self.login_refresh)
        self.route("GET", "/api/v2/fileSystems", self.list_fs)
        self.route("GET", "/api/v2/fileSystems/{uid}", self.get_fs)
        self.route("GET", "/api/v2/fileSystems/{uid}/quota", self.list_quotas)
        self.route("GET", "/api/v2/fileSystems/{uid}/quota/{inode_id}", self.get_quota)
        self.route("DELETE", "/api/v2/fileSystems/{uid}/quota/{inode_id}", self.delete_quota)
        self.route("POST", "/api/v1", self.jsonrpc)

    # -- the common hooks -----------------------------------------------------------------------

    def error_body(self, status: int, message: str, code: Any) -> Any:
        return {"message": message, "data": code if status != 401 else "Unauthorized"}

    def authorize(self, request: Request) -> None:
        if request.path in ("/api/v2/login", "/api/v2/login/refresh"):
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPError(401, "Authorization header missing or not a bearer token")
        expiry = self.access.get(token)
        if expiry is None or expiry < time.monotonic():
            self.access.pop(token, None)
            raise HTTPError(401, "Token expired or invalid")

    async def vendor_fault(self, fault: Fault, request: Request) -> Response | None:
        if fault.kind in ("expire_token", "expire_session"):
            self.access.clear()
            if fault.kind == "expire_session":
                self.refresh.clear()
            return None  # authorize() now answers the request 401
        if fault.kind == "reject":
            if request.path == "/api/v1":
                rpc_id = request.body.get("id") if isinstance(request.body, dict) else None
                return Response(200, _rpc_error(rpc_id, -32602, "Invalid params: hard_limit_"
                                                "bytes is refused by this cluster (emulated)"))
            return Response(400, self.error_body(
                400, "Invalid value (emulated refusal)", {"error": "emulated refusal"}))
        raise AssertionError(f"unknown fault kind {fault.kind!r}")

    async def _answer(self, request: Request, send: Send) -> Response | None:
        """The common answer, with its status and the Authorization header added to the
        request log (and the tokens handed out, for the exact-request tests)."""
        index = len(self.log)
        response = await super()._answer(request, send)
        if len(self.log) > index:  # logged: not a control request
            entry = self.log[index]
            entry["status"] = response.status if response is not None else None
            entry["authorization"] = request.headers.get("authorization")
            if request.path.startswith("/api/v2/login") and response is not None:
                entry["answer"] = response.body
        return response

    def _control(self, request: Request) -> Response:
        if request.path == "/_emulator/weka/config" and request.method == "POST":
            body = request.body or {}
            if "token_lifetime" in body:
                self.token_lifetime = float(body["token_lifetime"])
            return Response(204)
        return super()._control(request)

    def state(self) -> Any:
        live, detached = [], []
        for inode, quota in sorted(self.quotas.items()):
            (live if self._directory(inode) is not None else detached).append(
                {"inode_id": inode, "path": quota["path"],
                 "hard_limit_bytes": quota["hard_limit_bytes"],
                 "soft_limit_bytes": quota["soft_limit_bytes"], "status": quota["status"]})
        return {"filesystems": [fs["name"] for fs in self.filesystems], "quotas": live,
                "detached_quotas": detached, "logins": self.logins,
                "refreshes": self.refreshes, "live_access_tokens": len(self.access)}

    # -- login ----------------------------------------------------------------------------------

    def _tokens(self) -> Response:
        now = time.monotonic()
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access[access] = now + self.token_lifetime
        self.refresh[refresh] = now + REFRESH_LIFETIME
        return Response(200, {"data": {"access_token": access, "refresh_token": refresh,
                                       "expires_in": self.token_lifetime,
                                       "token_type": "Bearer",
                                       "password_change_required": False}})

    def login(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        missing = [k for k in ("username", "password") if not isinstance(body.get(k), str)]
        if missing:
            raise HTTPError(400, "Missing parameters", {"missing_params": missing})
        if (body["username"], body["password"], body.get("org", "Root")) != (
                USERNAME, PASSWORD, ORG):
            raise HTTPError(401, "Invalid username, password or organization")
        self.logins += 1
        return self._tokens()

    def login_refresh(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        token = body.get("refresh_token")
        if not isinstance(token, str):
            raise HTTPError(400, "Missing parameters", {"missing_params": ["refresh_token"]})
        expiry = self.refresh.pop(token, None)
        if expiry is None or expiry < time.monotonic():
            raise HTTPError(401, "Refresh token expired or invalid")
        self.refreshes += 1
        return self._tokens()

    # -- filesystems ----------------------------------------------------------------------------

    def _fs_json(self, fs: dict[str, str]) -> dict[str, Any]:
        ours = fs["uid"] == self.fs_uid
        st = os.statvfs(self.root)
        total = st.f_frsize * st.f_blocks if ours else 1 << 40
        used = st.f_frsize * (st.f_blocks - st.f_bavail) if ours else 4096
        return {**fs, "group_id": "FSGroupId<0>", "group_name": "default",
                "used_total_data": used, "used_total": used, "free_total": total - used,
                "available_total": total, "available_ssd_metadata": 0, "used_ssd": used,
                "free_ssd": total - used, "available_ssd": total, "ssd_budget": total,
                "total_budget": total, "status": "READY", "is_ready": True,
                "is_creating": False, "is_removing": False, "auth_required": False}

    def list_fs(self, request: Request) -> Response:
        return Response(200, {"data": [self._fs_json(fs) for fs in self.filesystems]})

    def _fs(self, request: Request) -> dict[str, str]:
        for fs in self.filesystems:
            if fs["uid"] == request.params["uid"]:
                return fs
        raise HTTPError(404, f"Filesystem {request.params['uid']} not found")

    def get_fs(self, request: Request) -> Response:
        return Response(200, {"data": self._fs_json(self._fs(request))})

    # -- quotas ---------------------------------------------------------------------------------

    def _directory(self, inode: int) -> Path | None:
        """The quota's directory, if it is still there (the same inode at its path)."""
        quota = self.quotas.get(inode)
        if quota is None:
            return None
        path = self.root / quota["path"].lstrip("/")
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return path if stat.S_ISDIR(st.st_mode) and st.st_ino == inode else None

    def _is_directory_inode(self, inode: int) -> bool:
        for top, dirs, _ in os.walk(self.root):
            if os.lstat(top).st_ino == inode:
                return True
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
        return False

    def _quota_json(self, inode: int, path: Path) -> dict[str, Any]:
        quota = self.quotas[inode]
        used = allocated_bytes(path)
        return {"inode_id": inode, "path": quota["path"],
                "full_path": f"{FS_NAME}:{quota['path']}", "fsName": FS_NAME,
                "used_bytes": used, "total_bytes": used, "data_blocks": -(-used // 4096),
                "metadata_blocks": 0, "hard_limit_bytes": quota["hard_limit_bytes"],
                "soft_limit_bytes": quota["soft_limit_bytes"],
                "grace_seconds": quota["grace_seconds"], "time_over_soft_limit": 0,
                "owner": USERNAME, "snap_view_id": 0, "status": quota["status"]}

    def _inode_param(self, request: Request) -> int:
        raw = request.params["inode_id"]
        if not raw.isdigit():
            raise HTTPError(400, "Invalid inode_id", {"param": "inode_id",
                                                      "error": "not an inode id"})
        return int(raw)

    def list_quotas(self, request: Request) -> Response:
        if self._fs(request)["uid"] != self.fs_uid:
            return Response(200, {"data": []})
        out = []
        for inode in sorted(self.quotas):
            path = self._directory(inode)
            if path is not None:
                out.append({"quota_id": f"{inode:#x}:0", **self._quota_json(inode, path)})
        return Response(200, {"data": out})

    def _lookup(self, request: Request) -> tuple[int, Path]:
        fs = self._fs(request)
        inode = self._inode_param(request)
        path = self._directory(inode) if fs["uid"] == self.fs_uid else None
        if path is None:
            if fs["uid"] == self.fs_uid and self._is_directory_inode(inode):
                raise HTTPError(500, NO_QUOTA)
            raise HTTPError(404, f"Inode {inode} not found in filesystem {fs['name']}")
        return inode, path

    def get_quota(self, request: Request) -> Response:
        inode, path = self._lookup(request)
        return Response(200, {"data": self._quota_json(inode, path)})

    def delete_quota(self, request: Request) -> Response:
        inode, path = self._lookup(request)
        answer = self._quota_json(inode, path)
        del self.quotas[inode]
        return Response(200, {"data": answer})

    # -- JSON-RPC (/api/v1) ---------------------------------------------------------------------

    def jsonrpc(self, request: Request) -> Response:
        body = request.body
        if not (isinstance(body, dict) and body.get("jsonrpc") == "2.0"
                and isinstance(body.get("method"), str)):
            return Response(200, _rpc_error(None, -32600, "Invalid Request"))
        rpc_id = body.get("id")
        if body["method"] != "set_directory_quota":
            return Response(200, _rpc_error(rpc_id, -32601,
                                            f"Method not found: {body['method']}"))
        params = body.get("params")
        if not isinstance(params, dict):
            return Response(200, _rpc_error(rpc_id, -32602, "Invalid params: not an object"))
        try:
            result = self._set_directory_quota(params)
        except ValueError as e:
            return Response(200, _rpc_error(rpc_id, -32602, f"Invalid params: {e}"))
        return Response(200, {"jsonrpc": "2.0", "result": result, "id": rpc_id})

    def _set_directory_quota(self, params: dict[str, Any]) -> dict[str, Any]:
        inode, rel = params.get("inode_context"), params.get("path")
        if not isinstance(inode, int) or isinstance(inode, bool):
            raise ValueError("inode_context must be an inode id")
        if not isinstance(rel, str) or not rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError("path must be an absolute path in the filesystem")
        path = self.root / rel.lstrip("/")
        try:
            st = os.lstat(path)
        except OSError:
            raise ValueError(f"path {rel} does not exist") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"path {rel} is not a directory")
        if st.st_ino != inode:
            raise ValueError(f"inode_context {inode} is not the inode of {rel}")
        limits = {}
        for key in ("hard_limit_bytes", "soft_limit_bytes", "grace_seconds"):
            value = params.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 0 <= value < 2**63):
                raise ValueError(f"{key} must be a non-negative integer")
            limits[key] = value or None
        hard, soft = limits["hard_limit_bytes"], limits["soft_limit_bytes"]
        if hard is not None and soft is not None and soft > hard:
            raise ValueError("soft_limit_bytes must not be above hard_limit_bytes")
        self.quotas[inode] = {"path": rel, **limits,
                              "status": "ACTIVE" if params.get("activate", True)
                              else "INACTIVE"}
        return self._quota_json(inode, path)


def _rpc_error(rpc_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": rpc_id}

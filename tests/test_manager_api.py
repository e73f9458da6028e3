"""The manager-API routes of issue 11 over a live gateway's Unix socket and TCP listener.

Shapes are the storage proxy's (lablup/backend.ai 23.03.7, `storage/api/manager.py`,
`storage/types.py`): `GET /volumes` entries with `fsprefix`, `GET /folder/fs-usage`
(`CapacityUsage`, the vfs backend's statvfs), `GET /volume/hwinfo` (`HardwareMetadata`:
metadata values are strings, the manager's typeguard checks that), `GET
/volume/performance-metric` (`{"metric": FSPerfMetric}`), `GET`/`PATCH /volume/quota` (400,
deprecated), `POST /folder/delete` (204, also when already gone), `GET /folder/mount` with
`subpath`. Every refusal is a 4xx problem+json with `msg` (= `detail`) and `error_code`
(`<domain>_<operation>_<detail>`, each word from Backend.AI's `ErrorDomain`, `ErrorOperation`,
`ErrorDetail` in ai/backend/common/exception.py, which newer managers parse with
`ErrorCode.from_str`), changes nothing and leaves the daemon serving. The health check's
"degraded" and "unavailable", the metric's arithmetic and the node endpoint's own refusals are
driven in-process with stand-ins.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
from conftest import Gateway, new_qsid, private_source, start_gateway, vfolder_rel
from test_folders import volume_state

from backends import BackendError
from fusegw import errors
from fusegw.control import routes
from fusegw.control.metrics import PerfSampler
from fusegw.control.routes import GATEWAY_CAPABILITIES, VolumeRoutes
from fusegw.scopes import Caller
from mountd.router import NodeApp

KiB, MiB = 2**10, 2**20
TOKEN = "manager-api-secret"
TOKEN_HEADER = "X-BackendAI-Storage-Auth-Token"
PROBS = "https://api.backend.ai/probs/storage/"
PROBLEM_JSON = "application/problem+json"
STORAGE_PROXY_CAPS = {"vfolder", "metric", "quota", "fast-fs-size", "fast-scan", "fast-size"}
"""storage/abc.py CAP_* of the storage proxy."""
METRIC_KEYS = ["io_bytes_read", "io_bytes_write", "io_usec_read", "io_usec_write",
               "iops_read", "iops_write"]
"""storage/types.py FSPerfMetric."""

# Backend.AI's error-code vocabulary (lablup/backend.ai c0032c472e, common/exception.py)
DOMAINS = {"vfolder", "quota-scope", "storage", "storage-proxy", "api", "auth"}
OPERATIONS = {"generic", "create", "access", "read", "update", "start", "soft-delete", "purge",
              "list-query", "auth", "hook", "request", "parsing", "execute", "schedule",
              "setup", "grant", "check-limit"}
DETAILS = {"bad-request", "not-found", "gone", "conflict", "already-exists",
           "invalid-parameters", "data-expired", "forbidden", "unauthorized", "not-ready",
           "invalid-data-format", "internal-error", "unavailable", "unreachable",
           "task-timeout", "canceled", "not-implemented", "deprecated", "mismatch", "timeout"}


def check_code(code: str) -> None:
    """`ErrorCode.from_str` would parse it: three known words joined by `_`."""
    parts = code.split("_")
    assert len(parts) == 3, code
    domain, operation, detail = parts
    assert domain in DOMAINS and operation in OPERATIONS and detail in DETAILS, code


# -- the live gateway, on both listeners -----------------------------------------------------


@pytest.fixture(scope="module")
def gw(public_dir: Path) -> Iterator[Gateway]:
    from conftest import free_port

    port = free_port()
    g = start_gateway(public_dir, "mgrapi", ["--tcp-listen", f"127.0.0.1:{port}"],
                      {"FUSEGW_AUTH_TOKEN": TOKEN})
    g.env["PORT"] = str(port)
    yield g
    g.stop()


@pytest.fixture(params=["unix", "tcp"])
def client(request: pytest.FixtureRequest, gw: Gateway) -> Iterator[httpx.Client]:
    """The gateway's Unix socket (peer credentials: root) or its TCP listener (the token)."""
    if request.param == "unix":
        c = gw.client()
    else:
        c = httpx.Client(base_url=f"http://127.0.0.1:{gw.env['PORT']}",
                         headers={TOKEN_HEADER: TOKEN}, timeout=30)
    with c:
        yield c


def send(c: httpx.Client, method: str, path: str, body: Any = None,
         **query: str) -> httpx.Response:
    return c.request(method, path, params=query or None,
                     content=None if body is None else json.dumps(body))


def problem(r: httpx.Response, status: int, type_: str | None = None,
            code: str | None = None) -> dict[str, Any]:
    """A refusal as the manager reads it: problem+json with msg and a parseable error_code."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers
    body: dict[str, Any] = r.json()
    assert body["type"].startswith(PROBS) and body["status"] == status, body
    assert isinstance(body["msg"], str) and body["msg"] and body["msg"] == body["detail"], body
    check_code(body["error_code"])
    if type_ is not None:
        assert body["type"] == PROBS + type_, body
    if code is not None:
        assert body["error_code"] == code, body
    return body


def serving(gw: Gateway) -> None:
    with gw.client() as c:
        assert c.get("/").json()["status"] == "ok"
    assert os.statvfs(gw.mountpoint).f_blocks > 0


@pytest.fixture
def vfolder(gw: Gateway) -> Iterator[tuple[str, Path]]:
    """A new vfolder (its vfid, its path in the mount) in a scope of its own."""
    qsid, fid = new_qsid(), uuid.uuid4().hex
    vfid = f"{qsid}/{fid}"
    r = gw.request("POST", "/folder/create", {"volume": gw.volume, "vfid": vfid})
    assert r.status_code == 204, r.text
    yield vfid, gw.mountpoint / vfolder_rel(qsid, fid)


# -- GET /volumes ------------------------------------------------------------------------------


def test_volumes_shape(gw: Gateway, client: httpx.Client) -> None:
    """One entry, the storage proxy's keys exactly; fsprefix "." (none configured); the
    capabilities in the storage proxy's names, what the gateway adds to the backend's."""
    r = send(client, "GET", "/volumes")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    (entry,) = r.json()["volumes"]
    assert entry == {"name": gw.volume, "backend": "vfs", "path": str(gw.mountpoint),
                     "fsprefix": ".", "capabilities": sorted(STORAGE_PROXY_CAPS)}, entry
    assert set(GATEWAY_CAPABILITIES) <= STORAGE_PROXY_CAPS


def test_volumes_fsprefix_from_the_config(public_dir: Path) -> None:
    """`[volume.NAME] fsprefix` of the node's configuration (the storage proxy's key) is
    what GET /volumes reports."""
    source = private_source(public_dir, "fsp")
    (public_dir / "fsp.mnt").mkdir()
    config = public_dir / "fsp.toml"
    config.write_text(f'[volume.fsp]\nbackend = "vfs"\npath = "{source}"\n'
                      'fsprefix = "vfolders"\n')
    g = Gateway(source, public_dir / "fsp.mnt", public_dir / "fsp.sock",
                public_dir / "fsp.log", "fsp", ["--config", str(config)])
    try:
        g.start()
        (entry,) = g.request("GET", "/volumes").json()["volumes"]
        assert entry["name"] == "fsp" and entry["fsprefix"] == "vfolders", entry
    finally:
        g.stop()


# -- GET /folder/fs-usage ----------------------------------------------------------------------


def test_fs_usage_shape(gw: Gateway, client: httpx.Client) -> None:
    """{capacity_bytes, used_bytes} of the backing volume's statvfs (as the storage proxy's
    vfs computes them), with the parameters in the body or in the query string."""
    for r in (send(client, "GET", "/folder/fs-usage", {"volume": gw.volume}),
              send(client, "GET", "/folder/fs-usage", volume=gw.volume)):
        assert r.status_code == 200, r.text
        usage = r.json()
        assert sorted(usage) == ["capacity_bytes", "used_bytes"], usage
        st = os.statvfs(gw.source)
        assert usage["capacity_bytes"] == st.f_frsize * st.f_blocks
        assert abs(usage["used_bytes"] - st.f_frsize * (st.f_blocks - st.f_bavail)) < 64 * MiB
        assert 0 < usage["used_bytes"] <= usage["capacity_bytes"]


# -- GET /volume/hwinfo ------------------------------------------------------------------------


def test_hwinfo_healthy_shape(gw: Gateway, client: httpx.Client) -> None:
    r = send(client, "GET", "/volume/hwinfo", {"volume": gw.volume})
    assert r.status_code == 200, r.text
    info = r.json()
    assert sorted(info) == ["metadata", "status", "status_info"], info
    assert info["status"] == "healthy" and info["status_info"] is None, info
    meta = info["metadata"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()), meta
    assert meta["backend"] == "vfs" and meta["mountpoint"] == str(gw.mountpoint), meta
    assert meta["accounting"] == "ready" and meta["state"] == "ok", meta
    assert float(meta["mount_statfs_ms"]) >= 0 and float(meta["volume_statfs_ms"]) >= 0


# -- GET /volume/performance-metric ------------------------------------------------------------


def test_performance_metric_counts_fuse_reads_and_writes(gw: Gateway,
                                                         vfolder: tuple[str, Path]) -> None:
    """FSPerfMetric from the gateway's own counters: a window from one answer to the next
    (at least a second apart) shows exactly the bytes written and read through the mount in
    it, per second, and their latency."""
    _, path = vfolder
    size = 512 * KiB
    with gw.client() as c:
        def metric() -> dict[str, Any]:
            r = send(c, "GET", "/volume/performance-metric", {"volume": gw.volume})
            assert r.status_code == 200, r.text
            assert sorted(r.json()) == ["metric"], r.text
            m: dict[str, Any] = r.json()["metric"]
            return m

        time.sleep(1.1)
        outer = time.monotonic()
        metric()  # the window starts here
        inner = time.monotonic()
        target = path / "perf.bin"
        data = os.urandom(size)
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            assert os.write(fd, data) == size
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the read must reach FUSE
            assert os.pread(fd, size, 0) == data
        finally:
            os.close(fd)
        time.sleep(max(0.0, 1.2 - (time.monotonic() - inner)))
        inner_end = time.monotonic()
        m = metric()
        outer_end = time.monotonic()
    assert sorted(m) == METRIC_KEYS, m
    for key in METRIC_KEYS:
        assert isinstance(m[key], float if key.startswith("io_usec") else int), m
    longest, shortest = outer_end - outer, inner_end - inner
    assert size / longest * 0.99 - 1 <= m["io_bytes_write"] <= size / shortest * 1.01 + 1, m
    assert size / longest * 0.99 - 1 <= m["io_bytes_read"] <= size / shortest * 1.01 + 1, m
    assert m["iops_write"] >= 1 and m["iops_read"] >= 1, m
    assert 0 < m["io_usec_write"] < shortest * 1e6 and 0 < m["io_usec_read"] < shortest * 1e6


def test_perf_sampler_windows() -> None:
    """Rates between two samples: since the start at first, then since the previous answer
    when that is at least a second old, else over the window before (never a tiny one)."""
    now = [100.0]
    requests: dict[str, int] = {}
    io = {"read_bytes": 0, "write_bytes": 0, "read_ns": 0, "write_ns": 0}
    sampler = PerfSampler(requests, io, clock=lambda: now[0])
    now[0] = 102.0
    requests.update(read=10, write=4)
    io.update(read_bytes=2000, write_bytes=800, read_ns=10_000_000, write_ns=2_000_000)
    assert sampler.metric() == {"iops_read": 5, "iops_write": 2, "io_bytes_read": 1000,
                                "io_bytes_write": 400, "io_usec_read": 1000.0,
                                "io_usec_write": 500.0}
    now[0] = 102.5  # half a second later: still the window 100..102.5
    assert sampler.metric()["iops_read"] == 4
    now[0] = 104.0  # nothing happened since 102
    assert sampler.metric() == dict.fromkeys(METRIC_KEYS, 0) | {"io_usec_read": 0.0,
                                                                "io_usec_write": 0.0}


# -- GET/PATCH /volume/quota -------------------------------------------------------------------


def test_volume_quota_is_deprecated(gw: Gateway, client: httpx.Client) -> None:
    """As the storage proxy: 400, the per-vfolder quota API is deprecated; its parameters are
    still checked first (a bad vfid or volume says so)."""
    vfid = f"{new_qsid()}/{uuid.uuid4().hex}"
    before = volume_state(gw)
    body = problem(send(client, "GET", "/volume/quota", {"volume": gw.volume, "vfid": vfid}),
                   400, "api/deprecated", "storage_read_deprecated")
    assert "deprecated" in body["msg"] and body["msg"].startswith("get_quota"), body
    body = problem(send(client, "PATCH", "/volume/quota",
                        {"volume": gw.volume, "vfid": vfid, "size_bytes": MiB}),
                   400, "api/deprecated", "storage_update_deprecated")
    assert body["msg"].startswith("set_quota"), body
    problem(send(client, "GET", "/volume/quota", {"volume": "nosuch"}), 404,
            "volume/not-found", "storage_read_not-found")
    problem(send(client, "PATCH", "/volume/quota", {"volume": gw.volume, "vfid": "x"}), 400,
            "invalid-api-params", "storage_update_invalid-parameters")
    assert volume_state(gw) == before
    serving(gw)


# -- POST /folder/delete -----------------------------------------------------------------------


def test_delete_is_idempotent(gw: Gateway, client: httpx.Client,
                              vfolder: tuple[str, Path]) -> None:
    """Deleting a vfolder that is gone (also in a scope that never was) is 204 and changes
    nothing; invalid IDs stay 400 and an unknown volume 404."""
    vfid, path = vfolder
    (path / "f").write_bytes(b"x" * 5000)
    r = send(client, "POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid})
    assert r.status_code == 204 and not path.exists(), r.text
    before = volume_state(gw)
    for target in (vfid, f"{new_qsid()}/{uuid.uuid4().hex}"):
        r = send(client, "POST", "/folder/delete", {"volume": gw.volume, "vfid": target})
        assert r.status_code == 204 and r.content == b"", r.text
    assert volume_state(gw) == before
    for bad in ("user:nope/abc", "user:" + str(uuid.uuid4()), 5, None):
        problem(send(client, "POST", "/folder/delete", {"volume": gw.volume, "vfid": bad}),
                400, "invalid-api-params", "vfolder_purge_invalid-parameters")
    problem(send(client, "POST", "/folder/delete", {"volume": gw.volume}), 400,
            "invalid-api-params", "vfolder_purge_invalid-parameters")
    problem(send(client, "POST", "/folder/delete", {"volume": "nosuch", "vfid": vfid}), 404,
            "volume/not-found", "storage_purge_not-found")
    assert volume_state(gw) == before
    serving(gw)


# -- GET /folder/mount with subpath ------------------------------------------------------------


def test_mount_subpath_resolved_inside_the_vfolder(gw: Gateway, client: httpx.Client,
                                                   vfolder: tuple[str, Path]) -> None:
    """The path answered is the mount's, with the subpath resolved on the backing side
    without following a link out: `..` and relative links inside the vfolder are followed,
    names not there yet are kept as written."""
    vfid, root = vfolder
    (root / "data" / "deep").mkdir(parents=True)
    (root / "file").write_bytes(b"f")
    (root / "link").symlink_to("data/deep")
    (root / "data" / "up").symlink_to("..")
    cases = {".": root, "data": root / "data", "data/": root / "data",
             "./data/./deep": root / "data" / "deep", "data/../data": root / "data",
             "link": root / "data" / "deep", "data/up/file": root / "file",
             "new/dir": root / "new" / "dir", "file": root / "file"}
    for subpath, want in cases.items():
        r = send(client, "GET", "/folder/mount",
                 {"volume": gw.volume, "vfid": vfid, "subpath": subpath})
        assert r.status_code == 200, (subpath, r.text)
        assert r.json() == {"path": str(want)}, (subpath, r.json())
    r = send(client, "GET", "/folder/mount", volume=gw.volume, vfid=vfid, subpath="data")
    assert r.json() == {"path": str(root / "data")}, r.text
    r = send(client, "GET", "/folder/mount", {"volume": gw.volume, "vfid": vfid})
    assert r.json() == {"path": str(root)}, r.text


def test_mount_subpath_escapes_are_400(gw: Gateway, client: httpx.Client,
                                       vfolder: tuple[str, Path]) -> None:
    vfid, root = vfolder
    (root / "data").mkdir()
    (root / "file").write_bytes(b"f")
    (root / "out").symlink_to("../../../..")
    (root / "abs").symlink_to(str(root))  # absolute: a host path, never followed
    (root / "loop").symlink_to("loop")
    before = volume_state(gw)
    for subpath in ("..", "../x", "data/../..", "/etc", "/", "out", "out/x", "abs",
                    "missing/../..", "loop", "file/x", "a\0b"):
        body = problem(send(client, "GET", "/folder/mount",
                            {"volume": gw.volume, "vfid": vfid, "subpath": subpath}),
                       400, "subpath/invalid", "vfolder_read_invalid-parameters")
        assert body["data"] == {"subpath": body["data"]["subpath"]}, body
    for bad in ("", 5, None, [], {"a": 1}):
        problem(send(client, "GET", "/folder/mount",
                     {"volume": gw.volume, "vfid": vfid, "subpath": bad}),
                400, "invalid-api-params", "vfolder_read_invalid-parameters")
    assert volume_state(gw) == before
    serving(gw)


# -- bad input on every new route, on both listeners -------------------------------------------


NEW_ROUTES = [("GET", "/folder/fs-usage"), ("GET", "/volume/hwinfo"),
              ("GET", "/volume/performance-metric"), ("GET", "/volume/quota"),
              ("PATCH", "/volume/quota")]


@pytest.mark.parametrize(("method", "route"), NEW_ROUTES)
def test_new_routes_refuse_bad_volume(gw: Gateway, client: httpx.Client, method: str,
                                      route: str) -> None:
    """Missing volume, a wrong type, an unknown volume, bad JSON: 4xx problem+json with msg
    and error_code, nothing changed, the daemon serving."""
    before = volume_state(gw)
    op = "read" if method == "GET" else "update"
    domain = "vfolder" if route.startswith("/folder") else "storage"  # the route's resource
    for body in ({}, {"volume": 5}, {"volume": ""}, {"volume": None}, {"volume": ["x"]}):
        problem(send(client, method, route, body), 400, "invalid-api-params",
                f"{domain}_{op}_invalid-parameters")
    problem(send(client, method, route, {"volume": "nosuch"}), 404, "volume/not-found",
            f"storage_{op}_not-found")
    r = client.request(method, route, content=b'{"volume": ')
    problem(r, 400, "invalid-api-params", f"{domain}_{op}_invalid-parameters")
    r = client.request(method, route, content=json.dumps({"volume": gw.volume}).encode(),
                       params={"volume": gw.volume} if method == "GET" else None)
    if method == "GET":  # given twice: in the query and the body
        problem(r, 400, "invalid-api-params")
    assert volume_state(gw) == before
    serving(gw)


def test_error_codes_on_older_routes(gw: Gateway, client: httpx.Client,
                                     vfolder: tuple[str, Path]) -> None:
    """The scheme on the routes that were there: the issue's own example
    (quota-scope_read_not-found) and one of each kind."""
    vfid, _ = vfolder
    qsid = vfid.split("/")[0]
    v = gw.volume
    problem(send(client, "GET", "/quota-scope", {"volume": v, "qsid": new_qsid()}), 404,
            "quota/scope/not-found", "quota-scope_read_not-found")
    problem(send(client, "POST", "/folder/create", {"volume": v, "vfid": vfid}), 409,
            "vfolder/already-exists", "vfolder_create_already-exists")
    problem(send(client, "POST", "/quota-scope", {"volume": v, "qsid": qsid}), 409,
            "quota/scope/already-exists", "quota-scope_create_already-exists")
    problem(send(client, "DELETE", "/quota-scope", {"volume": v, "qsid": qsid}), 409,
            "quota-directory-not-empty", "quota-scope_purge_conflict")
    problem(send(client, "GET", "/folder/usage",
                 {"volume": v, "vfid": f"{qsid}/{uuid.uuid4().hex}"}), 404,
            "vfolder/not-found", "vfolder_read_not-found")
    problem(send(client, "PATCH", "/quota-scope", {"volume": v, "qsid": "group:x"}), 400,
            "invalid-api-params", "quota-scope_update_invalid-parameters")
    problem(send(client, "GET", "/quota-scopes", {"volume": 1}), 400, "invalid-api-params",
            "quota-scope_list-query_invalid-parameters")
    problem(send(client, "GET", "/no/such/route"), 404, "not-found",
            "storage-proxy_request_not-found")
    problem(send(client, "DELETE", "/volume/hwinfo"), 405, "method-not-allowed",
            "storage-proxy_request_bad-request")
    problem(client.request("GET", "/volumes", headers={"Upgrade": "h2c"}), 400,
            "invalid-api-params", "storage-proxy_request_bad-request")
    serving(gw)


def test_tcp_refusals_carry_msg_and_code(gw: Gateway) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.env['PORT']}", timeout=30) as c:
        for headers in ({}, {TOKEN_HEADER: TOKEN + "x"}):
            problem(c.get("/volume/hwinfo", params={"volume": gw.volume}, headers=headers),
                    403, "forbidden", "storage_auth_forbidden")
        problem(c.post("/folder/delete", content=b"{}", headers={TOKEN_HEADER: "no"}), 403,
                "forbidden", "vfolder_auth_forbidden")
    serving(gw)


def test_every_error_class_has_a_valid_code_on_every_route() -> None:
    """Whatever the error and the route, the code parses in Backend.AI's vocabulary."""
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.GatewayError)]
    paths = [("GET", "/"), ("GET", "/volumes"), ("GET", "/metrics"), ("POST", "/quota-scope"),
             ("DELETE", "/quota-scope/quota"), ("POST", "/quota-scope/check"),
             ("POST", "/folder/clone"), ("POST", "/folder/file/mkdir"),
             ("POST", "/folder/file/upload"), ("GET", "/volume/hwinfo"), ("PUT", "/x"),
             ("OPTIONS", "/upload"), ("", "")]
    for cls in classes:
        for method, path in paths:
            body = cls("a sentence").problem(method, path)
            check_code(body["error_code"])
            assert body["msg"] == "a sentence", body
    assert re.fullmatch(r"[a-z-]+_[a-z-]+_[a-z-]+",
                        errors.GatewayError().error_code("GET", "/"))


# -- the health check's other answers, in-process ----------------------------------------------


class FakeBackend:
    name = "xfs"
    capabilities = frozenset({"vfolder", "quota"})

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail

    async def describe_scope(self, pathname: str) -> None:
        if self.fail == "error":
            raise BackendError("xfs_quota: exit status 1")
        if self.fail == "hang":
            await trio.sleep(60)


def fake_routes(tmp_path: Path, backend: FakeBackend | None = None,
                status: dict[str, Any] | None = None) -> VolumeRoutes:
    (tmp_path / "mnt").mkdir(exist_ok=True)
    service = SimpleNamespace(backend=backend or FakeBackend(),
                              native=SimpleNamespace(native=backend is not None),
                              registry=SimpleNamespace(scopes={"ab" * 16: object()}))
    vfolders = SimpleNamespace(volume=tmp_path)
    state = {"accounting": "ready", "state": "ok", "persist_error": None, "rebuilding": []}
    state.update(status or {})
    return VolumeRoutes("vol", str(tmp_path / "mnt"), service, vfolders,  # type: ignore
                        lambda: state, None, fsprefix="vfolders")  # type: ignore


def hwinfo(r: VolumeRoutes) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        return await r.hwinfo({"volume": "vol"}, Caller(0, 0, "socket"))
    result: dict[str, Any] = trio.run(ask)
    assert all(isinstance(v, str) for v in result["metadata"].values()), result
    return result


def test_hwinfo_degraded_and_unavailable(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """degraded: the native backend fails or does not answer, state files are not written,
    accounting is rebuilding; unavailable: the mount does not answer statfs in time (the
    probe runs in a thread, and a hung one is not started twice)."""
    monkeypatch.setattr(routes, "PROBE_TIMEOUT", 0.3)
    info = hwinfo(fake_routes(tmp_path))
    assert info["status"] == "healthy" and info["metadata"]["fsprefix"] == "vfolders", info
    info = hwinfo(fake_routes(tmp_path, FakeBackend("error")))
    assert info["status"] == "degraded" and "xfs_quota: exit status 1" in info["status_info"]
    info = hwinfo(fake_routes(tmp_path, FakeBackend("hang")))
    assert info["status"] == "degraded" and "did not answer" in info["status_info"], info
    info = hwinfo(fake_routes(tmp_path, status={
        "state": "degraded", "rebuilding": ["user:x"],
        "persist_error": {"files": ["snapshot.json"], "error": "ENOSPC"}}))
    assert info["status"] == "degraded", info
    assert "snapshot.json" in info["status_info"] and "rebuilding" in info["status_info"]

    release = threading.Event()
    real = os.statvfs
    mnt = str(tmp_path / "mnt")

    def stuck(path: Any) -> os.statvfs_result:
        if str(path) == mnt:
            release.wait(10)
        return real(path)

    monkeypatch.setattr(routes.os, "statvfs", stuck)
    r = fake_routes(tmp_path)
    try:
        info = hwinfo(r)
        assert info["status"] == "unavailable", info
        assert "did not answer within 0.3 s" in info["status_info"], info
        assert info["metadata"]["mount_statfs_ms"] == "none", info
        info = hwinfo(r)  # the first probe still hangs: none started beside it
        assert info["status"] == "unavailable" and "not answered yet" in info["status_info"]
    finally:
        release.set()
    wait = time.monotonic() + 5
    while r.mount_probe.pending and time.monotonic() < wait:
        time.sleep(0.01)
    assert hwinfo(r)["status"] == "healthy"


# -- the node endpoint's own refusals ----------------------------------------------------------


class FakeVolume:
    name = "vola"
    client = None
    problem = "its gateway is restarting"

    def serving(self) -> bool:
        return False

    def retry_after(self) -> int:
        return 2


class FakeNode:
    def volume(self, name: str) -> FakeVolume | None:
        return FakeVolume() if name == "vola" else None

    def status(self) -> dict[str, Any]:
        return {"status": "ok"}

    async def volumes(self) -> list[dict[str, Any]]:
        return []


def node_request(method: str, path: str, body: bytes) -> tuple[int, dict[bytes, bytes],
                                                                dict[str, Any]]:
    """One request through mountd's NodeApp (root's peer credentials), in-process."""
    from fusegw.control.app import Peer

    app = NodeApp(FakeNode(), None, None)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send_(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "query_string": b"",
                 "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
                 "extensions": {"fusegw.peer": Peer(1, 0, 0, frozenset())}}
        await app(scope, receive, send_)

    trio.run(run)
    start, payload = sent[0], sent[1]
    return start["status"], dict(start["headers"]), json.loads(payload["body"])


def test_node_endpoint_refusals_carry_msg_and_code() -> None:
    status, headers, body = node_request("GET", "/folder/usage", b'{"vfid": "x"}')
    assert status == 400 and body["error_code"] == "vfolder_read_invalid-parameters", body
    assert body["msg"] == body["detail"] and "volume" in body["msg"], body
    status, headers, body = node_request("POST", "/folder/delete", b'{"volume": "nosuch"}')
    assert status == 404 and body["error_code"] == "storage_purge_not-found", body
    assert body["type"] == PROBS + "volume/not-found" and "nosuch" in body["msg"], body
    status, headers, body = node_request("GET", "/volume/hwinfo", b'{"volume": "vola"}')
    assert status == 503 and body["error_code"] == "storage_read_unavailable", body
    assert headers[b"retry-after"] == b"2" and "restarting" in body["msg"], (headers, body)

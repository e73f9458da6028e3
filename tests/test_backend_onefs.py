"""`dellemc-onefs` against its emulator (tests/emulators/dellemc_onefs.py, over TLS): the
quota-scope flow through the control socket and the mount, the exact PAPI requests, the
storage proxy's `.quota_id` adopted, and faults (5xx, timeouts, dropped connections, bad
credentials, a quota not ready, a quota gone behind the gateway's back, a refused limit).

The emulator cannot enforce a hard threshold on a local directory, so EDQUOT at the limit is
not tested here (OneFS enforces on the appliance)."""

from __future__ import annotations

import json
import logging
import os
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import Gateway, new_qsid, scope_hex, wait_for
from emulators.common import Emulator
from emulators.dellemc_onefs import IFS_ROOT, PASSWORD, USER, basic, gateway_options
from vendor_fixture import dump, vendor_gateway

from backends.base import BackendError
from backends.onefs import OneFSBackend

MiB = 2**20
QUOTAS = "/platform/12/quota/quotas"
TIMEOUT = 2.0  # appliance_timeout of the module's gateway: the timeout fault waits 60 s


@pytest.fixture(scope="module")
def onefs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Emulator]]:
    base = tmp_path_factory.mktemp("onefs")
    with vendor_gateway("dellemc-onefs", base, options={"appliance_timeout": TIMEOUT}) as pair:
        yield pair


def ifs(qsid: str) -> str:
    return f"{IFS_ROOT}/{scope_hex(qsid)}"


def quotas_on(emulator: Emulator, qsid: str) -> list[dict[str, Any]]:
    return [q for q in emulator.state()["quotas"] if q["path"] == ifs(qsid)]


def papi(emulator: Emulator) -> httpx.Client:
    """The PAPI as an administrator (or the storage proxy) calls it, beside the gateway."""
    return httpx.Client(base_url=emulator.url, timeout=10, auth=(USER, PASSWORD),
                        verify=ssl.create_default_context(cafile=str(emulator.cafile)))


def mark(emulator: Emulator) -> int:
    return len(emulator.requests())


def since(emulator: Emulator, start: int) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("method", "path", "query", "json")}
            for r in emulator.requests()[start:]]


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    return dict(r.json())


def create(gw: Gateway, qsid: str, limit: int | None) -> httpx.Response:
    return gw.request("POST", "/quota-scope", {"volume": gw.volume, "qsid": qsid,
                                               "options": None if limit is None else
                                               {"limit_bytes": limit}})


def patch(gw: Gateway, qsid: str, limit: int) -> httpx.Response:
    return gw.request("PATCH", "/quota-scope", {"volume": gw.volume, "qsid": qsid,
                                                "options": {"limit_bytes": limit}})


def state_file(gw: Gateway) -> dict[str, str]:
    path = gw.source / ".fusegw" / "dellemc-onefs.json"
    return dict(json.loads(path.read_text())["quotas"]) if path.exists() else {}


# -- (1) the flow ---------------------------------------------------------------------------------


def test_quota_scope_flow(onefs):
    """create, describe (the appliance's figures), usage after writing, PATCH, PATCH upsert,
    DELETE quota, folder/create with an initial size, DELETE."""
    gw, emu = onefs
    qsid = new_qsid()
    assert create(gw, qsid, 10 * MiB).status_code == 204
    assert (gw.source / scope_hex(qsid)).is_dir()
    [quota] = quotas_on(emu, qsid)
    assert quota["hard"] == 10 * MiB and quota["enforced"]
    assert state_file(gw)[scope_hex(qsid)] == quota["id"]
    figures = gw.describe(qsid)
    assert figures["limit_bytes"] == 10 * MiB
    assert figures["used_bytes"] == 0  # fslogical: no file yet

    vf = gw.make_vfolder(qsid)
    with open(vf / "data.bin", "wb") as f:
        f.write(b"x" * 123_457)
        os.fsync(f.fileno())
    wait_for(lambda: gw.describe(qsid)["used_bytes"] == 123_457, 20,
             "used_bytes to be the file's logical size")
    # the gateway's ledger still keeps the per-vfolder figures
    assert int(os.getxattr(vf, "user.fusegw.vfolder.used_bytes")) >= 123_457

    assert patch(gw, qsid, 20 * MiB).status_code == 204
    assert quotas_on(emu, qsid)[0]["hard"] == 20 * MiB
    assert gw.describe(qsid)["limit_bytes"] == 20 * MiB

    other = new_qsid("project")  # PATCH of a missing scope creates it
    assert patch(gw, other, 5 * MiB).status_code == 204
    assert quotas_on(emu, other)[0]["hard"] == 5 * MiB
    assert gw.describe(other)["limit_bytes"] == 5 * MiB

    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert quotas_on(emu, qsid) == []
    assert scope_hex(qsid) not in state_file(gw)
    assert gw.describe(qsid)["limit_bytes"] is None

    fresh = new_qsid()
    vfid = f"{fresh}/{uuid.uuid4().hex}"
    r = gw.request("POST", "/folder/create", {
        "volume": gw.volume, "vfid": vfid,
        "options": {"initial_max_size_for_quota_scope": 3 * MiB}})
    assert r.status_code == 204, r.text
    assert quotas_on(emu, fresh)[0]["hard"] == 3 * MiB
    assert gw.describe(fresh)["limit_bytes"] == 3 * MiB

    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": fresh})
    assert r.status_code == 409  # it holds a vfolder
    assert quotas_on(emu, fresh)
    assert gw.request("POST", "/folder/delete", {"volume": gw.volume,
                                                 "vfid": vfid}).status_code == 204
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": fresh})
    assert r.status_code == 204, r.text
    assert quotas_on(emu, fresh) == []
    assert not (gw.source / scope_hex(fresh)).exists()
    assert gw.request("GET", "/quota-scope",
                      {"volume": gw.volume, "qsid": fresh}).status_code == 404


def test_unlimited_scope_has_no_quota_and_the_ledgers_figures(onefs):
    gw, emu = onefs
    qsid = new_qsid()
    assert create(gw, qsid, None).status_code == 204
    assert quotas_on(emu, qsid) == []
    assert gw.describe(qsid)["limit_bytes"] is None
    assert patch(gw, qsid, 4 * MiB).status_code == 204  # the quota comes with a limit
    assert quotas_on(emu, qsid)[0]["hard"] == 4 * MiB
    assert patch(gw, qsid, 0).status_code == 204  # 0 lifts it: the quota goes
    assert quotas_on(emu, qsid) == []


# -- (2) the exact requests -----------------------------------------------------------------------


def test_exact_requests(onefs):
    """Paths, methods, bodies and basic auth on every request, as the storage proxy sends
    them; describe by the kept id; no request carries anything but these."""
    gw, emu = onefs
    qsid = new_qsid()
    path = ifs(qsid)
    start = mark(emu)
    assert create(gw, qsid, 8 * MiB).status_code == 204
    [quota] = quotas_on(emu, qsid)
    qid = quota["id"]
    assert since(emu, start) == [{"method": "POST", "path": QUOTAS, "query": {}, "json": {
        "path": path, "type": "directory", "thresholds": {"hard": 8 * MiB},
        "thresholds_on": "fslogicalsize", "enforced": True, "include_snapshots": False}}]

    start = mark(emu)
    gw.describe(qsid)
    assert since(emu, start) == [{"method": "GET", "path": f"{QUOTAS}/{qid}", "query": {},
                                  "json": None}]
    start = mark(emu)
    assert patch(gw, qsid, 9 * MiB).status_code == 204
    assert since(emu, start) == [{"method": "PUT", "path": f"{QUOTAS}/{qid}", "query": {},
                                  "json": {"thresholds": {"hard": 9 * MiB}}}]
    start = mark(emu)
    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204
    assert since(emu, start) == [
        {"method": "DELETE", "path": f"{QUOTAS}/{qid}", "query": {}, "json": None}]
    # with no id known, a scope is described from its path
    start = mark(emu)
    assert gw.describe(qsid)["limit_bytes"] is None
    assert since(emu, start) == [{"method": "GET", "path": QUOTAS, "json": None,
                                  "query": {"path": path, "type": "directory"}}]
    start = mark(emu)
    assert gw.request("DELETE", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 204
    assert [(r["method"], r["path"]) for r in since(emu, start)] == [("GET", QUOTAS)]

    # every request carried the credentials, as HTTP basic, and nothing else authenticates
    with emu.client() as c:
        r = c.get(QUOTAS, headers={"Authorization": basic(USER, "wrong")})
    assert r.status_code == 401
    assert r.json() == {"errors": [{"code": "AEC_UNAUTHORIZED",
                                    "message": "Authorization required"}]}
    assert PASSWORD not in gw.read_log()


def test_auth_header_is_http_basic(onefs):
    """The emulator's log keeps no headers: the header the backend's client sends, from its
    own auth flow (the emulator refuses anything else with 401, tested above)."""
    backend = OneFSBackend(Path("/nonexistent"), gateway_options("https://127.0.0.1:9"))
    client = backend.client()
    request = client.http.build_request("GET", QUOTAS)
    auth = client.http.auth
    assert auth is not None
    flow = auth.sync_auth_flow(request)
    assert next(flow).headers["authorization"] == basic(USER, PASSWORD)


def test_storage_proxys_quota_id_is_adopted(onefs):
    """A scope directory the storage proxy made, with its `.quota_id`: creating the scope
    adopts that quota (PUT, no new POST), describes it by that id, and removing the quota
    removes the file too."""
    gw, emu = onefs
    qsid = new_qsid()
    backing = gw.source / scope_hex(qsid)
    backing.mkdir()
    with papi(emu) as c:
        r = c.post(QUOTAS, json={"path": ifs(qsid), "type": "directory",
                                 "thresholds": {"hard": MiB}, "thresholds_on":
                                 "fslogicalsize", "enforced": True,
                                 "include_snapshots": False})
    assert r.status_code == 201, r.text
    qid = r.json()["id"]
    (backing / ".quota_id").write_text(qid)
    start = mark(emu)
    assert create(gw, qsid, 6 * MiB).status_code == 204
    assert [(r["method"], r["path"]) for r in since(emu, start)] == [
        ("PUT", f"{QUOTAS}/{qid}")]
    assert quotas_on(emu, qsid) == [{"id": qid, "path": ifs(qsid), "type": "directory",
                                     "hard": 6 * MiB, "enforced": True,
                                     "thresholds_on": "fslogicalsize"}]
    assert state_file(gw)[scope_hex(qsid)] == qid
    assert gw.describe(qsid)["limit_bytes"] == 6 * MiB
    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert quotas_on(emu, qsid) == []
    assert not (backing / ".quota_id").exists()


def test_quota_id_file_is_hidden_through_the_mount(onefs):
    """The storage proxy's `.quota_id` stays (it names the live quota) and is no entry of the
    scope through the mount; deleting the scope is not refused because of it."""
    gw, emu = onefs
    qsid = new_qsid()
    backing = gw.source / scope_hex(qsid)
    backing.mkdir()
    with papi(emu) as c:
        qid = c.post(QUOTAS, json={"path": ifs(qsid), "type": "directory", "enforced": True,
                                   "include_snapshots": False,
                                   "thresholds": {"hard": MiB}}).json()["id"]
    (backing / ".quota_id").write_text(qid)
    assert create(gw, qsid, 2 * MiB).status_code == 204
    assert (backing / ".quota_id").exists()
    scope = gw.mountpoint / scope_hex(qsid)
    try:
        assert ".quota_id" not in os.listdir(scope)
        assert not (scope / ".quota_id").exists()
        r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
        assert r.status_code == 204, r.text
        assert quotas_on(emu, qsid) == [] and not backing.exists()
    finally:
        gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})


def test_unrecordable_id_undoes_the_create(onefs):
    """The id file cannot be written (here: a directory in its place): the quota made is
    deleted again and the directory goes; the caller gets 502 naming the file."""
    gw, emu = onefs
    path = gw.source / ".fusegw" / "dellemc-onefs.json"
    saved = path.read_bytes()
    path.unlink()
    path.mkdir()
    qsid = new_qsid()
    try:
        body = problem(create(gw, qsid, MiB), 502)
        assert "dellemc-onefs.json" in body["detail"], dump(body)
        assert quotas_on(emu, qsid) == []
        assert not (gw.source / scope_hex(qsid)).exists()
    finally:
        path.rmdir()
        path.write_bytes(saved)
    assert create(gw, qsid, MiB).status_code == 204
    assert state_file(gw)[scope_hex(qsid)] == quotas_on(emu, qsid)[0]["id"]


def test_lost_id_file_costs_a_listing(onefs):
    """The id file is a cache: a scope whose id the gateway lost is found by its path."""
    gw, emu = onefs
    qsid = new_qsid()
    assert create(gw, qsid, 2 * MiB).status_code == 204
    [quota] = quotas_on(emu, qsid)
    with papi(emu) as c:  # the quota deleted and made again beside the gateway: a new id
        assert c.delete(f"{QUOTAS}/{quota['id']}").status_code == 204
        r = c.post(QUOTAS, json={"path": ifs(qsid), "type": "directory",
                                 "thresholds": {"hard": 3 * MiB}, "enforced": True,
                                 "include_snapshots": False})
        new_id = r.json()["id"]
    start = mark(emu)
    assert gw.describe(qsid)["limit_bytes"] == 3 * MiB
    assert [(r["method"], r["path"], r["query"]) for r in since(emu, start)] == [
        ("GET", f"{QUOTAS}/{quota['id']}", {}),
        ("GET", QUOTAS, {"path": ifs(qsid), "type": "directory"})]
    wait_for(lambda: state_file(gw).get(scope_hex(qsid)) == new_id, 5, "the new id kept")
    # a quota gone entirely: an update makes it again
    with papi(emu) as c:
        assert c.delete(f"{QUOTAS}/{new_id}").status_code == 204
    assert patch(gw, qsid, 4 * MiB).status_code == 204
    assert [q["hard"] for q in quotas_on(emu, qsid)] == [4 * MiB]


# -- (3) faults -----------------------------------------------------------------------------------


def test_5xx_once_is_retried(onefs):
    gw, emu = onefs
    qsid = new_qsid()
    emu.fault("5xx", 1, "POST", QUOTAS)
    assert create(gw, qsid, MiB).status_code == 204
    assert len(quotas_on(emu, qsid)) == 1
    emu.fault("5xx", 1, "PUT", QUOTAS)
    assert patch(gw, qsid, 2 * MiB).status_code == 204
    assert quotas_on(emu, qsid)[0]["hard"] == 2 * MiB


def test_5xx_past_the_retries_is_502_and_nothing_half_made(onefs):
    gw, emu = onefs
    qsid = new_qsid()
    emu.fault("5xx", 4, "POST", QUOTAS)
    body = problem(create(gw, qsid, MiB), 502)
    assert "OneFS" in body["detail"] and "emulated failure" in body["detail"], dump(body)
    assert quotas_on(emu, qsid) == []
    assert not (gw.source / scope_hex(qsid)).exists()  # the directory went again
    assert gw.request("GET", "/").status_code == 200
    assert create(gw, qsid, MiB).status_code == 204  # the fault cleared: a retry succeeds
    assert len(quotas_on(emu, qsid)) == 1
    # an update failing past the retries leaves the limit as it was
    emu.fault("5xx", 4, "PUT", QUOTAS)
    problem(patch(gw, qsid, 2 * MiB), 502)
    assert quotas_on(emu, qsid)[0]["hard"] == MiB
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert patch(gw, qsid, 2 * MiB).status_code == 204
    assert quotas_on(emu, qsid)[0]["hard"] == 2 * MiB


def test_lost_answer_to_post_leaves_no_duplicate(onefs):
    """OneFS made the quota but its answer was lost (here: a 503 after the change): the
    repeated POST is refused with AEC_CONFLICT and the quota on the path is adopted, so
    there is one quota, with the gateway's limit and id."""
    gw, emu = onefs
    qsid = new_qsid()
    emu.fault("lost", 1, "POST", QUOTAS)
    start = mark(emu)
    assert create(gw, qsid, MiB).status_code == 204
    assert [(r["method"], r["path"]) for r in since(emu, start)][:3] == [
        ("POST", QUOTAS), ("POST", QUOTAS), ("GET", QUOTAS)]
    [quota] = quotas_on(emu, qsid)
    assert quota["hard"] == MiB
    assert state_file(gw)[scope_hex(qsid)] == quota["id"]
    # a drop before OneFS acted: the retried POST creates it once
    other = new_qsid()
    emu.fault("drop", 1, "POST", QUOTAS)
    assert create(gw, other, MiB).status_code == 204
    assert len(quotas_on(emu, other)) == 1


def test_existing_quota_on_the_path_is_adopted_not_duplicated(onefs):
    """A quota already on the new scope's path (a POST whose answer was lost before the
    gateway crashed) is refused by OneFS with AEC_CONFLICT and adopted."""
    gw, emu = onefs
    qsid = new_qsid()
    backing = gw.source / scope_hex(qsid)
    backing.mkdir()
    with papi(emu) as c:
        r = c.post(QUOTAS, json={"path": ifs(qsid), "type": "directory", "enforced": True,
                                 "include_snapshots": False, "thresholds": {"hard": MiB}})
        qid = r.json()["id"]
    backing.rmdir()  # the directory went, the quota stayed (OneFS keeps it)
    start = mark(emu)
    assert create(gw, qsid, 2 * MiB).status_code == 204
    methods = [(r["method"], r["path"]) for r in since(emu, start)]
    assert methods == [("POST", QUOTAS), ("GET", QUOTAS), ("PUT", f"{QUOTAS}/{qid}")]
    assert quotas_on(emu, qsid) == [{"id": qid, "path": ifs(qsid), "type": "directory",
                                     "hard": 2 * MiB, "enforced": True,
                                     "thresholds_on": "fslogicalsize"}]


def test_timeout_is_502_and_daemon_keeps_serving(onefs):
    gw, emu = onefs
    qsid = new_qsid()
    assert create(gw, qsid, MiB).status_code == 204
    emu.fault("timeout", 4, "PUT", QUOTAS)
    body = problem(patch(gw, qsid, 2 * MiB), 502)
    assert "OneFS" in body["detail"] and "unreachable" in body["detail"], dump(body)
    assert gw.request("GET", "/").status_code == 200
    assert quotas_on(emu, qsid)[0]["hard"] == MiB
    assert patch(gw, qsid, 2 * MiB).status_code == 204
    assert quotas_on(emu, qsid)[0]["hard"] == 2 * MiB
    # a timed-out create leaves nothing either
    other = new_qsid()
    emu.fault("timeout", 4, "POST", QUOTAS)
    problem(create(gw, other, MiB), 502)
    assert quotas_on(emu, other) == [] and not (gw.source / scope_hex(other)).exists()
    assert create(gw, other, MiB).status_code == 204
    assert len(quotas_on(emu, other)) == 1


def test_dropped_connections_are_retried_then_502(onefs):
    gw, emu = onefs
    qsid = new_qsid()
    assert create(gw, qsid, MiB).status_code == 204
    emu.fault("drop", 1, "PUT", QUOTAS)
    assert patch(gw, qsid, 2 * MiB).status_code == 204
    emu.fault("drop", 4, "DELETE", QUOTAS)
    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    body = problem(r, 502)
    assert "OneFS" in body["detail"], dump(body)
    assert quotas_on(emu, qsid)[0]["hard"] == 2 * MiB
    assert gw.describe(qsid)["limit_bytes"] == 2 * MiB
    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert quotas_on(emu, qsid) == []


def test_describe_while_the_appliance_fails_uses_the_ledger(onefs):
    gw, emu = onefs
    qsid = new_qsid()
    assert create(gw, qsid, MiB).status_code == 204
    emu.fault("5xx", 8, "GET", QUOTAS)
    figures = gw.describe(qsid)  # the ledger's figures: the limit the gateway keeps
    assert figures["limit_bytes"] == MiB
    assert gw.request("GET", "/").status_code == 200


def test_quota_not_ready_gives_the_ledgers_used_bytes(onefs):
    """While a QuotaScan runs OneFS's figures are not accurate (`ready: false`): used bytes
    come from the ledger, the limit from the appliance."""
    gw, emu = onefs
    qsid = new_qsid()
    assert create(gw, qsid, 10 * MiB).status_code == 204
    vf = gw.make_vfolder(qsid)
    (vf / "f").write_bytes(b"z" * 50_000)
    wait_for(lambda: gw.describe(qsid)["used_bytes"] == 50_000, 20, "fslogical")
    emu.fault("notready", 1, "GET", f"{QUOTAS}/")
    ledger = wait_for(lambda: (d := gw.describe(qsid))["used_bytes"] != 50_000 and d, 20,
                      "a not-ready answer")
    assert ledger["limit_bytes"] == 10 * MiB
    assert ledger["used_bytes"] >= 50_000  # the ledger counts allocated blocks


def test_bad_credentials_are_502_naming_the_appliance(tmp_path):
    with vendor_gateway("dellemc-onefs", tmp_path, name="bad",
                        options={"dell_password": "not-the-password"}) as (gw, emu):
        qsid = new_qsid()
        body = problem(create(gw, qsid, MiB), 502)
        assert "OneFS" in body["detail"] and "Authorization required" in body["detail"]
        assert "not-the-password" not in json.dumps(body)
        assert "not-the-password" not in gw.read_log()
        assert emu.state()["quotas"] == []
        assert not (gw.source / scope_hex(qsid)).exists()
        assert gw.request("GET", "/").status_code == 200


def test_refused_limit_is_4xx_and_leaves_nothing(onefs):
    """A limit above an enclosing quota's hard threshold is OneFS refusing our input: 400,
    with OneFS's message, and the scope directory goes again."""
    gw, emu = onefs
    with papi(emu) as c:
        r = c.post(QUOTAS, json={"path": IFS_ROOT, "type": "directory", "enforced": False,
                                 "include_snapshots": False,
                                 "thresholds": {"hard": 1024 * MiB}})
        assert r.status_code == 201, r.text
        parent = r.json()["id"]
    try:
        qsid = new_qsid()
        body = problem(create(gw, qsid, 2048 * MiB), 400)
        assert "OneFS" in body["detail"] and "exceeds the hard threshold" in body["detail"]
        assert quotas_on(emu, qsid) == []
        assert not (gw.source / scope_hex(qsid)).exists()
        assert create(gw, qsid, 512 * MiB).status_code == 204
        problem(patch(gw, qsid, 2048 * MiB), 400)
        assert quotas_on(emu, qsid)[0]["hard"] == 512 * MiB
    finally:
        with papi(emu) as c:
            c.delete(f"{QUOTAS}/{parent}")


# -- options --------------------------------------------------------------------------------------


def test_missing_ifs_path_refuses_to_start(tmp_path):

    options = gateway_options("https://127.0.0.1:9")
    del options["dell_ifs_path"]
    backend = OneFSBackend(tmp_path, options)
    with pytest.raises(BackendError, match="dell_ifs_path"):
        trio.run(backend.check_volume)


def test_verify_off_is_logged(tmp_path, caplog):

    backend = OneFSBackend(tmp_path, {**gateway_options("https://127.0.0.1:9"),
                                      "dell_verify_ssl": "false"})
    with caplog.at_level(logging.WARNING, "backends.rest"):
        client = backend.client()
    assert "TLS verification is off" in caplog.text
    assert PASSWORD not in caplog.text
    trio.run(client.aclose)


def test_storage_proxy_option_aliases(tmp_path):
    """`dell_username` (the storage proxy's other name for dell_admin) is read; the appliance
    path is `dell_ifs_path` joined with the scope's pathname."""
    options = gateway_options("https://127.0.0.1:9")
    options["dell_username"] = options.pop("dell_admin")
    backend = OneFSBackend(tmp_path, options)
    trio.run(backend.check_volume)
    assert backend.appliance_path("ab" * 16) == f"{IFS_ROOT}/{'ab' * 16}"
    flow = backend.client().http.auth.sync_auth_flow(  # type: ignore[union-attr]
        backend.client().http.build_request("GET", QUOTAS))
    assert next(flow).headers["authorization"] == basic(USER, PASSWORD)

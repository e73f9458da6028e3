"""The `netapp` backend through real gateway processes, against the ONTAP emulator
(tests/emulators/netapp.py) over real HTTP: the quota-scope flow, the exact requests sent to
ONTAP, and the faults (5xx, timeouts, dropped connections, bad credentials, failed jobs, a
refused input).

The EDQUOT-at-the-limit check of the behaviour suite cannot run here: the emulator cannot
enforce a limit on a local directory (ONTAP refuses the NFS write itself)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Gateway, du_bytes, new_qsid, scope_hex, wait_for
from emulators import netapp as ontap
from emulators.common import Emulator
from vendor_fixture import sent, vendor_gateway

MiB = 2**20
TIMEOUT = 1.0  # appliance_timeout of the gateways here: a timeout fault costs seconds, not 30
RETRIES = 3  # backends.rest.RETRIES: attempts after the first


@pytest.fixture(scope="module")
def gw_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Emulator]]:
    base = tmp_path_factory.mktemp("netapp")
    with vendor_gateway("netapp", base, options={"appliance_timeout": TIMEOUT}) as pair:
        yield pair


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[Gateway, Emulator]]:
    """A gateway and emulator of its own, for tests that count every request."""
    with vendor_gateway("netapp", tmp_path, options={"appliance_timeout": TIMEOUT}) as pair:
        yield pair


def qtrees(emu: Emulator, name: str) -> list[dict[str, Any]]:
    return [q for q in emu.state()["qtrees"] if q["name"] == name]


def rules(emu: Emulator, name: str) -> list[dict[str, Any]]:
    return [r for r in emu.state()["rules"] if r["qtree"] == name]


def create(gw: Gateway, qsid: str, limit: int | None) -> httpx.Response:
    options = None if limit is None else {"limit_bytes": limit}
    return gw.request("POST", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid, "options": options})


def patch(gw: Gateway, qsid: str, limit: int) -> httpx.Response:
    return gw.request("PATCH", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": limit}})


def assert_appliance_problem(r: httpx.Response, status: int, *words: str) -> None:
    """A problem+json answer whose msg names the appliance and its own message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert "NetApp ONTAP" in body["msg"], body
    for word in words:
        assert word in body["msg"], body


def assert_serving(gw: Gateway) -> None:
    assert gw.request("GET", "/").status_code == 200
    assert gw.alive()


# -- (1) the quota-scope flow ------------------------------------------------------------------


def test_quota_scope_flow(gw_emu: tuple[Gateway, Emulator]) -> None:
    """Create (a qtree and its rule, quotas switched on), describe with ONTAP's figures,
    usage after a write, update, upsert, unset, folder/create with a size, delete."""
    gw, emu = gw_emu
    qsid = new_qsid()
    name = scope_hex(qsid)
    r = create(gw, qsid, 10 * MiB)
    assert r.status_code == 204, r.text
    assert len(qtrees(emu, name)) == 1
    assert [(x["hard_limit"], x["soft_limit"]) for x in rules(emu, name)] == [
        (10 * MiB, 10 * MiB)]
    assert emu.state()["volumes"][0]["quota_enabled"] is True
    figures = gw.describe(qsid)
    assert figures["limit_bytes"] == 10 * MiB
    assert figures["used_bytes"] == du_bytes(gw.source / name)

    vf = gw.make_vfolder(qsid)
    with open(vf / "test.bin", "wb") as f:
        f.write(b"x" * 8192)
        os.fsync(f.fileno())

    def follows() -> int | None:
        used = int(gw.describe(qsid)["used_bytes"])
        return used if used == du_bytes(gw.source / name) and used >= 8192 else None

    wait_for(follows, 20, "used_bytes to follow the write (ONTAP's report)")

    r = patch(gw, qsid, 20 * MiB)
    assert r.status_code == 204, r.text
    assert [x["hard_limit"] for x in rules(emu, name)] == [20 * MiB]
    assert gw.describe(qsid)["limit_bytes"] == 20 * MiB

    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert rules(emu, name) == []
    assert qtrees(emu, name) != []
    assert gw.describe(qsid)["limit_bytes"] is None

    r = patch(gw, qsid, 5 * MiB)  # a rule again after the unset
    assert r.status_code == 204, r.text
    assert [x["hard_limit"] for x in rules(emu, name)] == [5 * MiB]

    upsert = new_qsid("project")
    r = patch(gw, upsert, 7 * MiB)
    assert r.status_code == 204, r.text
    assert len(qtrees(emu, scope_hex(upsert))) == 1
    assert [x["hard_limit"] for x in rules(emu, scope_hex(upsert))] == [7 * MiB]
    assert gw.describe(upsert)["limit_bytes"] == 7 * MiB

    folder_scope = new_qsid()
    vfid = f"{folder_scope}/{uuid.uuid4().hex}"
    r = gw.request("POST", "/folder/create", {
        "volume": gw.volume, "vfid": vfid,
        "options": {"initial_max_size_for_quota_scope": 3 * MiB}})
    assert r.status_code == 204, r.text
    assert [x["hard_limit"] for x in rules(emu, scope_hex(folder_scope))] == [3 * MiB]
    assert gw.describe(folder_scope)["limit_bytes"] == 3 * MiB

    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": folder_scope})
    assert r.status_code == 409  # it holds a vfolder: ONTAP would delete it with the qtree
    assert len(qtrees(emu, scope_hex(folder_scope))) == 1
    assert gw.request("POST", "/folder/delete",
                      {"volume": gw.volume, "vfid": vfid}).status_code == 204
    for scope in (folder_scope, upsert):
        r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": scope})
        assert r.status_code == 204, r.text
        assert qtrees(emu, scope_hex(scope)) == [] and rules(emu, scope_hex(scope)) == []
        assert not (gw.source / scope_hex(scope)).exists()
        assert gw.request("GET", "/quota-scope",
                          {"volume": gw.volume, "qsid": scope}).status_code == 404


def test_scope_without_limit_has_no_rule(gw_emu: tuple[Gateway, Emulator]) -> None:
    """No limit: a qtree alone; ONTAP has no report for it, so the ledger's figures show."""
    gw, emu = gw_emu
    qsid = new_qsid()
    assert create(gw, qsid, None).status_code == 204
    assert len(qtrees(emu, scope_hex(qsid))) == 1 and rules(emu, scope_hex(qsid)) == []
    figures = gw.describe(qsid)
    assert figures["limit_bytes"] is None and figures["used_bytes"] is not None
    assert gw.request("DELETE", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 204
    assert qtrees(emu, scope_hex(qsid)) == []


# -- (2) the exact requests --------------------------------------------------------------------


def test_exact_requests(fresh: tuple[Gateway, Emulator]) -> None:
    """Paths, methods, bodies and credentials of every call, job polls included."""
    gw, emu = fresh
    volume = [r for r in emu.requests() if r["path"] == "/api/storage/volumes"]
    assert volume == [{"method": "GET", "path": "/api/storage/volumes",
                       "query": {"name": ontap.VOLUME, "svm.name": ontap.SVM,
                                 "fields": "uuid,name,svm,quota.enabled"},
                       "json": None, "authorization": volume[0]["authorization"]}]
    qsid = new_qsid()
    name = scope_hex(qsid)
    assert create(gw, qsid, 10 * MiB).status_code == 204
    log = [r for r in emu.requests() if r["path"] != "/api/storage/quota/reports"]
    start = next(i for i, r in enumerate(log) if r["path"] == "/api/storage/qtrees")
    calls = [(r["method"], r["path"]) for r in log[start:]]
    job_polls = [c for c in calls if c[1].startswith("/api/cluster/jobs/")]
    assert len(job_polls) == 2 * 3  # three jobs, each done on its second poll
    assert [c for c in calls if not c[1].startswith("/api/cluster/jobs/")] == [
        ("POST", "/api/storage/qtrees"),
        ("POST", "/api/storage/quota/rules"),
        ("PATCH", f"/api/storage/volumes/{ontap.VOLUME_UUID}")]
    (qtree_post,) = sent(emu, "POST", "/api/storage/qtrees")
    assert qtree_post["json"] == {
        "svm": {"uuid": ontap.SVM_UUID}, "volume": {"uuid": ontap.VOLUME_UUID},
        "name": name, "security_style": "unix", "unix_permissions": 755,
        "user": {"id": os.getuid()}, "group": {"id": os.getgid()}}
    (rule_post,) = sent(emu, "POST", "/api/storage/quota/rules")
    assert rule_post["json"] == {
        "svm": {"uuid": ontap.SVM_UUID}, "volume": {"uuid": ontap.VOLUME_UUID},
        "type": "tree", "qtree": {"name": name},
        "space": {"hard_limit": 10 * MiB, "soft_limit": 10 * MiB}}
    (enable,) = sent(emu, "PATCH", "/api/storage/volumes/")
    assert enable["json"] == {"quota": {"enabled": True}}
    for poll in sent(emu, "GET", "/api/cluster/jobs/"):
        assert poll["query"] == {"fields": "state,message,code,error"}
    secret = base64.b64encode(f"{ontap.USER}:{ontap.PASSWORD}".encode()).decode()
    assert {r["authorization"] for r in emu.requests()} == {f"Basic {secret}"}

    gw.describe(qsid)
    report = sent(emu, "GET", "/api/storage/quota/reports")[-1]
    assert report["query"] == {"volume.uuid": ontap.VOLUME_UUID, "type": "tree",
                               "qtree.name": name, "fields": "space"}

    assert patch(gw, qsid, 20 * MiB).status_code == 204
    lookup = sent(emu, "GET", "/api/storage/quota/rules")[-1]
    assert lookup["query"] == {"volume.uuid": ontap.VOLUME_UUID, "type": "tree",
                               "qtree.name": name, "fields": "uuid,space"}
    rule_uuid = rules(emu, name)[0]["uuid"]
    (rule_patch,) = sent(emu, "PATCH", "/api/storage/quota/rules/")
    assert rule_patch["path"] == f"/api/storage/quota/rules/{rule_uuid}"
    assert rule_patch["json"] == {"space": {"hard_limit": 20 * MiB, "soft_limit": 20 * MiB}}
    assert len(sent(emu, "PATCH", "/api/storage/volumes/")) == 1  # quotas are on: once

    assert gw.request("DELETE", "/quota-scope/quota",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 204
    (rule_delete,) = sent(emu, "DELETE", "/api/storage/quota/rules/")
    assert rule_delete["path"] == f"/api/storage/quota/rules/{rule_uuid}"
    assert rule_delete["json"] is None

    assert gw.request("DELETE", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 204
    lookup = sent(emu, "GET", "/api/storage/qtrees")[-1]
    assert lookup["query"] == {"volume.uuid": ontap.VOLUME_UUID, "name": name,
                               "fields": "id,name"}
    (qtree_delete,) = sent(emu, "DELETE", "/api/storage/qtrees/")
    assert qtree_delete["path"] == f"/api/storage/qtrees/{ontap.VOLUME_UUID}/1"
    assert emu.state()["qtrees"] == [] and emu.state()["rules"] == []
    assert emu.state()["jobs_running"] == []
    assert ontap.PASSWORD not in gw.read_log() and secret not in gw.read_log()


def test_quota_already_on_is_not_an_error(fresh: tuple[Gateway, Emulator]) -> None:
    """Quotas switched on beside the gateway: switching them on again fails as a job with
    ONTAP's "already on" code, which the backend takes as done."""
    gw, emu = fresh
    auth = (ontap.USER, ontap.PASSWORD)
    with httpx.Client(base_url=emu.url, auth=auth, timeout=10) as c:
        job = c.patch(f"/api/storage/volumes/{ontap.VOLUME_UUID}",
                      json={"quota.enabled": True}).json()["job"]["uuid"]
        wait_for(lambda: c.get(f"/api/cluster/jobs/{job}").json()["state"] == "success", 10,
                 "the emulator's job")
    qsid = new_qsid()
    assert create(gw, qsid, 4 * MiB).status_code == 204
    (enable,) = sent(emu, "PATCH", "/api/storage/volumes/")[1:]
    assert enable["json"] == {"quota": {"enabled": True}}
    assert gw.describe(qsid)["limit_bytes"] == 4 * MiB
    with httpx.Client(base_url=emu.url, auth=auth, timeout=10) as c:
        jobs = [c.get(r["path"]).json() for r in sent(emu, "GET", "/api/cluster/jobs/")]
    assert any(j["state"] == "failure" and j["error"]["code"] == ontap.QUOTA_ALREADY_ON
               for j in jobs), jobs


# -- (3) faults --------------------------------------------------------------------------------


def test_5xx_once_is_retried(gw_emu: tuple[Gateway, Emulator]) -> None:
    gw, emu = gw_emu
    qsid = new_qsid()
    emu.fault("5xx", 1, "POST", "/api/storage/qtrees")
    before = len(sent(emu, "POST", "/api/storage/qtrees"))
    assert create(gw, qsid, 2 * MiB).status_code == 204
    assert len(sent(emu, "POST", "/api/storage/qtrees")) - before == 2
    assert len(qtrees(emu, scope_hex(qsid))) == 1 and len(rules(emu, scope_hex(qsid))) == 1


@pytest.mark.parametrize("path", ["/api/storage/qtrees", "/api/storage/quota/rules"])
def test_5xx_past_the_retries_leaves_nothing(gw_emu: tuple[Gateway, Emulator],
                                             path: str) -> None:
    """ONTAP failing on the qtree or on the rule: 502 naming ONTAP and its message, no
    qtree left behind (the one made is deleted again), and a retry afterwards succeeds."""
    gw, emu = gw_emu
    qsid = new_qsid()
    name = scope_hex(qsid)
    emu.fault("5xx", 1 + RETRIES, "POST", path)
    assert_appliance_problem(create(gw, qsid, 2 * MiB), 502, "HTTP 503", "emulated failure")
    assert_serving(gw)
    assert qtrees(emu, name) == [] and rules(emu, name) == []
    assert not (gw.source / name).exists()
    assert gw.request("GET", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 404
    assert create(gw, qsid, 2 * MiB).status_code == 204
    assert len(qtrees(emu, name)) == 1 and len(rules(emu, name)) == 1


def test_timeout(gw_emu: tuple[Gateway, Emulator]) -> None:
    """An ONTAP that does not answer within appliance_timeout: retried; past the retries
    502 'unreachable', the limit as it was; then a retry succeeds."""
    gw, emu = gw_emu
    qsid = new_qsid()
    name = scope_hex(qsid)
    assert create(gw, qsid, 2 * MiB).status_code == 204
    emu.fault("timeout", 1, "PATCH", "/api/storage/quota/rules/")
    assert patch(gw, qsid, 3 * MiB).status_code == 204
    assert [x["hard_limit"] for x in rules(emu, name)] == [3 * MiB]
    emu.fault("timeout", 1 + RETRIES, "PATCH", "/api/storage/quota/rules/")
    assert_appliance_problem(patch(gw, qsid, 4 * MiB), 502, "unreachable", "ReadTimeout")
    assert_serving(gw)
    assert [x["hard_limit"] for x in rules(emu, name)] == [3 * MiB]
    assert gw.describe(qsid)["limit_bytes"] == 3 * MiB
    assert patch(gw, qsid, 4 * MiB).status_code == 204
    assert [x["hard_limit"] for x in rules(emu, name)] == [4 * MiB]


def test_dropped_connection(gw_emu: tuple[Gateway, Emulator]) -> None:
    gw, emu = gw_emu
    qsid = new_qsid()
    name = scope_hex(qsid)
    emu.fault("drop", 1, "POST", "/api/storage/quota/rules")
    assert create(gw, qsid, 2 * MiB).status_code == 204
    assert len(rules(emu, name)) == 1
    emu.fault("drop", 1 + RETRIES, "DELETE", "/api/storage/quota/rules/")
    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert_appliance_problem(r, 502, "unreachable")
    assert_serving(gw)
    assert len(rules(emu, name)) == 1
    assert gw.describe(qsid)["limit_bytes"] == 2 * MiB
    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert rules(emu, name) == []


def test_credentials_refused(gw_emu: tuple[Gateway, Emulator]) -> None:
    """The password changed on the cluster: 502 naming ONTAP and its 401 message (not
    retried: it would not change); the scope as it was; fine again afterwards."""
    gw, emu = gw_emu
    qsid = new_qsid()
    name = scope_hex(qsid)
    assert create(gw, qsid, 2 * MiB).status_code == 204
    emu.fault("unauthorized", 1, "GET", "/api/storage/quota/rules")
    assert_appliance_problem(patch(gw, qsid, 3 * MiB), 502, "HTTP 401",
                             "not authorized for that command")
    assert_serving(gw)
    assert [x["hard_limit"] for x in rules(emu, name)] == [2 * MiB]
    assert patch(gw, qsid, 3 * MiB).status_code == 204
    assert [x["hard_limit"] for x in rules(emu, name)] == [3 * MiB]


def test_wrong_password_refuses_to_start(tmp_path: Path) -> None:
    """A wrong password in the configuration: the gateway does not start, and says why."""
    with pytest.raises(AssertionError) as refused, vendor_gateway(
            "netapp", tmp_path, options={"netapp_ontap_password": "wrong-pw-4711"}):
        pass
    said = str(refused.value)  # the gateway's stderr and log
    assert "fusegw: backend netapp: NetApp ONTAP: HTTP 401: not authorized" in said, said
    assert "wrong-pw-4711" not in said


def test_failed_job(gw_emu: tuple[Gateway, Emulator]) -> None:
    """A job that fails on ONTAP: its message is the error (502: ONTAP's own failure); a
    create leaves no qtree; an update leaves the old limit; both succeed afterwards."""
    gw, emu = gw_emu
    qsid = new_qsid()
    name = scope_hex(qsid)
    emu.fault("job_failure", 1, "POST", "/api/storage/quota/rules")
    assert_appliance_problem(create(gw, qsid, 2 * MiB), 502, "out of quorum", "393271")
    assert_serving(gw)
    assert qtrees(emu, name) == [] and rules(emu, name) == []
    assert create(gw, qsid, 2 * MiB).status_code == 204
    emu.fault("job_failure", 1, "PATCH", "/api/storage/quota/rules/")
    assert_appliance_problem(patch(gw, qsid, 6 * MiB), 502, "out of quorum")
    assert [x["hard_limit"] for x in rules(emu, name)] == [2 * MiB]
    assert gw.describe(qsid)["limit_bytes"] == 2 * MiB
    assert patch(gw, qsid, 6 * MiB).status_code == 204
    assert [x["hard_limit"] for x in rules(emu, name)] == [6 * MiB]
    assert emu.state()["jobs_running"] == []


def test_failed_delete_keeps_the_scope(gw_emu: tuple[Gateway, Emulator]) -> None:
    """The qtree's deletion job fails: 502, the qtree, its rule and the scope stay; a retry
    deletes them all."""
    gw, emu = gw_emu
    qsid = new_qsid()
    name = scope_hex(qsid)
    assert create(gw, qsid, 2 * MiB).status_code == 204
    emu.fault("job_failure", 1, "DELETE", "/api/storage/qtrees/")
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert_appliance_problem(r, 502, "out of quorum")
    assert len(qtrees(emu, name)) == 1 and len(rules(emu, name)) == 1
    assert gw.describe(qsid)["limit_bytes"] == 2 * MiB
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert qtrees(emu, name) == [] and rules(emu, name) == []


def test_quotas_not_switched_on_undoes_the_create(fresh: tuple[Gateway, Emulator]) -> None:
    """The first rule is made but quotas cannot be switched on: the rule and the qtree go
    again; the next create switches them on."""
    gw, emu = fresh
    qsid = new_qsid()
    name = scope_hex(qsid)
    emu.fault("job_failure", 1, "PATCH", "/api/storage/volumes/")
    assert_appliance_problem(create(gw, qsid, 2 * MiB), 502, "switching quotas on",
                             "out of quorum")
    state = emu.state()
    assert state["qtrees"] == [] and state["rules"] == []
    assert state["volumes"][0]["quota_enabled"] is False
    assert create(gw, qsid, 2 * MiB).status_code == 204
    assert emu.state()["volumes"][0]["quota_enabled"] is True
    assert len(rules(emu, name)) == 1


def test_verify_ssl_off_is_a_logged_warning(tmp_path: Path) -> None:
    """`netapp_verify_ssl = false` (the storage proxy never verifies): the gateway says so
    in its log, and works."""
    with vendor_gateway("netapp", tmp_path, options={"netapp_verify_ssl": "false"}) as (gw, _):
        assert "TLS verification is off for NetApp ONTAP" in gw.read_log()
        assert create(gw, new_qsid(), MiB).status_code == 204


def test_refused_input_is_4xx(gw_emu: tuple[Gateway, Emulator]) -> None:
    """A plain directory (not a qtree) in the volume, adopted as a scope: ONTAP refuses a
    tree rule for it; the caller gets ONTAP's 404 and message, and no scope is made."""
    gw, emu = gw_emu
    qsid = new_qsid()
    name = scope_hex(qsid)
    (gw.source / name).mkdir()
    try:
        assert_appliance_problem(create(gw, qsid, 2 * MiB), 404, "does not exist")
        assert_serving(gw)
        assert rules(emu, name) == [] and qtrees(emu, name) == []
        assert gw.request("GET", "/quota-scope",
                          {"volume": gw.volume, "qsid": qsid}).status_code == 404
    finally:
        (gw.source / name).rmdir()

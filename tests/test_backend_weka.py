"""The `weka` backend through real gateways, against the WEKA emulator (tests/emulators/weka.py,
whose docstring lists what it implements and follows) over real HTTP.

The emulator cannot enforce a hard limit on a local directory, so writing past the limit
(EDQUOT from the WEKA client) is not tested here; what is: the quota-scope flow with WEKA's
figures, the exact requests sent (login, bearer tokens, refresh, the filesystem lookup,
`set_directory_quota` over JSON-RPC, GET/DELETE of the directory quota), and the faults
(5xx, timeouts, dropped connections, expired tokens, bad credentials, refused input).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway, du_bytes, new_qsid, scope_hex, wait_for
from emulators import weka as weka_emulator
from emulators.common import Emulator
from vendor_fixture import vendor_gateway

MiB = 2**20
RETRIES = 3  # backends/rest.py: attempts after the first
TIMEOUT = 2.0  # appliance_timeout of the module's gateway


@pytest.fixture(scope="module")
def weka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Emulator]]:
    base = tmp_path_factory.mktemp("weka")
    with vendor_gateway("weka", base, options={"appliance_timeout": TIMEOUT}) as pair:
        yield pair


@pytest.fixture
def gw(weka: tuple[Gateway, Emulator]) -> Gateway:
    return weka[0]


@pytest.fixture
def emu(weka: tuple[Gateway, Emulator]) -> Emulator:
    return weka[1]


def mark(emu: Emulator) -> int:
    """Where the emulator's request log stands now (requests after it are this test's)."""
    return len(emu.requests())


def since(emu: Emulator, start: int, method: str | None = None,
          path_part: str = "") -> list[dict[str, Any]]:
    return [r for r in emu.requests()[start:]
            if (method is None or r["method"] == method) and path_part in r["path"]]


def quotas_of(emu: Emulator, gw: Gateway, qsid: str) -> list[dict[str, Any]]:
    path = "/" + scope_hex(qsid)
    return [q for q in emu.state()["quotas"] if q["path"] == path]


def inode(gw: Gateway, qsid: str) -> int:
    return os.stat(gw.source / scope_hex(qsid)).st_ino


def patch(gw: Gateway, qsid: str, limit: int) -> Any:
    return gw.request("PATCH", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": limit}})


def create(gw: Gateway, qsid: str, limit: int) -> Any:
    return gw.request("POST", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": limit}})


def assert_problem(r: Any, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status
    for word in ("weka", *words):
        assert word in body["detail"], body


def assert_clean(emu: Emulator) -> None:
    """No quota left whose directory is gone (one the backend did not remove)."""
    assert emu.state()["detached_quotas"] == []


# -- (1) the quota-scope flow ---------------------------------------------------------------------


def test_quota_scope_flow(gw: Gateway, emu: Emulator) -> None:
    qsid = new_qsid()
    scope = gw.create_scope(qsid, limit_bytes=10 * MiB)
    assert scope.is_dir()
    assert quotas_of(emu, gw, qsid) == [{
        "inode_id": inode(gw, qsid), "path": "/" + scope_hex(qsid),
        "hard_limit_bytes": 10 * MiB, "soft_limit_bytes": 10 * MiB, "status": "ACTIVE"}]
    figures = gw.describe(qsid)
    assert figures["limit_bytes"] == 10 * MiB
    assert figures["used_bytes"] == du_bytes(gw.source / scope_hex(qsid))

    vf = gw.make_vfolder(qsid)
    with open(vf / "data.bin", "wb") as f:
        f.write(b"w" * 300_000)
        os.fsync(f.fileno())
    backing = gw.source / scope_hex(qsid)
    wait_for(lambda: gw.describe(qsid)["used_bytes"] == du_bytes(backing) > 300_000, 20,
             "WEKA's used_bytes to follow the write")

    assert patch(gw, qsid, 20 * MiB).status_code == 204
    assert gw.describe(qsid)["limit_bytes"] == 20 * MiB
    assert quotas_of(emu, gw, qsid)[0]["hard_limit_bytes"] == 20 * MiB

    other = new_qsid("project")  # PATCH upserts a missing scope
    assert patch(gw, other, 3 * MiB).status_code == 204
    assert gw.describe(other)["limit_bytes"] == 3 * MiB
    assert quotas_of(emu, gw, other)[0]["hard_limit_bytes"] == 3 * MiB

    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": other})
    assert r.status_code == 204, r.text
    assert gw.describe(other)["limit_bytes"] is None
    assert quotas_of(emu, gw, other) == []

    fresh = new_qsid()  # folder/create with an initial size makes the scope and its quota
    vfid = f"{fresh}/{uuid.uuid4().hex}"
    r = gw.request("POST", "/folder/create", {
        "volume": gw.volume, "vfid": vfid,
        "options": {"initial_max_size_for_quota_scope": 4 * MiB}})
    assert r.status_code == 204, r.text
    assert gw.describe(fresh)["limit_bytes"] == 4 * MiB
    assert quotas_of(emu, gw, fresh)[0]["hard_limit_bytes"] == 4 * MiB

    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": fresh})
    assert r.status_code == 409  # it holds the vfolder: refused, quota untouched
    assert quotas_of(emu, gw, fresh)[0]["hard_limit_bytes"] == 4 * MiB
    assert gw.request("POST", "/folder/delete",
                      {"volume": gw.volume, "vfid": vfid}).status_code == 204
    for q in (fresh, other):
        r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": q})
        assert r.status_code == 204, r.text
        assert not (gw.source / scope_hex(q)).exists()
        assert quotas_of(emu, gw, q) == []
    assert_clean(emu)


# -- (2) the exact requests -----------------------------------------------------------------------


def test_login_and_filesystem_lookup_requests(gw: Gateway, emu: Emulator) -> None:
    """The first requests of the daemon's life: one login with the configured credentials
    as JSON, one filesystem list, and every other request with the login's bearer token."""
    gw.create_scope(new_qsid(), limit_bytes=MiB)  # the module's gateway may be fresh
    log = emu.requests()
    logins = [r for r in log if r["path"] == "/api/v2/login"]
    assert logins[0]["json"] == {"username": weka_emulator.USERNAME,
                                 "password": weka_emulator.PASSWORD, "org": "Root"}
    assert logins[0]["authorization"] is None
    token = logins[0]["answer"]["data"]["access_token"]
    first = log.index(logins[0])
    assert [r["method"] for r in log if r["path"] == "/api/v2/fileSystems"] == ["GET"]
    authed = [r for r in log[first + 1:] if not r["path"].startswith("/api/v2/login")]
    assert authed and authed[0]["authorization"] == f"Bearer {token}"
    # the credentials and tokens stay out of the gateway's log
    text = gw.read_log()
    assert weka_emulator.PASSWORD not in text
    assert token not in text


def test_requests_of_each_operation(gw: Gateway, emu: Emulator) -> None:
    qsid = new_qsid()
    start = mark(emu)
    gw.create_scope(qsid, limit_bytes=5 * MiB)
    fs_uid = _fs_uid(emu)
    ino = inode(gw, qsid)
    rpc = since(emu, start, "POST", "/api/v1")
    assert len(rpc) == 1
    body = rpc[0]["json"]
    assert isinstance(body.pop("id"), int)
    assert body == {"jsonrpc": "2.0", "method": "set_directory_quota", "params": {
        "inode_context": ino, "path": "/" + scope_hex(qsid), "hard_limit_bytes": 5 * MiB,
        "soft_limit_bytes": 5 * MiB, "activate": True}}
    assert rpc[0]["authorization"].startswith("Bearer ")
    assert since(emu, start, "DELETE") == []

    start = mark(emu)
    gw.describe(qsid)
    gets = since(emu, start, "GET", "/quota/")
    assert [r["path"] for r in gets] == [f"/api/v2/fileSystems/{fs_uid}/quota/{ino}"]
    assert gets[0]["json"] is None and gets[0]["authorization"].startswith("Bearer ")

    start = mark(emu)
    assert patch(gw, qsid, 6 * MiB).status_code == 204
    (update,) = since(emu, start, "POST", "/api/v1")
    assert update["json"]["params"]["hard_limit_bytes"] == 6 * MiB
    assert update["json"]["params"]["soft_limit_bytes"] == 6 * MiB

    start = mark(emu)
    assert gw.request("DELETE", "/quota-scope/quota",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 204
    assert [(r["method"], r["path"]) for r in since(emu, start, path_part="/quota/")] == [
        ("DELETE", f"/api/v2/fileSystems/{fs_uid}/quota/{ino}")]
    assert since(emu, start, "POST", "/api/v1") == []

    start = mark(emu)  # a limit of 0 is no quota as well
    assert patch(gw, qsid, 2 * MiB).status_code == 204
    assert patch(gw, qsid, 0).status_code == 204
    assert [r["method"] for r in since(emu, start)
            if r["path"].startswith(("/api/v1", f"/api/v2/fileSystems/{fs_uid}/quota"))
            ] == ["POST", "DELETE"]
    assert quotas_of(emu, gw, qsid) == []

    assert patch(gw, qsid, 2 * MiB).status_code == 204
    start = mark(emu)
    assert gw.request("DELETE", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 204
    assert [(r["method"], r["path"]) for r in since(emu, start, path_part="/quota/")] == [
        ("GET", f"/api/v2/fileSystems/{fs_uid}/quota/{ino}"),
        ("DELETE", f"/api/v2/fileSystems/{fs_uid}/quota/{ino}")]
    assert not (gw.source / scope_hex(qsid)).exists()
    assert_clean(emu)
    assert not any(r["status"] == 401 for r in emu.requests())


def _fs_uid(emu: Emulator) -> str:
    paths = [r["path"] for r in emu.requests() if "/quota" in r["path"]]
    if paths:
        return str(paths[0].split("/")[4])
    raise AssertionError("no quota request yet")


def test_scope_without_limit_has_no_quota(gw: Gateway, emu: Emulator) -> None:
    """No limit, no WEKA quota (as the storage proxy): the ledger's figures are shown."""
    qsid = new_qsid()
    start = mark(emu)
    gw.create_scope(qsid)
    assert since(emu, start, "POST", "/api/v1") == []
    figures = gw.describe(qsid)
    assert figures["limit_bytes"] is None
    assert figures["used_bytes"] is not None
    (get,) = since(emu, start, "GET", "/quota/")
    assert get["status"] == 500  # WEKA's "Directory has no quota"
    assert gw.request("DELETE", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 204


# -- (3) tokens -----------------------------------------------------------------------------------


def test_expired_token_is_refreshed_and_the_request_sent_again(gw: Gateway,
                                                                emu: Emulator) -> None:
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    start = mark(emu)
    emu.fault("expire_token", method="POST", path="/api/v1")
    assert patch(gw, qsid, 2 * MiB).status_code == 204
    steps = [(r["method"], r["path"], r["status"]) for r in since(emu, start)]
    assert steps == [("POST", "/api/v1", 401), ("POST", "/api/v2/login/refresh", 200),
                     ("POST", "/api/v1", 200)]
    log = since(emu, start)
    assert log[1]["json"] == {"refresh_token": _last_tokens(emu, start)["refresh_token"]}
    assert log[2]["authorization"] == f"Bearer {log[1]['answer']['data']['access_token']}"
    assert quotas_of(emu, gw, qsid)[0]["hard_limit_bytes"] == 2 * MiB


def _last_tokens(emu: Emulator, before: int) -> dict[str, Any]:
    """The tokens the backend held at `before`: the last login or refresh answered then."""
    answers = [r["answer"]["data"] for r in emu.requests()[:before]
               if r["path"].startswith("/api/v2/login") and r["status"] == 200]
    return answers[-1]


def test_expired_session_logs_in_again(gw: Gateway, emu: Emulator) -> None:
    """The refresh token refused too: a new login, then the request again."""
    qsid = new_qsid()
    start = mark(emu)
    emu.fault("expire_session", method="POST", path="/api/v1")
    assert create(gw, qsid, 3 * MiB).status_code == 204
    steps = [(r["method"], r["path"], r["status"]) for r in since(emu, start)
             if r["path"] in ("/api/v1", "/api/v2/login", "/api/v2/login/refresh")]
    assert steps == [("POST", "/api/v1", 401), ("POST", "/api/v2/login/refresh", 401),
                     ("POST", "/api/v2/login", 200), ("POST", "/api/v1", 200)]
    assert quotas_of(emu, gw, qsid)[0]["hard_limit_bytes"] == 3 * MiB


def test_token_refreshed_before_it_expires(gw: Gateway, emu: Emulator) -> None:
    """A token close to its expiry is refreshed before use: no request is answered 401."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    with emu.client() as c:
        assert c.post("/_emulator/weka/config", json={"token_lifetime": 3}).status_code == 204
    try:
        emu.fault("expire_token", method="GET", path="/api/v2/fileSystems/")
        start = mark(emu)
        gw.describe(qsid)  # answered 401, refreshed: the new token lives 3 s

        def refreshed_ahead() -> bool:
            gw.describe(qsid)
            return len(since(emu, start, "POST", "/api/v2/login/refresh")) >= 2

        wait_for(refreshed_ahead, 20, "a refresh ahead of the token's expiry")
        log = since(emu, start)
        assert [r["status"] for r in log].count(401) == 1  # the injected one only
        assert log[0]["status"] == 401
    finally:
        with emu.client() as c:
            c.post("/_emulator/weka/config", json={"token_lifetime": 300})
    assert patch(gw, qsid, 2 * MiB).status_code == 204  # and a 300 s token again


# -- (3) faults -----------------------------------------------------------------------------------


def test_5xx_once_is_retried(gw: Gateway, emu: Emulator) -> None:
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    start = mark(emu)
    emu.fault("5xx", method="POST", path="/api/v1")
    assert patch(gw, qsid, 2 * MiB).status_code == 204
    assert [r["status"] for r in since(emu, start, "POST", "/api/v1")] == [503, 200]
    assert quotas_of(emu, gw, qsid)[0]["hard_limit_bytes"] == 2 * MiB


def test_5xx_past_the_retries_is_502_and_a_retry_succeeds(gw: Gateway, emu: Emulator) -> None:
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    emu.fault("5xx", count=RETRIES + 1, method="POST", path="/api/v1")
    r = patch(gw, qsid, 2 * MiB)
    assert_problem(r, 502, "503", "emulated failure")
    assert gw.request("GET", "/").status_code == 200
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert quotas_of(emu, gw, qsid)[0]["hard_limit_bytes"] == MiB
    assert patch(gw, qsid, 2 * MiB).status_code == 204
    assert [q["hard_limit_bytes"] for q in quotas_of(emu, gw, qsid)] == [2 * MiB]


def test_failed_create_leaves_nothing(gw: Gateway, emu: Emulator) -> None:
    """The quota cannot be set: the directory goes again; the retry makes one of each."""
    qsid = new_qsid()
    emu.fault("5xx", count=RETRIES + 1, method="POST", path="/api/v1")
    assert_problem(create(gw, qsid, MiB), 502, "emulated failure")
    assert not (gw.source / scope_hex(qsid)).exists()
    assert quotas_of(emu, gw, qsid) == []
    assert gw.request("GET", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 404
    assert create(gw, qsid, MiB).status_code == 204
    assert len(quotas_of(emu, gw, qsid)) == 1
    assert_clean(emu)


def test_5xx_on_delete(gw: Gateway, emu: Emulator) -> None:
    """A failing DELETE of the quota leaves the scope, directory and quota as they were."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    emu.fault("5xx", count=RETRIES + 1, method="DELETE", path="/api/v2/fileSystems/")
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert_problem(r, 502, "emulated failure")
    assert (gw.source / scope_hex(qsid)).is_dir()
    assert gw.describe(qsid)["limit_bytes"] == MiB
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert quotas_of(emu, gw, qsid) == []
    assert_clean(emu)


def test_timeout_is_retried_and_then_502(gw: Gateway, emu: Emulator) -> None:
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    start = mark(emu)
    emu.fault("timeout", method="POST", path="/api/v1")
    assert patch(gw, qsid, 2 * MiB).status_code == 204
    assert len(since(emu, start, "POST", "/api/v1")) == 2
    assert quotas_of(emu, gw, qsid)[0]["hard_limit_bytes"] == 2 * MiB

    emu.fault("timeout", count=RETRIES + 1, method="POST", path="/api/v1")
    assert_problem(patch(gw, qsid, 3 * MiB), 502, "unreachable", "ReadTimeout")
    assert gw.request("GET", "/").status_code == 200
    assert gw.describe(qsid)["limit_bytes"] == 2 * MiB
    assert patch(gw, qsid, 3 * MiB).status_code == 204
    assert [q["hard_limit_bytes"] for q in quotas_of(emu, gw, qsid)] == [3 * MiB]


def test_dropped_connection_is_retried_and_then_502(gw: Gateway, emu: Emulator) -> None:
    qsid = new_qsid()
    start = mark(emu)
    emu.fault("drop", method="POST", path="/api/v1")
    assert create(gw, qsid, MiB).status_code == 204
    assert len(since(emu, start, "POST", "/api/v1")) == 2
    assert len(quotas_of(emu, gw, qsid)) == 1

    emu.fault("drop", count=RETRIES + 1, method="GET", path="/api/v2/fileSystems/")
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert_problem(r, 502, "unreachable")
    assert (gw.source / scope_hex(qsid)).is_dir()
    assert len(quotas_of(emu, gw, qsid)) == 1
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert quotas_of(emu, gw, qsid) == []
    assert_clean(emu)


def test_refused_input_is_4xx_and_changes_nothing(gw: Gateway, emu: Emulator) -> None:
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    emu.fault("reject", method="POST", path="/api/v1")
    r = patch(gw, qsid, 2 * MiB)
    assert_problem(r, 400, "set_directory_quota", "refused by this cluster", "-32602")
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert quotas_of(emu, gw, qsid)[0]["hard_limit_bytes"] == MiB

    fresh = new_qsid()
    emu.fault("reject", method="POST", path="/api/v1")
    assert_problem(create(gw, fresh, MiB), 400, "refused by this cluster")
    assert not (gw.source / scope_hex(fresh)).exists()
    assert quotas_of(emu, gw, fresh) == []
    assert create(gw, fresh, MiB).status_code == 204

    emu.fault("reject", method="DELETE", path="/api/v2/fileSystems/")
    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": fresh})
    assert_problem(r, 400, "emulated refusal")
    assert gw.describe(fresh)["limit_bytes"] == MiB
    assert gw.request("GET", "/").status_code == 200


def test_describe_while_the_appliance_fails_shows_the_ledger(gw: Gateway,
                                                              emu: Emulator) -> None:
    """GET /quota-scope still answers, with the ledger's figures, then WEKA's again."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    start = mark(emu)
    emu.fault("5xx", count=RETRIES + 1, method="GET", path="/api/v2/fileSystems/")
    figures = gw.describe(qsid)
    assert figures["limit_bytes"] == MiB  # the ledger's record of the limit
    assert [r["status"] for r in since(emu, start, "GET", "/quota/")] == [503] * (RETRIES + 1)
    wait_for(lambda: gw.describe(qsid) is not None
             and len(since(emu, start, "GET", "/quota/")) > RETRIES + 1, 20, "WEKA asked again")
    assert since(emu, start, "GET", "/quota/")[-1]["status"] == 200


# -- a gateway with bad credentials ---------------------------------------------------------------


def test_bad_credentials_are_502_naming_weka(tmp_path: Path) -> None:
    """And weka_verify_ssl=false is accepted, with the warning logged."""
    with vendor_gateway("weka", tmp_path, options={
            "weka_password": "wrong-password", "weka_verify_ssl": "false"}) as (gw, emu):
        qsid = new_qsid()
        r = create(gw, qsid, MiB)
        assert_problem(r, 502, "401", "Invalid username, password or organization")
        assert not (gw.source / scope_hex(qsid)).exists()
        assert emu.state()["quotas"] == []
        assert gw.request("GET", "/").status_code == 200
        text = gw.read_log()
        assert "TLS verification is off for weka" in text
        assert "wrong-password" not in text
        assert [r["path"] for r in emu.requests()] == ["/api/v2/login"]


def test_unknown_filesystem_is_502_naming_it(tmp_path: Path) -> None:
    with vendor_gateway("weka", tmp_path, options={"weka_fs_name": "nope"}) as (gw, emu):
        qsid = new_qsid()
        r = create(gw, qsid, MiB)
        assert_problem(r, 502, "'nope' not found", weka_emulator.FS_NAME, "weka_fs_name")
        assert not (gw.source / scope_hex(qsid)).exists()
        assert emu.state()["quotas"] == []

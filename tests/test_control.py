"""The control socket, over real HTTP/1.1 on the real Unix socket of a real mounted gateway.

Proves the quota-scope API of DESIGN.md section 5: the routes and their answers, the parsing of
quota scope IDs (section 2), problem+json errors with the storage proxy's types, that no bad
request ever yields a 5xx, changes state or stops the daemon, SO_PEERCRED authorisation (root
or the admin group), the audit log, and that slow or half-closed clients block nobody.

Most tests share one gateway (module scope) and use fresh scope IDs; the gateways live in a
world-traversable directory so that unprivileged clients can reach the socket at all (pytest's
own tmp directory is 0700), and the 403s they get are the gateway's answer, not the kernel's.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    Gateway,
    new_qsid,
    run_as,
    scope_hex,
    start_gateway,
    wait_for,
)

PROBS = "https://api.backend.ai/probs/storage/"
INVALID = PROBS + "invalid-api-params"
SCOPE_NOT_FOUND = PROBS + "quota/scope/not-found"
PROBLEM_JSON = "application/problem+json"
MiB = 2**20


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(public_dir: Path) -> Iterator[Gateway]:
    g = start_gateway(public_dir, "ctl")
    yield g
    g.stop()


@pytest.fixture
def admin_gw(public_dir: Path) -> Iterator[Gateway]:
    g = start_gateway(public_dir, f"adm{uuid.uuid4().hex[:6]}", ["--admin-group", "4242"])
    yield g
    g.stop()


@pytest.fixture(scope="module")
def ref_scope(gw: Gateway) -> str:
    """A scope that exists for the whole module, with a limit and a vfolder in it."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=7 * MiB, limit_inodes=777)
    vf = gw.make_vfolder(qsid)
    (vf / "data").write_bytes(b"x" * 10000)
    return qsid


_clients: dict[Path, httpx.Client] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.popitem()[1].close()


def call(gw: Gateway, method: str, path: str, body: Any = None, *, content: bytes | None = None,
         params: dict[str, str] | None = None) -> httpx.Response:
    """One request over the real socket (one keep-alive client per gateway, since building an
    httpx client costs more than the request); `body` is sent as JSON, `content` as raw bytes."""
    if body is not None:
        content = json.dumps(body).encode()
    client = _clients.get(gw.socket)
    if client is None:
        client = _clients[gw.socket] = gw.client()
    return client.request(method, path, content=content, params=params)


def get_scope(gw: Gateway, qsid: str) -> httpx.Response:
    return call(gw, "GET", "/quota-scope", {"volume": gw.volume, "qsid": qsid})


def assert_problem(r: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == PROBLEM_JSON, r.headers
    body = r.json()
    assert isinstance(body, dict), body
    assert body["type"].startswith(PROBS), body
    assert isinstance(body.get("title"), str) and body["title"], body
    if type_ is not None:
        assert body["type"] == type_, body
    return body


def snapshot(gw: Gateway, qsids: list[str]) -> tuple[Any, ...]:
    """What a bad request must not change: each scope's GET answer, and the volume listing."""
    answers = []
    for q in qsids:
        r = get_scope(gw, q)
        answers.append((q, r.status_code, r.json() if r.status_code == 200 else None))
    return tuple(answers), tuple(sorted(os.listdir(gw.mountpoint)))


def assert_serving(gw: Gateway) -> None:
    assert gw.alive(), "gateway died"
    r = call(gw, "GET", "/")
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text


def audit_lines(gw: Gateway) -> list[dict[str, Any]]:
    lines = []
    for line in gw.read_log().splitlines():
        if " fusegw.audit " in line:
            lines.append(json.loads(line.split(" fusegw.audit ", 1)[1]))
    return lines


# -- the routes ---------------------------------------------------------------------------------


def test_root_answers_status_ok(gw: Gateway) -> None:
    """GET / answers 200 with a JSON object whose status is "ok"."""
    r = call(gw, "GET", "/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == "ok"
    assert body["pid"] == gw.pid


def test_volumes_lists_this_volume(gw: Gateway) -> None:
    """GET /volumes names the volume, its vfs backend, the mount point and a capability list."""
    r = call(gw, "GET", "/volumes")
    assert r.status_code == 200, r.text
    volumes = r.json()["volumes"]
    assert len(volumes) == 1
    v = volumes[0]
    assert v["name"] == gw.volume
    assert v["backend"] == "vfs"
    assert v["path"] == str(gw.mountpoint)
    assert isinstance(v["capabilities"], list)
    assert all(isinstance(c, str) for c in v["capabilities"])


def test_create_with_limit_then_get_reports_figures(gw: Gateway) -> None:
    """POST /quota-scope answers 204, the scope dir appears in the mount, and GET answers 200
    with used_bytes, limit_bytes, used_inodes and limit_inodes."""
    qsid = new_qsid()
    r = call(gw, "POST", "/quota-scope",
             {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": 5 * MiB}})
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert scope_hex(qsid) in os.listdir(gw.mountpoint)
    assert (gw.mountpoint / scope_hex(qsid)).is_dir()
    r = get_scope(gw, qsid)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["limit_bytes"] == 5 * MiB
    assert body["limit_inodes"] is None
    assert isinstance(body["used_bytes"], int) and body["used_bytes"] >= 0
    assert body["used_inodes"] == 0


def test_create_with_null_options_is_unlimited(gw: Gateway) -> None:
    """POST with options null creates an unlimited scope: GET answers limit_bytes null."""
    qsid = new_qsid()
    r = call(gw, "POST", "/quota-scope", {"volume": gw.volume, "qsid": qsid, "options": None})
    assert r.status_code == 204, r.text
    body = get_scope(gw, qsid).json()
    assert body["limit_bytes"] is None
    assert body["limit_inodes"] is None


def test_get_takes_params_from_query_string(gw: Gateway) -> None:
    """GET /quota-scope?volume=..&qsid=.. (no body) answers like the JSON-body form."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=3 * MiB)
    r = call(gw, "GET", "/quota-scope", params={"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 200, r.text
    assert r.json() == get_scope(gw, qsid).json()
    assert r.json()["limit_bytes"] == 3 * MiB
    r = call(gw, "GET", "/quota-scope", params={"volume": gw.volume, "qsid": new_qsid()})
    assert_problem(r, 404, SCOPE_NOT_FOUND)


def test_patch_updates_limit(gw: Gateway) -> None:
    """PATCH /quota-scope answers 204 and GET shows the new limit."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    r = call(gw, "PATCH", "/quota-scope",
             {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": 2 * MiB}})
    assert r.status_code == 204, r.text
    assert get_scope(gw, qsid).json()["limit_bytes"] == 2 * MiB
    r = call(gw, "PATCH", "/quota-scope",
             {"volume": gw.volume, "qsid": qsid, "options": {"limit_inodes": 50}})
    assert r.status_code == 204, r.text
    body = get_scope(gw, qsid).json()
    assert (body["limit_bytes"], body["limit_inodes"]) == (2 * MiB, 50)


def test_patch_creates_missing_scope(gw: Gateway) -> None:
    """PATCH on a scope that does not exist creates it (upsert) with the given limit."""
    qsid = new_qsid()
    assert get_scope(gw, qsid).status_code == 404
    r = call(gw, "PATCH", "/quota-scope",
             {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": 4 * MiB}})
    assert r.status_code == 204, r.text
    assert get_scope(gw, qsid).json()["limit_bytes"] == 4 * MiB
    assert scope_hex(qsid) in os.listdir(gw.mountpoint)


def test_delete_quota_lifts_limit_keeps_scope(gw: Gateway) -> None:
    """DELETE /quota-scope/quota answers 204, GET then shows null limits, the dir stays."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB, limit_inodes=10)
    r = call(gw, "DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    r = get_scope(gw, qsid)
    assert r.status_code == 200
    assert r.json()["limit_bytes"] is None
    assert r.json()["limit_inodes"] is None
    assert scope_hex(qsid) in os.listdir(gw.mountpoint)


def test_delete_scope_removes_dir(gw: Gateway) -> None:
    """DELETE /quota-scope answers 204; the scope is gone from the API and from the mount."""
    qsid = new_qsid()
    path = gw.create_scope(qsid)
    assert path.is_dir()
    r = call(gw, "DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert scope_hex(qsid) not in os.listdir(gw.mountpoint)
    wait_for(lambda: not path.exists(), what="scope dir to vanish from the mount")
    assert_problem(get_scope(gw, qsid), 404, SCOPE_NOT_FOUND)


def test_delete_scope_holding_vfolder_is_409_and_changes_nothing(gw: Gateway) -> None:
    """DELETE of a scope that holds a vfolder answers 409; scope, limit and vfolder remain."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    vf = gw.make_vfolder(qsid)
    (vf / "f").write_bytes(b"abc")
    before = snapshot(gw, [qsid])
    r = call(gw, "DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert_problem(r, 409)
    assert snapshot(gw, [qsid]) == before
    assert (vf / "f").read_bytes() == b"abc"
    assert_serving(gw)


# -- quota scope IDs ----------------------------------------------------------------------------


def test_qsid_type_is_case_insensitive_and_canonicalised(gw: Gateway) -> None:
    """`USER:<UUID>` creates the scope `user:<uuid>`: the canonical form and any case find it."""
    u = uuid.uuid4()
    r = call(gw, "POST", "/quota-scope",
             {"volume": gw.volume, "qsid": f"USER:{str(u).upper()}", "options": None})
    assert r.status_code == 204, r.text
    assert get_scope(gw, f"user:{u}").status_code == 200
    assert get_scope(gw, f"User:{u}").status_code == 200
    assert u.hex in os.listdir(gw.mountpoint)
    assert audit_lines(gw)[-1]["qsid"] == f"user:{u}"
    # the same scope under another spelling is a duplicate
    r = call(gw, "POST", "/quota-scope", {"volume": gw.volume, "qsid": f"user:{u}"})
    assert_problem(r, 409)


def test_qsid_uuid_as_32_hex(gw: Gateway) -> None:
    """`project:<32 hex digits>` is accepted and is the same scope as the hyphenated form."""
    u = uuid.uuid4()
    r = call(gw, "POST", "/quota-scope",
             {"volume": gw.volume, "qsid": f"project:{u.hex}", "options": {"limit_bytes": 1}})
    assert r.status_code == 204, r.text
    r = get_scope(gw, f"project:{u}")
    assert r.status_code == 200 and r.json()["limit_bytes"] == 1
    assert get_scope(gw, f"project:{u.hex.upper()}").status_code == 200


BAD_QSIDS = {
    "no-colon": "user" + str(uuid.UUID(int=1)),
    "unknown-type": f"group:{uuid.UUID(int=2)}",
    "bad-uuid": "user:not-a-uuid",
    "short-uuid": "user:1234",
    "empty-uuid": "user:",
    "empty": "",
    "braced-uuid": f"user:{{{uuid.UUID(int=3)}}}",
    "list": [f"user:{uuid.UUID(int=4)}"],
    "object": {"user": str(uuid.UUID(int=5))},
    "number": 42,
    "null": None,
    "bool": True,
}


@pytest.mark.parametrize("method,path", [("POST", "/quota-scope"), ("PATCH", "/quota-scope"),
                                         ("GET", "/quota-scope"), ("DELETE", "/quota-scope"),
                                         ("DELETE", "/quota-scope/quota")])
@pytest.mark.parametrize("case", sorted(BAD_QSIDS))
def test_invalid_qsid_is_400_with_data_and_changes_nothing(gw: Gateway, ref_scope: str,
                                                           case: str, method: str,
                                                           path: str) -> None:
    """An invalid qsid answers 400 invalid-api-params with a `data` object naming `qsid`;
    nothing changes and the daemon still serves."""
    before = snapshot(gw, [ref_scope])
    body = {"volume": gw.volume, "qsid": BAD_QSIDS[case], "options": {"limit_bytes": 5}}
    problem = assert_problem(call(gw, method, path, body), 400, INVALID)
    assert isinstance(problem.get("data"), dict), problem
    assert "qsid" in problem["data"], problem
    assert snapshot(gw, [ref_scope]) == before
    assert_serving(gw)


def test_invalid_qsid_in_query_string_is_400(gw: Gateway) -> None:
    """GET with an invalid qsid in the query string answers 400 with data, like the body form."""
    for bad in ("user", "group:" + str(uuid.uuid4()), "user:xyz", ""):
        r = call(gw, "GET", "/quota-scope", params={"volume": gw.volume, "qsid": bad})
        problem = assert_problem(r, 400, INVALID)
        assert isinstance(problem.get("data"), dict) and "qsid" in problem["data"], problem
    assert_serving(gw)


def test_duplicate_create_is_409(gw: Gateway) -> None:
    """A second POST of an existing scope answers 409 and keeps the first one's limit."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    before = snapshot(gw, [qsid])
    r = call(gw, "POST", "/quota-scope",
             {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": 2 * MiB}})
    assert_problem(r, 409)
    assert snapshot(gw, [qsid]) == before
    assert_serving(gw)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_project_scope_with_user_scope_uuid_is_409(gw: Gateway, method: str) -> None:
    """POST or PATCH (upsert) of project:<U> while user:<U> exists would make a second scope
    with the same pathname (DESIGN section 2): 409, the user scope stays as it was and no
    project scope appears."""
    u = uuid.uuid4()
    gw.create_scope(f"user:{u}", limit_bytes=MiB)
    before = snapshot(gw, [f"user:{u}", f"project:{u}"])
    r = call(gw, method, "/quota-scope",
             {"volume": gw.volume, "qsid": f"project:{u}", "options": {"limit_bytes": 2 * MiB}})
    assert_problem(r, 409)
    assert snapshot(gw, [f"user:{u}", f"project:{u}"]) == before
    assert get_scope(gw, f"project:{u}").status_code == 404


@pytest.mark.parametrize("method,path", [("POST", "/quota-scope"), ("PATCH", "/quota-scope"),
                                         ("GET", "/quota-scope"), ("DELETE", "/quota-scope"),
                                         ("DELETE", "/quota-scope/quota")])
def test_unknown_volume_is_404(gw: Gateway, ref_scope: str, method: str, path: str) -> None:
    """A request naming another volume answers 404 problem+json and changes nothing."""
    before = snapshot(gw, [ref_scope])
    qsid = new_qsid()
    for qs in (qsid, ref_scope):
        body = {"volume": "no-such-volume", "qsid": qs, "options": {"limit_bytes": 5}}
        problem = assert_problem(call(gw, method, path, body), 404)
        assert problem["type"] != SCOPE_NOT_FOUND
    assert snapshot(gw, [ref_scope]) == before
    assert get_scope(gw, qsid).status_code == 404


@pytest.mark.parametrize("method,path", [("GET", "/quota-scope"),
                                         ("DELETE", "/quota-scope/quota"),
                                         ("DELETE", "/quota-scope")])
def test_unknown_scope_is_404_not_found(gw: Gateway, ref_scope: str, method: str,
                                        path: str) -> None:
    """GET, DELETE quota and DELETE of a scope that does not exist answer 404
    quota/scope/not-found and create nothing."""
    before = snapshot(gw, [ref_scope])
    qsid = new_qsid()
    r = call(gw, method, path, {"volume": gw.volume, "qsid": qsid})
    assert_problem(r, 404, SCOPE_NOT_FOUND)
    assert snapshot(gw, [ref_scope]) == before
    assert scope_hex(qsid) not in os.listdir(gw.mountpoint)


def test_unknown_route_is_404(gw: Gateway) -> None:
    """A path with no route answers 404 problem+json."""
    for method, path in (("GET", "/nope"), ("POST", "/quota-scope/nope"), ("GET", "/quota")):
        assert_problem(call(gw, method, path, {"volume": gw.volume}), 404)
    assert_serving(gw)


def test_wrong_method_is_405(gw: Gateway, ref_scope: str) -> None:
    """A known path with a method it does not take answers 405 problem+json, nothing changes."""
    before = snapshot(gw, [ref_scope])
    for method, path in (("PUT", "/quota-scope"), ("POST", "/"), ("DELETE", "/volumes"),
                         ("GET", "/quota-scope/quota"), ("PATCH", "/quota-scope/quota")):
        assert_problem(call(gw, method, path, {"volume": gw.volume, "qsid": ref_scope}), 405)
    assert snapshot(gw, [ref_scope]) == before
    assert_serving(gw)


# -- bad bodies ---------------------------------------------------------------------------------


def _limit_body(value: Any, key: str = "limit_bytes") -> dict[str, Any]:
    return {"options": {key: value}}


BAD_BODIES: dict[str, tuple[bytes | dict[str, Any], str | None]] = {
    # name: (raw body, or fields to merge into {volume, qsid}; the field `data` must name)
    "invalid-json": (b'{"volume": "ctl", "qsid": ', None),
    "invalid-utf8": (b'{"volume": "\xff\xfe"}', None),
    "json-array": (b'["ctl", "user:00000000-0000-0000-0000-000000000001"]', None),
    "json-string": (b'"hello"', None),
    "json-number": (b"12", None),
    "deeply-nested-json": (b"[" * 60000, None),
    "negative-limit": (_limit_body(-1), "limit_bytes"),
    "fractional-limit": (_limit_body(1.5), "limit_bytes"),
    "integral-float-limit": (_limit_body(1048576.0), "limit_bytes"),
    "bool-limit": (_limit_body(True), "limit_bytes"),
    "string-limit": (_limit_body("1048576"), "limit_bytes"),
    "huge-limit": (_limit_body(2**64), "limit_bytes"),
    "huge-inode-limit": (_limit_body(2**64, "limit_inodes"), "limit_inodes"),
    "negative-inode-limit": (_limit_body(-5, "limit_inodes"), "limit_inodes"),
    "object-limit": (_limit_body({"v": 1}), "limit_bytes"),
    "unknown-option-key": ({"options": {"limit_byte": 5}}, "limit_byte"),
    "extra-unknown-option": ({"options": {"limit_bytes": 5, "max_size": 9}}, "max_size"),
    "options-not-object": ({"options": [1, 2]}, "options"),
    "volume-not-string": ({"volume": 7, "options": {"limit_bytes": 5}}, "volume"),
    "volume-missing": ({"volume": ..., "options": {"limit_bytes": 5}}, "volume"),
}


def _bad_content(gw: Gateway, case: str, qsid: str) -> bytes:
    spec, _ = BAD_BODIES[case]
    if isinstance(spec, bytes):
        return spec
    body: dict[str, Any] = {"volume": gw.volume, "qsid": qsid}
    body.update(spec)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


@pytest.mark.parametrize("target", ["new-scope", "existing-scope"])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_body_is_400_and_changes_nothing(gw: Gateway, ref_scope: str, case: str,
                                             method: str, target: str) -> None:
    """Invalid JSON, a non-object body, a limit that is negative, fractional, bool, string,
    over 2^63-1 or not a number, and unknown option keys each answer 400 invalid-api-params
    (never 5xx), naming the bad field in `data` where there is one; the existing scope keeps its
    limits, no scope is created, and the daemon still serves."""
    qsid = ref_scope if target == "existing-scope" else new_qsid()
    before = snapshot(gw, [ref_scope, qsid])
    r = call(gw, method, "/quota-scope", content=_bad_content(gw, case, qsid))
    problem = assert_problem(r, 400, INVALID)
    field = BAD_BODIES[case][1]
    if field is not None:
        assert isinstance(problem.get("data"), dict) and field in problem["data"], problem
    assert snapshot(gw, [ref_scope, qsid]) == before
    assert_serving(gw)


def test_patch_without_a_limit_is_400(gw: Gateway, ref_scope: str) -> None:
    """PATCH needs options that set a limit: missing, null or empty options answer 400 and
    neither change the scope nor create one."""
    qsid = new_qsid()
    before = snapshot(gw, [ref_scope, qsid])
    for q in (ref_scope, qsid):
        for extra in ({}, {"options": None}, {"options": {}}):
            r = call(gw, "PATCH", "/quota-scope", {"volume": gw.volume, "qsid": q, **extra})
            assert_problem(r, 400, INVALID)
    assert snapshot(gw, [ref_scope, qsid]) == before
    assert_serving(gw)


def test_missing_qsid_is_400(gw: Gateway, ref_scope: str) -> None:
    """A request without qsid (empty body, or volume only) answers 400 naming the field."""
    before = snapshot(gw, [ref_scope])
    for method, path in (("POST", "/quota-scope"), ("GET", "/quota-scope"),
                         ("PATCH", "/quota-scope"), ("DELETE", "/quota-scope")):
        r = call(gw, method, path, {"volume": gw.volume})
        problem = assert_problem(r, 400, INVALID)
        assert "qsid" in problem.get("data", {}), problem
        assert_problem(call(gw, method, path), 400, INVALID)
    assert snapshot(gw, [ref_scope]) == before


def test_body_over_64k_is_413(gw: Gateway, ref_scope: str) -> None:
    """A request body over 64 KiB answers 413 problem+json; nothing is created."""
    qsid = new_qsid()
    before = snapshot(gw, [ref_scope, qsid])
    body = {"volume": gw.volume, "qsid": qsid, "options": None, "pad": "x" * (80 * 1024)}
    assert_problem(call(gw, "POST", "/quota-scope", body), 413)
    assert snapshot(gw, [ref_scope, qsid]) == before
    assert_serving(gw)


def test_body_of_exactly_64k_is_accepted(gw: Gateway) -> None:
    """The 64 KiB limit is a limit, not an off-by-one: a body of exactly 64 KiB is read whole
    (a GET padded with spaces to 65536 bytes answers 200)."""
    gw.create_scope(qsid := new_qsid())
    raw = json.dumps({"volume": gw.volume, "qsid": qsid}).encode()
    raw = raw + b" " * (64 * 1024 - len(raw))
    r = call(gw, "GET", "/quota-scope", content=raw)
    assert r.status_code == 200, r.text


# -- authorisation ------------------------------------------------------------------------------

CLIENT = r"""
import json, sys, httpx
sock, requests = sys.argv[1], json.loads(sys.argv[2])
out = []
with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://fusegw",
                  timeout=30) as c:
    for method, path, body in requests:
        r = c.request(method, path, content=None if body is None else json.dumps(body))
        out.append([r.status_code, r.headers.get("content-type"), r.text])
print(json.dumps(out))
"""


def run_client(gw: Gateway, uid: int, requests: list[list[Any]],
               gid: int | None = None) -> list[tuple[int, str | None, str]]:
    """Send `requests` from a process running as uid/gid (no supplementary groups)."""
    proc = run_as(uid, [sys.executable, "-c", CLIENT, str(gw.socket), json.dumps(requests)],
                  gid=gid)
    assert proc.returncode == 0, proc.stderr
    return [tuple(x) for x in json.loads(proc.stdout)]  # type: ignore[misc]


def test_socket_file_mode_is_0660(gw: Gateway) -> None:
    """The control socket is created as a socket file with mode 0660, owned by root."""
    st = os.stat(gw.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == 0


def test_unprivileged_peer_is_403_and_changes_nothing(gw: Gateway, ref_scope: str) -> None:
    """With the socket opened to everyone (0666), uid 65534 can connect (GET / answers 200) but
    POST, PATCH, DELETE and GET /quota-scope answer 403 problem+json, and nothing changes."""
    qsid = new_qsid()
    before = snapshot(gw, [ref_scope, qsid])
    audits = len(audit_lines(gw))
    os.chmod(gw.socket, 0o666)
    try:
        v = gw.volume
        answers = run_client(gw, 65534, [
            ["GET", "/", None],
            ["POST", "/quota-scope", {"volume": v, "qsid": qsid, "options": None}],
            ["PATCH", "/quota-scope", {"volume": v, "qsid": qsid,
                                       "options": {"limit_bytes": 1}}],
            ["PATCH", "/quota-scope", {"volume": v, "qsid": ref_scope,
                                       "options": {"limit_bytes": 1}}],
            ["DELETE", "/quota-scope/quota", {"volume": v, "qsid": ref_scope}],
            ["DELETE", "/quota-scope", {"volume": v, "qsid": ref_scope}],
            ["GET", "/quota-scope", {"volume": v, "qsid": ref_scope}],
        ])
    finally:
        os.chmod(gw.socket, 0o660)
    assert answers[0][0] == 200, answers[0]
    for status, ctype, text in answers[1:]:
        assert status == 403, (status, text)
        assert ctype == PROBLEM_JSON
        assert json.loads(text)["type"].startswith(PROBS)
    assert snapshot(gw, [ref_scope, qsid]) == before
    assert len(audit_lines(gw)) == audits
    assert_serving(gw)


def test_admin_group_member_is_allowed(admin_gw: Gateway) -> None:
    """With --admin-group 4242 the socket belongs to group 4242 (mode 0660), and uid 65534 with
    gid 4242 may create, update, read and delete a scope (204/200), audited under its uid."""
    st = os.stat(admin_gw.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 4242
    qsid = new_qsid()
    v = admin_gw.volume
    answers = run_client(admin_gw, 65534, [
        ["POST", "/quota-scope", {"volume": v, "qsid": qsid, "options": {"limit_bytes": 100}}],
        ["PATCH", "/quota-scope", {"volume": v, "qsid": qsid, "options": {"limit_bytes": 200}}],
        ["GET", "/quota-scope", {"volume": v, "qsid": qsid}],
    ], gid=4242)
    assert [a[0] for a in answers] == [204, 204, 200], answers
    assert json.loads(answers[2][2])["limit_bytes"] == 200
    assert admin_gw.describe(qsid)["limit_bytes"] == 200
    assert [a["uid"] for a in audit_lines(admin_gw)[-2:]] == [65534, 65534]
    # the same uid without the group is still refused
    os.chmod(admin_gw.socket, 0o666)
    answers = run_client(admin_gw, 65534, [
        ["DELETE", "/quota-scope", {"volume": v, "qsid": qsid}]])
    assert answers[0][0] == 403, answers
    assert admin_gw.describe(qsid)["limit_bytes"] == 200
    # a supplementary membership of the admin group counts as well
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--groups=4242", sys.executable, "-c",
         CLIENT, str(admin_gw.socket),
         json.dumps([["DELETE", "/quota-scope", {"volume": v, "qsid": qsid}]])],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0][0] == 204, proc.stdout
    assert_problem(get_scope(admin_gw, qsid), 404, SCOPE_NOT_FOUND)


# -- audit --------------------------------------------------------------------------------------


def test_each_change_writes_one_audit_line(gw: Gateway) -> None:
    """create, update, unset and delete each add exactly one fusegw.audit line naming uid, pid,
    event, and the values before and after; refused changes add none."""
    qsid = new_qsid()
    steps = [
        ("POST", "/quota-scope", {"options": {"limit_bytes": 1000}}, "quota-scope.create",
         None, {"limit_bytes": 1000, "limit_inodes": 0}),
        ("PATCH", "/quota-scope", {"options": {"limit_bytes": 2000}}, "quota-scope.update",
         {"limit_bytes": 1000, "limit_inodes": 0}, {"limit_bytes": 2000, "limit_inodes": 0}),
        ("DELETE", "/quota-scope/quota", {}, "quota-scope.unset",
         {"limit_bytes": 2000, "limit_inodes": 0}, {"limit_bytes": 0, "limit_inodes": 0}),
        ("DELETE", "/quota-scope", {}, "quota-scope.delete",
         {"limit_bytes": 0, "limit_inodes": 0}, None),
    ]
    for method, path, extra, event, before, after in steps:
        count = len(audit_lines(gw))
        r = call(gw, method, path, {"volume": gw.volume, "qsid": qsid, **extra})
        assert r.status_code == 204, r.text
        lines = audit_lines(gw)
        assert len(lines) == count + 1, lines[count:]
        line = lines[-1]
        assert line["event"] == event
        assert line["qsid"] == qsid
        assert line["uid"] == os.getuid()
        assert line["pid"] == os.getpid()
        assert line["before"] == before
        assert line["after"] == after
    count = len(audit_lines(gw))
    call(gw, "DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})  # 404 now
    call(gw, "POST", "/quota-scope", {"volume": gw.volume, "qsid": qsid,
                                      "options": {"limit_bytes": -1}})  # 400
    assert len(audit_lines(gw)) == count


# -- slow and half-closed clients ---------------------------------------------------------------


def _connect(gw: Gateway) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(str(gw.socket))
    return s


def _read_response(s: socket.socket) -> bytes:
    """Read until the server closes the connection or one full response has arrived."""
    data = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, val = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(val)
            if len(rest) >= length:
                return data
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"no complete response nor close: {data!r}")


def _status(response: bytes) -> int | None:
    if not response:
        return None
    return int(response.split(b" ", 2)[1])


def test_stalled_client_does_not_block_others(gw: Gateway, ref_scope: str) -> None:
    """Clients that connect and send part of a request (headers, or headers and part of the
    body) and then stall do not block others: GET / and GET /quota-scope answer meanwhile, and
    the stalled requests change nothing."""
    qsid = new_qsid()
    before = snapshot(gw, [ref_scope, qsid])
    body = json.dumps({"volume": gw.volume, "qsid": qsid, "options": None}).encode()
    stalled = []
    try:
        s1 = _connect(gw)
        stalled.append(s1)
        s1.sendall(b"POST /quota-scope HTTP/1.1\r\nHost: fusegw\r\nContent-Le")
        s2 = _connect(gw)
        stalled.append(s2)
        s2.sendall(b"POST /quota-scope HTTP/1.1\r\nHost: fusegw\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
        s3 = _connect(gw)  # connected, says nothing at all
        stalled.append(s3)
        for _ in range(3):
            start = time.monotonic()
            assert_serving(gw)
            assert get_scope(gw, ref_scope).status_code == 200
            assert time.monotonic() - start < 5
        assert snapshot(gw, [ref_scope, qsid]) == before
    finally:
        for s in stalled:
            s.close()
    assert_serving(gw)
    assert snapshot(gw, [ref_scope, qsid]) == before


@pytest.mark.parametrize("part", ["request-line", "headers", "half-body"])
def test_half_closed_client_gets_no_5xx(gw: Gateway, ref_scope: str, part: str) -> None:
    """A client that sends half a request and shuts down its writing side gets no 5xx (a 4xx
    or a closed connection), nothing changes, and the daemon still serves."""
    qsid = new_qsid()
    before = snapshot(gw, [ref_scope, qsid])
    body = json.dumps({"volume": gw.volume, "qsid": qsid, "options": None}).encode()
    head = (b"POST /quota-scope HTTP/1.1\r\nHost: fusegw\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    partial = {"request-line": b"POST /quota-sc",
               "headers": head[: len(head) - 10],
               "half-body": head + body[: len(body) // 2]}[part]
    log_start = len(gw.read_log())
    s = _connect(gw)
    try:
        s.sendall(partial)
        s.shutdown(socket.SHUT_WR)
        response = _read_response(s)
    finally:
        s.close()
    status = _status(response)
    assert status is None or 400 <= status < 500, response
    assert snapshot(gw, [ref_scope, qsid]) == before
    assert_serving(gw)
    new_log = gw.read_log()[log_start:]
    assert "control request failed" not in new_log, new_log


def test_no_request_in_this_module_yielded_5xx(gw: Gateway) -> None:
    """After every test above, the gateway that served them is alive and never took the
    internal-error path (the only one that answers 500: "control request failed")."""
    assert_serving(gw)
    log = gw.read_log()
    assert "control request failed" not in log, log

"""The vfolder routes, scope check/repair, /metrics and the TCP listener of the control API.

Proves, against a real mounted gateway over its real Unix socket (DESIGN.md sections 2-5):

- the manager's vfolder flow end to end: `POST /folder/create` in a missing scope creates the
  scope with `initial_max_size_for_quota_scope` as its limit, `GET /folder/mount` names a path
  that works through the mount, `GET /folder/usage` and `GET /folder/used-bytes` equal
  `du -s -B1` of the backing vfolder directory (and the entries below it), as does the
  `user.fusegw.vfolder.used_bytes` attribute; raising and lifting the limit changes what a
  write may do; deleting the vfolder and then its scope leaves nothing behind;
- refusals (409 duplicates and UUID collisions, 404 unknown vfolders, 400 malformed IDs and
  options) are problem+json and change nothing on the backing volume;
- a symlink planted through the mount in a scope's fan-out levels never leads a vfolder
  request outside the volume;
- the scope figures stay exact (`du -s -B1`, inode count) through folder create and delete;
- `POST /quota-scope/check` finds changes made beside the gateway and `repair` corrects them;
- `GET /metrics` speaks Prometheus text with scope figures, EDQUOT refusals, request counts and
  latency;
- the optional TCP listener demands the auth token on every route and refuses to start
  without one.

One gateway serves the whole module; each test uses fresh scope and folder IDs.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    Gateway,
    du_bytes,
    free_port,
    inodes_below,
    is_mounted,
    new_qsid,
    private_source,
    scope_hex,
    start_gateway,
    vfolder_rel,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

PROBS = "https://api.backend.ai/probs/storage/"
INVALID = PROBS + "invalid-api-params"
PROBLEM_JSON = "application/problem+json"
KiB = 2**10
MiB = 2**20
INITIAL = "initial_max_size_for_quota_scope"


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(public_dir: Path) -> Iterator[Gateway]:
    g = start_gateway(public_dir, "fld")
    yield g
    g.stop()


@pytest.fixture(scope="module")
def tcp_gw(public_dir: Path) -> Iterator[tuple[Gateway, int]]:
    port = free_port()
    g = start_gateway(public_dir, "tcp", ["--tcp-listen", f"127.0.0.1:{port}"],
                      {"FUSEGW_AUTH_TOKEN": "secret"})
    yield g, port
    g.stop()


def api(gw: Gateway, method: str, path: str, body: Any = None, **params: str) -> httpx.Response:
    """One request over the real socket; keyword arguments go in the query string."""
    with gw.client() as c:
        return c.request(method, path, params=params or None,
                         content=None if body is None else json.dumps(body))


def vfid_of(qsid: str, fid: str) -> str:
    return f"{qsid}/{fid}"


def create_folder(gw: Gateway, vfid: str, initial: int | None = None) -> httpx.Response:
    options = None if initial is None else {INITIAL: initial}
    return api(gw, "POST", "/folder/create", {"volume": gw.volume, "vfid": vfid,
                                              "options": options})


def scope_truth(gw: Gateway, qsid: str) -> dict[str, int]:
    d = gw.source / scope_hex(qsid)
    return {"used_bytes": du_bytes(d), "used_inodes": inodes_below(d)}


def scope_figures(gw: Gateway, qsid: str) -> dict[str, int]:
    got = gw.describe(qsid)
    return {"used_bytes": got["used_bytes"], "used_inodes": got["used_inodes"]}


def backing_tree(gw: Gateway) -> list[tuple[str, int, int]]:
    """Every entry of the backing volume outside `.fusegw/`: (path, type, size)."""
    out = []
    for root, dirs, files in os.walk(gw.source):
        if root == str(gw.source):
            dirs[:] = [d for d in dirs if d != ".fusegw"]
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out.append((os.path.relpath(p, gw.source), stat.S_IFMT(st.st_mode), st.st_size))
    return sorted(out)


def volume_state(gw: Gateway) -> tuple[Any, ...]:
    """What a refused request must leave as it was: the tree, the scope list, the registry."""
    scopes = api(gw, "GET", "/quota-scopes", {"volume": gw.volume}).json()
    registry = (gw.source / ".fusegw" / "registry.json").read_text()
    return backing_tree(gw), scopes, registry


def assert_problem(r: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers
    body: dict[str, Any] = r.json()
    assert body["type"].startswith(PROBS), body
    if type_ is not None:
        assert body["type"] == type_, body
    return body


def append(path: Path, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def getfattr(path: Path, name: str) -> str:
    return subprocess.run(["getfattr", "--absolute-names", "--only-values", "-n", name,
                           str(path)], capture_output=True, text=True, check=True).stdout


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def metric(text: str, name: str, **labels: str) -> float | None:
    for n, have, value in metric_samples(text):
        if n == name and all(have.get(k) == v for k, v in labels.items()):
            return value
    return None


def scrape(gw: Gateway) -> str:
    r = api(gw, "GET", "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return r.text


# -- the manager's flow -------------------------------------------------------------------------


def test_manager_flow_create_write_measure_limit_delete(gw: Gateway) -> None:
    """A vfolder created in a missing scope brings the scope with the initial limit; writes
    through the path GET /folder/mount gives are measured exactly (API and xattr equal du);
    a write refused with EDQUOT succeeds once PATCH raises the limit, DELETE /quota-scope/quota
    lifts it (null), and deleting the vfolder and then the scope leaves no trace."""
    qsid = new_qsid("project")
    fid = uuid.uuid4().hex
    vfid = vfid_of(qsid, fid)
    backing_vf = gw.source / vfolder_rel(qsid, fid)
    assert api(gw, "GET", "/quota-scope", {"volume": gw.volume, "qsid": qsid}).status_code == 404

    r = create_folder(gw, vfid, initial=128 * KiB)
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] == 128 * KiB
    assert backing_vf.is_dir()

    r = api(gw, "GET", "/folder/mount", {"volume": gw.volume, "vfid": vfid})
    assert r.status_code == 200, r.text
    path = Path(r.json()["path"])
    assert path == gw.mountpoint / vfolder_rel(qsid, fid)
    assert path.is_dir()

    (path / "a").write_bytes(b"a" * 40000)
    (path / "d").mkdir()
    (path / "d" / "b").write_bytes(b"b" * 5000)

    r = api(gw, "GET", "/folder/usage", volume=gw.volume, vfid=vfid)  # query-string form
    assert r.status_code == 200, r.text
    assert r.json() == {"used_bytes": du_bytes(backing_vf), "file_count": 3}
    assert inodes_below(backing_vf) == 3
    r = api(gw, "GET", "/folder/used-bytes", {"volume": gw.volume, "vfid": vfid})
    assert r.json() == {"used_bytes": du_bytes(backing_vf)}
    assert getfattr(path, "user.fusegw.vfolder.used_bytes") == str(du_bytes(backing_vf))
    assert getfattr(path / "d" / "b", "user.fusegw.vfolder.used_bytes") == str(
        du_bytes(backing_vf))
    assert scope_figures(gw, qsid) == scope_truth(gw, qsid)

    # 64 KiB more does not fit under 128 KiB: refused whole, nothing stored
    remaining = 128 * KiB - gw.describe(qsid)["used_bytes"]
    assert 0 < remaining < 64 * KiB
    with pytest.raises(OSError) as exc:
        append(path / "big", b"x" * (64 * KiB))
    assert exc.value.errno == errno.EDQUOT
    assert (backing_vf / "big").stat().st_size == 0

    r = api(gw, "PATCH", "/quota-scope", {"volume": gw.volume, "qsid": qsid,
                                          "options": {"limit_bytes": MiB}})
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert append(path / "big", b"x" * (64 * KiB)) == 64 * KiB

    r = api(gw, "DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] is None
    assert append(path / "big", b"y" * MiB) == MiB  # past the old 1 MiB limit
    assert scope_figures(gw, qsid) == scope_truth(gw, qsid)
    r = api(gw, "GET", "/folder/usage", {"volume": gw.volume, "vfid": vfid})
    assert r.json() == {"used_bytes": du_bytes(backing_vf), "file_count": 4}

    r = api(gw, "POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid})
    assert r.status_code == 204, r.text
    assert not backing_vf.exists()
    assert scope_figures(gw, qsid) == scope_truth(gw, qsid)

    r = api(gw, "DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert not (gw.source / scope_hex(qsid)).exists()
    assert api(gw, "GET", "/quota-scope", {"volume": gw.volume, "qsid": qsid}).status_code == 404


def test_mount_sees_created_and_deleted_scopes_and_vfolders_at_once(gw: Gateway) -> None:
    """A scope or vfolder path looked up through the mount before it existed (the kernel caches
    each absence for the entry timeout, 60 s here) is there as soon as the create answers; what
    the kernel had cached is gone as soon as the delete answers (the vfolder with the fan-out
    directories the delete pruned, then the scope)."""
    qsid = new_qsid()
    fid = uuid.uuid4().hex
    path = gw.mountpoint / vfolder_rel(qsid, fid)
    scope_dir = gw.mountpoint / Path(vfolder_rel(qsid, fid)).parts[0]
    fanout = path.parent.parent
    assert not scope_dir.exists()  # cached as absent now
    gw.create_scope(qsid)
    assert scope_dir.is_dir()
    assert not fanout.exists()
    assert create_folder(gw, vfid_of(qsid, fid)).status_code == 204
    assert path.is_dir()
    (path / "f").write_bytes(b"x")
    r = api(gw, "POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid_of(qsid, fid)})
    assert r.status_code == 204, r.text
    assert not (path / "f").exists()
    assert not path.exists()
    assert not fanout.exists()
    r = api(gw, "DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert not scope_dir.exists()


def test_create_in_existing_scope_keeps_its_limit(gw: Gateway) -> None:
    """An initial size only applies to a scope the create has to make: an existing scope keeps
    its limit, whether it has one or is unlimited."""
    limited, unlimited = new_qsid(), new_qsid("project")
    gw.create_scope(limited, limit_bytes=5 * MiB)
    gw.create_scope(unlimited)
    for qsid, expected in ((limited, 5 * MiB), (unlimited, None)):
        fid = uuid.uuid4().hex
        r = create_folder(gw, vfid_of(qsid, fid), initial=MiB)
        assert r.status_code == 204, r.text
        assert (gw.source / vfolder_rel(qsid, fid)).is_dir()
        assert gw.describe(qsid)["limit_bytes"] == expected


def test_duplicate_vfolder_and_uuid_collision_are_409_and_change_nothing(gw: Gateway) -> None:
    """Creating an existing vfolder is 409 vfolder/already-exists; a vfolder under
    project:<uuid> when user:<uuid> exists (same directory) is 409 quota/scope/already-exists;
    neither touches the volume."""
    qsid = new_qsid("user")
    fid = uuid.uuid4().hex
    assert create_folder(gw, vfid_of(qsid, fid)).status_code == 204
    (gw.mountpoint / vfolder_rel(qsid, fid) / "keep").write_bytes(b"k" * 100)
    before = volume_state(gw)

    r = create_folder(gw, vfid_of(qsid, fid), initial=MiB)
    assert_problem(r, 409, PROBS + "vfolder/already-exists")
    twin = "project:" + qsid.split(":", 1)[1]
    r = create_folder(gw, vfid_of(twin, uuid.uuid4().hex), initial=MiB)
    assert_problem(r, 409, PROBS + "quota/scope/already-exists")

    assert volume_state(gw) == before
    assert (gw.mountpoint / vfolder_rel(qsid, fid) / "keep").read_bytes() == b"k" * 100
    assert gw.describe(qsid)["limit_bytes"] is None
    assert api(gw, "GET", "/quota-scope", {"volume": gw.volume, "qsid": twin}).status_code == 404


@pytest.mark.parametrize(("method", "route"), [
    ("GET", "/folder/usage"), ("GET", "/folder/used-bytes"), ("GET", "/folder/mount"),
])
def test_missing_vfolder_is_404(gw: Gateway, method: str, route: str) -> None:
    """usage, used-bytes and mount of a vfolder that does not exist answer 404 problem+json,
    in an existing scope (vfolder/not-found) and in a missing one, and change nothing (delete
    is idempotent, 204: tests/test_manager_api.py)."""
    qsid = new_qsid()
    gw.create_scope(qsid)
    before = volume_state(gw)
    r = api(gw, method, route, {"volume": gw.volume, "vfid": vfid_of(qsid, uuid.uuid4().hex)})
    assert_problem(r, 404, PROBS + "vfolder/not-found")
    r = api(gw, method, route, {"volume": gw.volume,
                                "vfid": vfid_of(new_qsid(), uuid.uuid4().hex)})
    assert_problem(r, 404)
    assert volume_state(gw) == before


BAD_VFIDS: list[Any] = [
    "no-slash-here",
    f"user:{uuid.uuid4()}",                        # a scope, no folder
    f"user:{uuid.uuid4()}/{'z' * 32}",             # folder part not hex
    f"user:{uuid.uuid4()}/{uuid.uuid4().hex[:31]}",  # 31 digits
    f"user:{uuid.uuid4()}/{uuid.uuid4().hex}0",    # 33 digits
    f"group:{uuid.uuid4()}/{uuid.uuid4().hex}",    # unknown scope type
    f"user:not-a-uuid/{uuid.uuid4().hex}",         # bad qsid
    f"{uuid.uuid4()}/{uuid.uuid4().hex}",          # qsid without a type
    f"user:{uuid.uuid4()}/{uuid.uuid4().hex}/x",   # extra level
    "",
    42,
    None,
    ["user", "x"],
    {"qsid": "user:x"},
]


def test_invalid_vfid_is_400_problem_and_changes_nothing(gw: Gateway) -> None:
    """Every malformed vfid (no slash, bad hex, bad qsid, non-string) is 400
    invalid-api-params naming the vfid field, on every vfolder route, JSON body or query
    string, and the volume stays as it was."""
    before = volume_state(gw)
    for bad in BAD_VFIDS:
        for method, route in (("POST", "/folder/create"), ("POST", "/folder/delete"),
                              ("GET", "/folder/usage"), ("GET", "/folder/used-bytes"),
                              ("GET", "/folder/mount")):
            body = {"volume": gw.volume, "vfid": bad, "options": {INITIAL: MiB}}
            problem = assert_problem(api(gw, method, route, body), 400, INVALID)
            assert "vfid" in problem.get("data", {}), (bad, route, problem)
        if isinstance(bad, str):
            r = api(gw, "GET", "/folder/usage", volume=gw.volume, vfid=bad)
            assert_problem(r, 400, INVALID)
    assert volume_state(gw) == before


@pytest.mark.parametrize("options", [
    {INITIAL: -1},
    {INITIAL: 1.5},
    {INITIAL: "10G"},
    {INITIAL: True},
    {INITIAL: 2**63},
    {INITIAL: MiB, "limit_bytes": MiB},
    {"initial_max_size": MiB},
    [MiB],
    "10G",
])
def test_invalid_initial_size_is_400_and_creates_nothing(gw: Gateway, options: Any) -> None:
    """A negative, fractional, string, boolean or oversized initial size, an unknown option key
    or options that are not an object are 400 invalid-api-params; neither the scope nor the
    vfolder comes into being."""
    qsid = new_qsid()
    before = volume_state(gw)
    r = api(gw, "POST", "/folder/create", {"volume": gw.volume,
                                           "vfid": vfid_of(qsid, uuid.uuid4().hex),
                                           "options": options})
    assert_problem(r, 400, INVALID)
    assert volume_state(gw) == before
    assert not (gw.source / scope_hex(qsid)).exists()
    assert api(gw, "GET", "/quota-scope", {"volume": gw.volume, "qsid": qsid}).status_code == 404


# -- symlinks planted in the fan-out --------------------------------------------------------------


def test_symlink_at_fanout_makes_create_fail_and_creates_nothing_outside(
        gw: Gateway, public_dir: Path) -> None:
    """A symlink planted beside the gateway at <scope>/ab (the mount refuses to make one there)
    makes POST /folder/create of a vfid
    whose hex starts with `ab` fail with a 4xx; the symlink's target stays empty and no vfolder
    appears anywhere, and the scope's figures stay exact."""
    outside = public_dir / f"outside-{uuid.uuid4().hex[:8]}"
    outside.mkdir()
    qsid = new_qsid()
    gw.create_scope(qsid)
    (gw.source / scope_hex(qsid) / "ab").symlink_to(outside)
    assert api(gw, "POST", "/quota-scope/check",
               {"volume": gw.volume, "qsid": qsid, "repair": True}).status_code == 200
    fid = "ab" + uuid.uuid4().hex[2:]
    before = volume_state(gw)

    r = create_folder(gw, vfid_of(qsid, fid), initial=MiB)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    assert list(outside.iterdir()) == []
    assert volume_state(gw) == before
    assert os.readlink(gw.source / scope_hex(qsid) / "ab") == str(outside)
    assert scope_figures(gw, qsid) == scope_truth(gw, qsid)


def test_symlink_at_fanout_never_lets_delete_or_usage_reach_outside(
        gw: Gateway, public_dir: Path) -> None:
    """With <scope>/ab planted as a symlink to a directory outside the volume that holds
    cd/<rest>/precious, the vfid ab cd <rest> is no vfolder of the volume: usage and mount
    answer 404, delete answers 4xx, the outside file survives, and the ledger stays exact."""
    outside = public_dir / f"outside-{uuid.uuid4().hex[:8]}"
    fid = "ab" + uuid.uuid4().hex[2:]
    (outside / fid[2:4] / fid[4:]).mkdir(parents=True)
    precious = outside / fid[2:4] / fid[4:] / "precious"
    precious.write_bytes(b"p" * 5000)
    qsid = new_qsid()
    gw.create_scope(qsid)
    (gw.source / scope_hex(qsid) / "ab").symlink_to(outside)
    assert api(gw, "POST", "/quota-scope/check",
               {"volume": gw.volume, "qsid": qsid, "repair": True}).status_code == 200
    vfid = vfid_of(qsid, fid)

    r = api(gw, "POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid})
    assert precious.exists(), f"POST /folder/delete removed {precious} outside the volume"
    assert precious.read_bytes() == b"p" * 5000
    assert 400 <= r.status_code < 500, r.text
    assert scope_figures(gw, qsid) == scope_truth(gw, qsid)
    for route in ("/folder/usage", "/folder/used-bytes", "/folder/mount"):
        r = api(gw, "GET", route, {"volume": gw.volume, "vfid": vfid})
        assert_problem(r, 404)


def test_symlink_in_place_of_a_vfolder_is_refused_by_delete_without_5xx(
        gw: Gateway, public_dir: Path) -> None:
    """A symlink standing where a vfolder directory would be (<scope>/ab/cd/<rest> -> outside)
    is no vfolder: delete answers a 4xx (never a 5xx), the link's target and its content
    survive, and the ledger stays exact."""
    outside = public_dir / f"outside-{uuid.uuid4().hex[:8]}"
    outside.mkdir()
    (outside / "f").write_bytes(b"f" * 3000)
    qsid = new_qsid()
    scope_dir = gw.create_scope(qsid)
    fid = uuid.uuid4().hex
    (scope_dir / fid[0:2] / fid[2:4]).mkdir(parents=True)
    (gw.source / scope_hex(qsid) / fid[0:2] / fid[2:4] / fid[4:]).symlink_to(outside)
    assert api(gw, "POST", "/quota-scope/check",
               {"volume": gw.volume, "qsid": qsid, "repair": True}).status_code == 200

    r = api(gw, "POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid_of(qsid, fid)})
    assert 400 <= r.status_code < 500, r.text
    assert (outside / "f").read_bytes() == b"f" * 3000
    assert (gw.source / vfolder_rel(qsid, fid)).is_symlink()
    assert scope_figures(gw, qsid) == scope_truth(gw, qsid)


# -- exact scope figures --------------------------------------------------------------------------


def test_scope_figures_stay_exact_through_folder_create_and_delete(gw: Gateway) -> None:
    """After each POST /folder/create and /folder/delete (vfolders that share fan-out levels and
    one that does not), GET /quota-scope equals du -s -B1 and the inode count of the backing
    scope directory; deleting one vfolder leaves its sibling under the shared fan-out intact,
    and once the last is gone the scope can be deleted."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=10 * MiB)
    tail = uuid.uuid4().hex
    fids = ["abcd" + tail[4:], "abce" + tail[4:], "abcd" + uuid.uuid4().hex[4:],
            "ef" + tail[2:]]
    assert scope_figures(gw, qsid) == scope_truth(gw, qsid)
    for fid in fids:
        assert create_folder(gw, vfid_of(qsid, fid)).status_code == 204
        assert scope_figures(gw, qsid) == scope_truth(gw, qsid), fid
    (gw.mountpoint / vfolder_rel(qsid, fids[2]) / "data").write_bytes(b"d" * 9000)
    assert scope_figures(gw, qsid) == scope_truth(gw, qsid)

    for i, fid in enumerate(fids):
        r = api(gw, "POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid_of(qsid, fid)})
        assert r.status_code == 204, r.text
        assert not (gw.source / vfolder_rel(qsid, fid)).exists()
        assert scope_figures(gw, qsid) == scope_truth(gw, qsid), fid
        for other in fids[i + 1:]:
            r = api(gw, "GET", "/folder/usage", {"volume": gw.volume,
                                                 "vfid": vfid_of(qsid, other)})
            assert r.status_code == 200, r.text
            assert r.json()["used_bytes"] == du_bytes(gw.source / vfolder_rel(qsid, other))

    r = api(gw, "DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert not (gw.source / scope_hex(qsid)).exists()


# -- check and repair ------------------------------------------------------------------------------


def test_check_finds_change_beside_gateway_and_repair_fixes_ledger(gw: Gateway) -> None:
    """A file written straight into the backing vfolder directory makes POST /quota-scope/check
    report consistent=false with the disk figures equal to du and the vfolder named as drifted,
    without changing the ledger; repair=true corrects it: afterwards check is consistent and
    GET /quota-scope, /folder/usage equal du. GET /quota-scopes lists the scope."""
    qsid = new_qsid()
    fid = uuid.uuid4().hex
    vfid = vfid_of(qsid, fid)
    assert create_folder(gw, vfid, initial=10 * MiB).status_code == 204
    (gw.mountpoint / vfolder_rel(qsid, fid) / "through").write_bytes(b"t" * 8000)
    body = {"volume": gw.volume, "qsid": qsid, "repair": False}

    r = api(gw, "POST", "/quota-scope/check", body)
    assert r.status_code == 200, r.text
    assert r.json()["consistent"] is True
    assert r.json()["ledger"] == r.json()["disk"] == scope_truth(gw, qsid)

    ledger_before = scope_figures(gw, qsid)
    backing_vf = gw.source / vfolder_rel(qsid, fid)
    (backing_vf / "beside").write_bytes(b"b" * 100_000)
    (backing_vf / "beside-dir").mkdir()

    report = api(gw, "POST", "/quota-scope/check", body).json()
    assert report["consistent"] is False
    assert report["repaired"] is False
    assert report["disk"] == scope_truth(gw, qsid)
    assert report["ledger"] == ledger_before
    assert report["vfolders_drifted"] == [fid]
    assert scope_figures(gw, qsid) == ledger_before  # a check alone changes nothing

    r = api(gw, "POST", "/quota-scope/check", dict(body, repair=True))
    assert r.status_code == 200, r.text
    assert r.json()["consistent"] is False
    assert r.json()["repaired"] is True
    report = api(gw, "POST", "/quota-scope/check", body).json()
    assert report["consistent"] is True, report
    assert scope_figures(gw, qsid) == scope_truth(gw, qsid)
    r = api(gw, "GET", "/folder/usage", {"volume": gw.volume, "vfid": vfid})
    assert r.json() == {"used_bytes": du_bytes(backing_vf), "file_count": 3}

    listed = api(gw, "GET", "/quota-scopes", {"volume": gw.volume}).json()["quota_scopes"]
    mine = [s for s in listed if s["qsid"] == qsid]
    assert len(mine) == 1
    assert mine[0]["used_bytes"] == du_bytes(gw.source / scope_hex(qsid))
    assert mine[0]["limit_bytes"] == 10 * MiB


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_report_scope_figures_refusals_requests_and_latency(gw: Gateway) -> None:
    """GET /metrics is Prometheus text: fusegw_scope_used_bytes and _limit_bytes carry the
    scope's figures under its qsid label, fusegw_scope_edquot_total grows with an EDQUOT
    refusal, fusegw_requests_total counts a request by route, method and status, and
    fusegw_request_seconds is a histogram by route."""
    qsid = new_qsid()
    fid = uuid.uuid4().hex
    assert create_folder(gw, vfid_of(qsid, fid), initial=64 * KiB).status_code == 204
    path = gw.mountpoint / vfolder_rel(qsid, fid)
    (path / "small").write_bytes(b"s" * 8000)

    text = scrape(gw)
    assert any(line.startswith("fusegw_scope_used_bytes{") and f'qsid="{qsid}"' in line
               for line in text.splitlines()), text
    labels = {"qsid": qsid, "volume": gw.volume}
    assert metric(text, "fusegw_scope_used_bytes", **labels) == gw.describe(qsid)["used_bytes"]
    assert metric(text, "fusegw_scope_limit_bytes", **labels) == 64 * KiB
    refused_before = metric(text, "fusegw_scope_edquot_total", **labels)
    assert refused_before == 0

    with pytest.raises(OSError) as exc:
        append(path / "big", b"x" * (128 * KiB))
    assert exc.value.errno == errno.EDQUOT
    refused_after = metric(scrape(gw), "fusegw_scope_edquot_total", **labels)
    assert refused_after is not None and refused_after >= 1

    req = {"route": "/folder/mount", "method": "GET", "status": "404"}
    text = scrape(gw)
    count_before = metric(text, "fusegw_requests_total", **req) or 0
    hist_before = metric(text, "fusegw_request_seconds_count", route="/folder/mount") or 0
    r = api(gw, "GET", "/folder/mount", {"volume": gw.volume,
                                         "vfid": vfid_of(qsid, uuid.uuid4().hex)})
    assert r.status_code == 404
    text = scrape(gw)
    assert metric(text, "fusegw_requests_total", **req) == count_before + 1
    assert metric(text, "fusegw_request_seconds_count", route="/folder/mount") == hist_before + 1
    assert metric(text, "fusegw_request_seconds_bucket", route="/folder/mount",
                  le="+Inf") == hist_before + 1
    assert metric(text, "fusegw_request_seconds_sum", route="/folder/mount") is not None


# -- the TCP listener ------------------------------------------------------------------------------


def test_tcp_listener_demands_the_token(tcp_gw: tuple[Gateway, int]) -> None:
    """On the TCP listener a request without X-BackendAI-Storage-Auth-Token or with a wrong one
    is 403 (also GET /, GET /metrics and a POST that would create a scope, which does not
    happen); with the right token GET / answers 200 and POST /quota-scope creates the scope."""
    gw, port = tcp_gw
    qsid = new_qsid()
    body = json.dumps({"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": MiB}})
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        for headers in ({}, {"X-BackendAI-Storage-Auth-Token": "wrong"},
                        {"X-BackendAI-Storage-Auth-Token": ""},
                        {"X-BackendAI-Storage-Auth-Token": "secretsecret"}):
            assert c.get("/", headers=headers).status_code == 403, headers
            assert c.get("/metrics", headers=headers).status_code == 403, headers
            r = c.post("/quota-scope", content=body, headers=headers)
            assert_problem(r, 403)
        assert api(gw, "GET", "/quota-scope", {"volume": gw.volume, "qsid": qsid}
                   ).status_code == 404

        good = {"X-BackendAI-Storage-Auth-Token": "secret"}
        r = c.get("/", headers=good)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ok"
        r = c.post("/quota-scope", content=body, headers=good)
        assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert (gw.source / scope_hex(qsid)).is_dir()


def test_tcp_listener_without_token_refuses_to_start(public_dir: Path) -> None:
    """`fusegw mount --tcp-listen HOST:PORT` with no auth token configured exits 1 with a
    message about the auth token, and mounts nothing."""
    name = f"notok{uuid.uuid4().hex[:6]}"
    source = private_source(public_dir, name)
    mnt = public_dir / f"{name}.mnt"
    mnt.mkdir()
    sock = public_dir / f"{name}.sock"
    env = {k: v for k, v in os.environ.items() if k != "FUSEGW_AUTH_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "fusegw", "mount", str(source), str(mnt),
         "--control-socket", str(sock), "--log-file", str(public_dir / f"{name}.log"),
         "--volume", name, "--tcp-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, env=env)
    try:
        assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
        assert "auth token" in proc.stderr.lower(), proc.stderr
        assert not is_mounted(mnt)
        assert not sock.exists()
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        wait_for(lambda: not is_mounted(mnt), what="no mount left behind")


def test_metrics_count_fuse_requests_by_operation(gw: Gateway) -> None:
    """fusegw_fuse_requests_total{op} counts the FUSE requests the gateway answered: creating
    a file through the mount adds at least one `create`, and a first stat of a name the
    kernel has not seen adds a `lookup`."""
    qsid = new_qsid()
    fid = uuid.uuid4().hex
    assert create_folder(gw, vfid_of(qsid, fid)).status_code == 204
    path = gw.mountpoint / vfolder_rel(qsid, fid)
    labels = {"volume": gw.volume}
    before = scrape(gw)
    (path / "counted").write_bytes(b"c")
    with pytest.raises(FileNotFoundError):
        os.stat(path / "never-there")
    after = scrape(gw)
    for op in ("create", "lookup"):
        grown = (metric(after, "fusegw_fuse_requests_total", op=op, **labels) or 0) - \
            (metric(before, "fusegw_fuse_requests_total", op=op, **labels) or 0)
        assert grown >= 1, (op, after)
    # the create's syscalls ran somewhere, counted where (inline on this disk, as a rule)
    ran = sum((metric(after, "fusegw_syscalls_total", where=w, **labels) or 0) -
              (metric(before, "fusegw_syscalls_total", where=w, **labels) or 0)
              for w in ("inline", "thread"))
    assert ran >= 1, after

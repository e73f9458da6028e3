"""The manager's file routes and vfolder clone (issue 11), over a real mounted gateway.

`POST /folder/file/{mkdir, list, rename, move, delete, fetch}` and `POST /folder/clone`, on
the Unix socket and on the token-checked TCP listener: the storage proxy 23.03's shapes, every
relpath confined to its vfolder (escapes are 400 and touch nothing), every change made through
the mount (so accounted and enforced: usage == `du -s -B1`, EDQUOT is a 4xx), and bad input a
4xx problem that changes nothing and leaves the daemon serving.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import (
    Gateway,
    du_bytes,
    free_port,
    new_qsid,
    scope_hex,
    start_gateway,
    vfolder_rel,
    wait_for,
)
from manager_client import ManagerDriver, manager_driver, volumes_config
from test_manager_flow import TOKEN as TOKEN_OF_NODE
from test_manager_flow import Node, node  # noqa: F401 (`node`: mountd with two volumes)

from fusegw.control.app import ControlApp, Peer, StreamResponse
from fusegw.scopes import Caller
from mountd.router import NodeApp

# -- the ASGI pieces, in process ----------------------------------------------------------------


def _asgi(app: ControlApp, method: str, path: str, query: bytes = b"",
          body: bytes = b"") -> list[dict[str, Any]]:
    """One request through the app, from a root peer; the messages it sends."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": [], "http_version": "1.1",
             "extensions": {"fusegw.peer": Peer(1, 0, 0, frozenset())}}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    trio.run(app, scope, receive, send)
    return sent


def test_stream_response_is_sent_chunk_by_chunk_and_closed() -> None:
    closed = []

    async def chunks() -> Any:
        try:
            for i in range(3):
                yield b"x" * (i + 1)
        finally:
            closed.append(True)

    async def handler(params: dict[str, Any], caller: Caller) -> StreamResponse:
        return StreamResponse(chunks())

    app = ControlApp()
    app.route("POST", "/s", handler)
    sent = _asgi(app, "POST", "/s")
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"]) == {b"content-type": b"application/octet-stream"}
    assert [m["body"] for m in sent[1:]] == [b"x", b"xx", b"xxx", b""]
    assert [m.get("more_body", False) for m in sent[1:]] == [True, True, True, False]
    assert closed == [True]


def test_mkdir_takes_query_parameters_on_post_other_posts_do_not() -> None:
    seen: list[dict[str, Any]] = []

    async def handler(params: dict[str, Any], caller: Caller) -> None:
        seen.append(params)

    app = ControlApp()
    app.route("POST", "/folder/file/mkdir", handler)
    app.route("POST", "/folder/file/list", handler)
    _asgi(app, "POST", "/folder/file/mkdir", b"volume=v&exist_ok=true")
    _asgi(app, "POST", "/folder/file/list", b"volume=v")
    assert seen == [{"volume": "v", "exist_ok": "true"}, {}]
    sent = _asgi(app, "POST", "/folder/file/mkdir", b"volume=v", b'{"volume": "v"}')
    assert sent[0]["status"] == 400  # the same key in the query and the body


# -- over a real gateway: the Unix socket and the token-checked TCP listener --------------------

PROBS = "https://api.backend.ai/probs/storage/"
PROBLEM_JSON = "application/problem+json"
TOKEN = "file-routes-secret"
MiB = 2**20


@pytest.fixture(scope="module")
def gw(public_dir: Path) -> Iterator[Gateway]:
    g = start_gateway(public_dir, "files", ["--tcp-listen", f"127.0.0.1:{free_port()}"],
                      {"FUSEGW_AUTH_TOKEN": TOKEN})
    yield g
    g.stop()


@pytest.fixture(scope="module")
def tcp_port(gw: Gateway) -> int:
    port = int(gw.extra[gw.extra.index("--tcp-listen") + 1].rpartition(":")[2])
    return port


@dataclass
class Api:
    """Requests to the gateway on one channel (the Unix socket, or TCP with the token)."""

    gw: Gateway
    client: httpx.Client

    def post(self, path: str, body: Any = None, params: dict[str, str] | None = None,
             content: bytes | None = None) -> httpx.Response:
        if body is not None:
            content = json.dumps(body).encode()
        return self.client.post(path, content=content, params=params)

    def file(self, route: str, vf: Folder, **fields: Any) -> httpx.Response:
        return self.post(f"/folder/file/{route}",
                         {"volume": self.gw.volume, "vfid": vf.vfid, **fields})


@pytest.fixture(scope="module", params=["unix", "tcp"])
def api(request: pytest.FixtureRequest, gw: Gateway, tcp_port: int) -> Iterator[Api]:
    if request.param == "unix":
        client = gw.client()
    else:
        client = httpx.Client(base_url=f"http://127.0.0.1:{tcp_port}", timeout=30,
                              headers={"X-BackendAI-Storage-Auth-Token": TOKEN})
    with client:
        yield Api(gw, client)


@dataclass
class Folder:
    """A vfolder in a scope of its own: its ID, its path in the mount and on the backing side."""

    gw: Gateway
    qsid: str
    fid: str

    @property
    def vfid(self) -> str:
        return f"{self.qsid}/{self.fid}"

    @property
    def mnt(self) -> Path:
        return self.gw.mountpoint / vfolder_rel(self.qsid, self.fid)

    @property
    def backing(self) -> Path:
        return self.gw.source / vfolder_rel(self.qsid, self.fid)

    def assert_usage_is_du(self) -> None:
        """The ledger's figure for the scope equals `du -s -B1` of its directory."""
        used = self.gw.describe(self.qsid)["used_bytes"]
        assert used == du_bytes(self.gw.source / scope_hex(self.qsid)), self.qsid


def new_folder(gw: Gateway, limit_bytes: int | None = None, qsid: str | None = None) -> Folder:
    qsid = qsid or new_qsid()
    if limit_bytes is not None:
        gw.create_scope(qsid, limit_bytes=limit_bytes)
    vf = Folder(gw, qsid, uuid.uuid4().hex)
    r = gw.request("POST", "/folder/create", {"volume": gw.volume, "vfid": vf.vfid})
    assert r.status_code == 204, r.text
    return vf


@pytest.fixture
def vf(gw: Gateway) -> Folder:
    return new_folder(gw)


def tree(path: Path) -> dict[str, tuple[int, int, bytes | str | None]]:
    """Everything below `path`, links not followed: mode, owner, and content or target."""
    out: dict[str, tuple[int, int, bytes | str | None]] = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root, name)
            st = p.lstat()
            data: bytes | str | None = None
            if p.is_symlink():
                data = os.readlink(p)
            elif p.is_file():
                data = p.read_bytes()
            out[str(p.relative_to(path))] = (st.st_mode, st.st_uid, data)
    return out


def problem(r: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = r.json()
    assert body["type"].startswith(PROBS) and body["title"], body
    if kind is not None:
        assert body["type"] == PROBS + kind, body
    return body


def serving(gw: Gateway) -> None:
    assert gw.alive()
    with gw.client() as c:
        assert c.get("/").status_code == 200


# -- shapes ---------------------------------------------------------------------------------------


def test_mkdir_then_list_in_the_storage_proxys_shape(api: Api, vf: Folder) -> None:
    assert api.file("mkdir", vf, relpath="a/b/c").status_code == 204  # parents by default
    (vf.mnt / "a" / "f").write_bytes(b"x" * 5000)
    os.symlink("f", vf.mnt / "a" / "l")
    r = api.file("list", vf, relpath="a")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    items = {i["name"]: i for i in r.json()["items"]}
    assert set(r.json()) == {"items"}
    assert {n: i["type"] for n, i in items.items()} == {
        "b": "DIRECTORY", "f": "FILE", "l": "SYMLINK"}
    for name, item in items.items():
        assert set(item) == {"name", "type", "stat", "symlink_target"}
        assert set(item["stat"]) == {"mode", "size", "created", "modified"}
        st = (vf.mnt / "a" / name).lstat()
        assert item["stat"]["mode"] == st.st_mode and item["stat"]["size"] == st.st_size
        modified = datetime.fromisoformat(item["stat"]["modified"])
        assert modified.utcoffset() == timedelta(0)
        assert abs(modified.timestamp() - st.st_mtime) < 1e-5
    assert items["l"]["symlink_target"] == "f" and items["f"]["symlink_target"] == ""
    assert stat.S_IMODE(items["b"]["stat"]["mode"]) == 0o755
    root = api.file("list", vf, relpath="").json()["items"]
    assert [i["name"] for i in root] == ["a"]
    vf.assert_usage_is_du()


def test_mkdir_flags_as_the_storage_proxy(api: Api, vf: Folder) -> None:
    assert api.file("mkdir", vf, relpath="d").status_code == 204
    problem(api.file("mkdir", vf, relpath="d"), 409, "file/conflict")
    assert api.file("mkdir", vf, relpath="d", exist_ok=True).status_code == 204
    problem(api.file("mkdir", vf, relpath="x/y", parents=False), 404, "file/not-found")
    assert not (vf.mnt / "x").exists()
    (vf.mnt / "file").write_bytes(b"1")
    problem(api.file("mkdir", vf, relpath="file", exist_ok=True), 409)
    problem(api.file("mkdir", vf, relpath="file/sub"), 409)
    vf.assert_usage_is_du()


def test_a_new_directory_takes_the_owner_of_its_parent(api: Api, vf: Folder) -> None:
    """The storage proxy's files are its own user's; ours, made by root, take the owner of
    the directory they are made in, so the vfolder's owner can use them."""
    os.chown(vf.mnt, 1000, 1001)
    assert api.file("mkdir", vf, relpath="p/q").status_code == 204
    for path in (vf.mnt / "p", vf.mnt / "p" / "q"):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o755)


def test_mkdir_takes_query_parameters_as_the_manager_sends_them(api: Api, vf: Folder) -> None:
    params = {"volume": api.gw.volume, "vfid": vf.vfid, "relpath": "u1", "exist_ok": "True"}
    assert api.post("/folder/file/mkdir", params=params).status_code == 204
    assert api.post("/folder/file/mkdir", params=params).status_code == 204
    assert (vf.mnt / "u1").is_dir()
    both = api.post("/folder/file/mkdir", {"relpath": "u2"}, params=params)
    problem(both, 400, "invalid-api-params")
    assert not (vf.mnt / "u2").exists()


def test_list_answers_at_most_the_storage_proxys_scandir_limit(api: Api, vf: Folder) -> None:
    for i in range(1005):
        (vf.mnt / f"f{i:04}").touch()
    assert len(api.file("list", vf, relpath="").json()["items"]) == 1000


def test_rename_and_move(api: Api, vf: Folder) -> None:
    (vf.mnt / "d").mkdir()
    (vf.mnt / "f").write_bytes(b"data")
    assert api.file("rename", vf, relpath="f", new_name="g", is_dir=False).status_code == 204
    assert (vf.mnt / "g").read_bytes() == b"data" and not (vf.mnt / "f").exists()
    assert api.file("move", vf, src_relpath="g", dst_relpath="d").status_code == 204
    assert (vf.mnt / "d" / "g").read_bytes() == b"data"  # into a directory, as shutil.move
    assert api.file("move", vf, src_relpath="d/g", dst_relpath="h").status_code == 204
    assert (vf.mnt / "h").exists() and not (vf.mnt / "d" / "g").exists()
    (vf.mnt / "d" / "h").write_bytes(b"taken")
    problem(api.file("move", vf, src_relpath="h", dst_relpath="d"), 409, "file/conflict")
    problem(api.file("move", vf, src_relpath="nope", dst_relpath="x"), 404, "file/not-found")
    problem(api.file("rename", vf, relpath="h", new_name="a/b"), 400, "invalid-api-params")
    problem(api.file("rename", vf, relpath="h", new_name=".."), 400, "invalid-api-params")
    problem(api.file("rename", vf, relpath="", new_name="x"), 400, "invalid-api-params")
    problem(api.file("move", vf, src_relpath="d", dst_relpath="d/sub"), 400)
    assert sorted(os.listdir(vf.mnt)) == ["d", "h"]
    vf.assert_usage_is_du()


def test_delete(api: Api, vf: Folder) -> None:
    (vf.mnt / "d" / "e").mkdir(parents=True)
    (vf.mnt / "d" / "e" / "f").write_bytes(b"x" * 100_000)
    (vf.mnt / "g").write_bytes(b"y")
    before = tree(vf.mnt)
    problem(api.file("delete", vf, relpaths=["d"]), 409, "file/conflict")  # not recursive
    problem(api.file("delete", vf, relpaths=["g", "missing"]), 404, "file/not-found")
    assert tree(vf.mnt) == before  # a bad list changes nothing
    r = api.file("delete", vf, relpaths=["g", "d"], recursive=True)
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    assert os.listdir(vf.mnt) == []
    problem(api.file("delete", vf, relpaths=[""], recursive=True), 400)
    assert vf.mnt.is_dir()
    vf.assert_usage_is_du()


def test_fetch_streams_the_file(api: Api, vf: Folder) -> None:
    data = os.urandom(5 * MiB + 123)
    (vf.mnt / "task").mkdir()
    (vf.mnt / "task" / "k.log").write_bytes(data)
    r = api.file("fetch", vf, relpath="task/k.log")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers.get("transfer-encoding") == "chunked"
    assert api.file("fetch", vf, relpath="task/k.log").content == data  # keep-alive reuse
    problem(api.file("fetch", vf, relpath="task/none.log"), 404, "file/not-found")
    problem(api.file("fetch", vf, relpath="task"), 409, "file/conflict")
    os.mkfifo(vf.mnt / "fifo")
    problem(api.file("fetch", vf, relpath="fifo"), 400)  # never opened: it would block


# -- confinement ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outside(public_dir: Path) -> Path:
    """A directory outside every vfolder, with a file in it, that no request may touch."""
    out = public_dir / "outside"
    out.mkdir()
    (out / "secret").write_bytes(b"secret")
    return out


def escaping_requests(out: Path) -> list[tuple[str, dict[str, Any]]]:
    paths = ["..", "../x", "a/../../b", "/etc", str(out), "a\0b", "out/secret", "out",
             "rel/secret", "out/new"]
    reqs: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        reqs += [("mkdir", {"relpath": f"{path}/sub"}), ("list", {"relpath": path}),
                 ("fetch", {"relpath": path}), ("fetch", {"relpath": f"{path}/secret"}),
                 ("rename", {"relpath": f"{path}/secret", "new_name": "s2"}),
                 ("move", {"src_relpath": f"{path}/secret", "dst_relpath": "got"}),
                 ("move", {"src_relpath": "mine", "dst_relpath": f"{path}/mine"}),
                 ("move", {"src_relpath": "mine", "dst_relpath": path}),
                 ("delete", {"relpaths": [f"{path}/secret"], "recursive": True})]
    return reqs


@pytest.mark.parametrize("planted", ["mount", "backing"])
def test_escapes_are_400_and_touch_nothing_outside(api: Api, outside: Path,
                                                   planted: str) -> None:
    vf = new_folder(api.gw)
    (vf.mnt / "mine").write_bytes(b"mine")
    where = vf.mnt if planted == "mount" else vf.backing
    os.symlink(str(outside), where / "out")  # absolute, out
    depth = len(vf.backing.relative_to(outside.parent).parts)
    os.symlink("../" * depth + "outside", where / "rel")  # relative, out
    before, mine = tree(outside), tree(vf.mnt)
    for route, fields in escaping_requests(outside):
        r = api.file(route, vf, **fields)
        assert r.status_code == 400, (route, fields, r.status_code, r.text)
        problem(r, 400, "invalid-api-params")
    assert tree(outside) == before
    assert tree(vf.mnt) == mine
    assert not (outside / "sub").exists() and not (outside / "mine").exists()
    serving(api.gw)
    if planted == "mount":
        vf.assert_usage_is_du()


def test_a_symlink_inside_the_vfolder_is_followed(api: Api, vf: Folder) -> None:
    (vf.mnt / "real").mkdir()
    (vf.mnt / "real" / "f").write_bytes(b"in")
    os.symlink("real", vf.mnt / "alias")
    assert api.file("fetch", vf, relpath="alias/f").content == b"in"
    assert [i["name"] for i in api.file("list", vf, relpath="alias").json()["items"]] == ["f"]
    r = api.file("delete", vf, relpaths=["alias"])  # the link itself, not its target
    assert r.status_code == 200 and (vf.mnt / "real" / "f").exists()


# -- accounting and enforcement: through the mount -----------------------------------------------


def test_mkdir_past_an_inode_limit_is_413(api: Api) -> None:
    vf = new_folder(api.gw)
    room = api.gw.describe(vf.qsid)["used_inodes"] + 1
    r = api.gw.request("PATCH", "/quota-scope", {"volume": api.gw.volume, "qsid": vf.qsid,
                                                 "options": {"limit_inodes": room}})
    assert r.status_code == 204, r.text
    assert api.file("mkdir", vf, relpath="one").status_code == 204
    body = problem(api.file("mkdir", vf, relpath="two"), 413, "quota/exceeded")
    assert body["data"]["errno"] == errno.EDQUOT
    assert sorted(os.listdir(vf.mnt)) == ["one"]
    vf.assert_usage_is_du()


# -- clone --------------------------------------------------------------------------------------


def clone(api: Api, src: Folder, dst_vfid: str, **extra: Any) -> httpx.Response:
    return api.post("/folder/clone", {"src_volume": api.gw.volume, "src_vfid": src.vfid,
                                      "dst_volume": api.gw.volume, "dst_vfid": dst_vfid,
                                      **extra})


def populate(vf: Folder, size: int = 300_000) -> None:
    (vf.mnt / "d" / "e").mkdir(parents=True)
    (vf.mnt / "d" / "e" / "big").write_bytes(os.urandom(size))
    (vf.mnt / "small").write_bytes(b"s")
    (vf.mnt / "exec").write_bytes(b"#!/bin/sh\n")
    (vf.mnt / "exec").chmod(0o750)
    os.chown(vf.mnt / "small", 1234, 4321)
    os.symlink("d/e/big", vf.mnt / "link")
    os.symlink("/etc/passwd", vf.mnt / "abs")  # copied as a link, never as /etc/passwd


def test_clone_copies_the_tree_into_a_new_vfolder(api: Api, vf: Folder) -> None:
    populate(vf)
    os.link(vf.mnt / "d" / "e" / "big", vf.mnt / "hard")
    dst = Folder(api.gw, new_qsid(), uuid.uuid4().hex)  # missing, in another scope
    api.gw.create_scope(dst.qsid)
    assert clone(api, vf, dst.vfid).status_code == 204
    assert tree(dst.mnt) == tree(vf.mnt)
    assert (dst.mnt / "hard").stat().st_ino == (dst.mnt / "d" / "e" / "big").stat().st_ino
    assert (dst.mnt / "small").stat().st_ino != (vf.mnt / "small").stat().st_ino
    assert (dst.mnt / "small").stat().st_mtime == (vf.mnt / "small").stat().st_mtime
    vf.assert_usage_is_du()
    dst.assert_usage_is_du()  # charged to the destination's scope
    assert api.gw.describe(dst.qsid)["used_bytes"] > 300_000
    with api.gw.client() as c:
        clones = c.get("/").json()["clones"]
    mine = [j for j in clones if j["dst"] == dst.vfid]
    assert mine and mine[0]["state"] == "done" and mine[0]["bytes"] >= 300_000


def test_clone_into_an_existing_empty_vfolder_and_not_a_full_one(api: Api, vf: Folder) -> None:
    populate(vf)
    dst = new_folder(api.gw)  # as the manager does: folder/create, then folder/clone
    assert clone(api, vf, dst.vfid, options=None).status_code == 204
    assert tree(dst.mnt) == tree(vf.mnt)
    before = tree(dst.mnt)
    problem(clone(api, vf, dst.vfid), 409, "file/conflict")
    assert tree(dst.mnt) == before


def test_clone_past_the_limit_is_413_and_leaves_nothing(api: Api, vf: Folder) -> None:
    populate(vf, 3 * MiB)
    dst = new_folder(api.gw, limit_bytes=2 * MiB)
    used = api.gw.describe(dst.qsid)["used_bytes"]
    body = problem(clone(api, vf, dst.vfid), 413, "quota/exceeded")
    assert body["data"]["errno"] == errno.EDQUOT
    assert os.listdir(dst.mnt) == [] and os.listdir(dst.backing) == []
    assert api.gw.describe(dst.qsid)["used_bytes"] == used
    dst.assert_usage_is_du()
    with api.gw.client() as c:
        job = next(j for j in c.get("/").json()["clones"] if j["dst"] == dst.vfid)
    assert job["state"] == "failed" and "quota" in job["error"].lower()


def test_a_long_clone_goes_on_in_the_background(api: Api, vf: Folder) -> None:
    populate(vf, 8 * MiB)
    dst = new_folder(api.gw)
    r = clone(api, vf, dst.vfid, options={"wait_seconds": 0})
    assert r.status_code in (200, 204), r.text
    if r.status_code == 200:
        assert r.json()["status"] == "cloning"
        problem(clone(api, vf, dst.vfid), 409)  # busy, or done and no longer empty

    def state() -> str | None:
        with api.gw.client() as c:
            jobs = [j for j in c.get("/").json()["clones"] if j["dst"] == dst.vfid]
        return jobs[0]["state"] if jobs and jobs[0]["state"] != "copying" else None

    assert wait_for(state, what="clone done") == "done"
    assert tree(dst.mnt) == tree(vf.mnt)
    dst.assert_usage_is_du()


def test_the_gateway_serves_while_a_clone_copies(api: Api, vf: Folder) -> None:
    """The copy runs in a thread of its own: requests (and the mount) are answered meanwhile."""
    populate(vf, 64 * MiB)
    dst = new_folder(api.gw)
    assert clone(api, vf, dst.vfid, options={"wait_seconds": 0}).status_code in (200, 204)
    started = time.monotonic()
    assert api.file("list", vf, relpath="").status_code == 200
    assert (vf.mnt / "small").read_bytes() == b"s"
    assert time.monotonic() - started < 2.0
    wait_for(lambda: same_tree(dst.mnt, vf.mnt), what="clone done")
    dst.assert_usage_is_du()


def same_tree(a: Path, b: Path) -> bool:
    """Whether two trees are alike; not yet if an entry vanished under the walk (the clone's
    hidden directory goes when the copy moves into place)."""
    try:
        return tree(a) == tree(b)
    except FileNotFoundError:
        return False


def test_clone_bad_input_is_4xx_and_changes_nothing(api: Api, vf: Folder) -> None:
    volume = api.gw.volume
    other = f"{new_qsid()}/{uuid.uuid4().hex}"
    base = {"src_volume": volume, "src_vfid": vf.vfid, "dst_volume": volume, "dst_vfid": other}
    cases: list[tuple[dict[str, Any], int]] = [
        ({k: v for k, v in base.items() if k != "src_vfid"}, 400),
        ({k: v for k, v in base.items() if k != "dst_vfid"}, 400),
        ({k: v for k, v in base.items() if k != "src_volume"}, 400),
        ({**base, "dst_volume": "elsewhere"}, 400),  # across volumes: not supported
        ({**base, "src_volume": "elsewhere", "dst_volume": "elsewhere"}, 404),
        ({**base, "src_vfid": 5}, 400), ({**base, "dst_vfid": "user:nope/x"}, 400),
        ({**base, "dst_vfid": vf.vfid}, 400),
        ({**base, "src_vfid": f"{new_qsid()}/{uuid.uuid4().hex}"}, 404),
        ({**base, "options": {"wait_seconds": 10**9}}, 400),
        ({**base, "options": {"bogus": 1}}, 400), ({**base, "options": []}, 400),
    ]
    listing = sorted(os.listdir(api.gw.source))
    for body, status in cases:
        problem(api.post("/folder/clone", body), status)
    assert sorted(os.listdir(api.gw.source)) == listing
    serving(api.gw)


# -- bad input on every route -----------------------------------------------------------------


def bad_file_requests(vf: Folder, volume: str) -> list[tuple[str, dict[str, Any] | bytes, int]]:
    base = {"volume": volume, "vfid": vf.vfid}
    long_name, long_path = "n" * 256, "/".join(["d" * 200] * 25)
    cases: list[tuple[str, dict[str, Any] | bytes, int]] = []
    fields = {"mkdir": {"relpath": "new"}, "list": {"relpath": ""}, "fetch": {"relpath": "f"},
              "rename": {"relpath": "f", "new_name": "g"},
              "move": {"src_relpath": "f", "dst_relpath": "g"},
              "delete": {"relpaths": ["f"], "recursive": True}}
    for route, extra in fields.items():
        full = {**base, **extra}
        for key in full:
            if key != "recursive":  # optional
                cases.append((route, {k: v for k, v in full.items() if k != key}, 400))
            cases.append((route, {**full, key: 12345}, 400))
            cases.append((route, {**full, key: None}, 400))
        cases += [(route, {**full, "volume": "nope"}, 404),
                  (route, {**full, "vfid": f"{new_qsid()}/{uuid.uuid4().hex}"}, 404),
                  (route, b"{not json", 400), (route, b"[1, 2]", 400),
                  (route, b'{"volume": "a", "volume": "b"}', 400),
                  (route, b"x" * (65 * 1024), 413)]
        for key in extra:
            if key != "relpaths":
                cases += [(route, {**full, key: long_name}, 400),
                          (route, {**full, key: long_path}, 400),
                          (route, {**full, key: "\udc80\ud800"}, 400)]
    for flag_route, flag in (("mkdir", "parents"), ("mkdir", "exist_ok"),
                             ("delete", "recursive"), ("rename", "is_dir")):
        cases.append((flag_route, {**base, **fields[flag_route], flag: "maybe"}, 400))
    cases += [("delete", {**base, "relpaths": "f"}, 400), ("delete", {**base, "relpaths": []}, 400),
              ("delete", {**base, "relpaths": ["f"] * 10_001}, 400),
              ("delete", {**base, "relpaths": [["f"]]}, 400)]
    return cases


def test_bad_input_on_every_route_is_4xx_and_changes_nothing(api: Api, vf: Folder) -> None:
    (vf.mnt / "f").write_bytes(b"keep")
    before, used = tree(vf.mnt), api.gw.describe(vf.qsid)
    for route, body, status in bad_file_requests(vf, api.gw.volume):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = api.post(f"/folder/file/{route}", content=content)
        assert r.status_code == status, (route, body if len(content) < 300 else "...", r.text)
        problem(r, status)
    assert tree(vf.mnt) == before
    assert api.gw.describe(vf.qsid) == used
    serving(api.gw)


def test_tcp_without_the_token_is_403(gw: Gateway, tcp_port: int) -> None:
    vf = new_folder(gw)
    with httpx.Client(base_url=f"http://127.0.0.1:{tcp_port}", timeout=30) as c:
        r = c.post("/folder/file/mkdir", content=json.dumps(
            {"volume": gw.volume, "vfid": vf.vfid, "relpath": "x"}))
    problem(r, 403)
    assert not (vf.mnt / "x").exists()


def test_no_request_in_this_module_yielded_5xx(gw: Gateway) -> None:
    with gw.client() as c:
        metrics = c.get("/metrics").text
    fives = [line for line in metrics.splitlines()
             if line.startswith("fusegw_control_requests_total") and 'status="5' in line]
    assert fives == []
    assert "Traceback" not in gw.read_log()


# -- the manager's own calls (backend.ai-manager 23.3.7, tests/manager_driver.py) ----------------


@pytest.fixture(scope="module")
def mgr(gw: Gateway, tcp_port: int, public_dir: Path) -> Iterator[ManagerDriver]:
    volumes = volumes_config({"gw": (f"http://127.0.0.1:{tcp_port}", TOKEN)}, f"gw:{gw.volume}")
    with manager_driver(public_dir / "manager-driver-files.log", volumes) as drv:
        yield drv


def test_the_managers_file_calls(mgr: ManagerDriver, gw: Gateway) -> None:
    vf = new_folder(gw)
    host = f"gw:{gw.volume}"
    at = {"host": host, "vfid": vf.vfid}
    assert mgr.call("mkdir", **at, path="a/b") is None
    (vf.mnt / "a" / "f").write_bytes(b"z" * 7000)
    listing = mgr.call("list_files", **at, path="a")
    assert {i["name"]: i["type"] for i in listing["items"]} == {"b": "DIRECTORY", "f": "FILE"}
    assert {i["name"]: i["mode"] for i in listing["items"]} == {"b": "755", "f": "644"}
    assert {f["filename"] for f in json.loads(listing["files"])} == {"b", "f"}
    assert mgr.call("rename_file", **at, target_path="a/f", new_name="g") is None
    assert mgr.call("move_file", **at, src="a/g", dst="a/b") is None
    fetched = mgr.call("fetch_file", **at, relpath="a/b/g")
    assert fetched["size"] == 7000
    error = mgr.error("mkdir", **at, path="../escape")
    assert error["type"] == "InvalidAPIParameters" and error["extra_msg"], error
    assert mgr.call("delete_files", **at, files=["a"], recursive=True) == {"status": "ok"}
    assert os.listdir(vf.mnt) == []
    vf.assert_usage_is_du()


def test_the_managers_clone(mgr: ManagerDriver, gw: Gateway) -> None:
    vf = new_folder(gw)
    populate(vf)
    dst = mgr.call("clone_vfolder", host=f"gw:{gw.volume}", vfid=vf.vfid)["dst_vfid"]
    qsid, _, fid = dst.rpartition("/")
    clone_of = Folder(gw, qsid, fid)
    assert tree(clone_of.mnt) == tree(vf.mnt)
    clone_of.assert_usage_is_du()


# -- the node endpoint routes a clone by its volume ---------------------------------------------


@dataclass
class FakeVolume:
    name: str
    client: httpx.AsyncClient
    problem: str | None = None

    def serving(self) -> bool:
        return True

    def retry_after(self) -> int:
        return 1


class FakeNode:
    """Two volumes whose gateways answer with the path and volume they were sent."""

    def __init__(self, seen: list[tuple[str, str]]) -> None:
        def answer(name: str) -> httpx.MockTransport:
            def handle(request: httpx.Request) -> httpx.Response:
                seen.append((name, request.url.path))
                return httpx.Response(204)
            return httpx.MockTransport(handle)

        self.vols = {n: FakeVolume(n, httpx.AsyncClient(transport=answer(n),
                                                        base_url="http://fusegw"))
                     for n in ("one", "two")}

    def volume(self, name: str) -> FakeVolume | None:
        return self.vols.get(name)

    def status(self) -> dict[str, Any]:
        return {}

    async def volumes(self) -> list[dict[str, Any]]:
        return []


def test_the_node_routes_a_clone_by_its_volume_and_refuses_one_across_volumes() -> None:
    seen: list[tuple[str, str]] = []
    app = NodeApp(FakeNode(seen), None, None)
    vfid = f"{new_qsid()}/{uuid.uuid4().hex}"

    def clone_body(src: str, dst: str | None) -> bytes:
        return json.dumps({"src_volume": src, "src_vfid": vfid, "dst_volume": dst,
                           "dst_vfid": vfid}).encode()

    assert _asgi(app, "POST", "/folder/clone", body=clone_body("two", "two"))[0]["status"] == 204
    assert _asgi(app, "POST", "/folder/clone", body=clone_body("one", None))[0]["status"] == 204
    assert seen == [("two", "/folder/clone"), ("one", "/folder/clone")]
    for src, dst, status in (("one", "two", 400), ("three", "three", 404), ("one", "", 400)):
        sent = _asgi(app, "POST", "/folder/clone", body=clone_body(src, dst))
        assert sent[0]["status"] == status, sent
    assert json.loads(_asgi(app, "POST", "/folder/clone", body=clone_body("one", "two"))[1][
        "body"])["data"] == {"dst_volume": "differs from src_volume"}
    assert len(seen) == 2  # nothing refused was forwarded
    params = b"volume=two&vfid=" + vfid.encode() + b"&relpath=x&exist_ok=true"
    assert _asgi(app, "POST", "/folder/file/mkdir", params)[0]["status"] == 204
    assert seen[-1] == ("two", "/folder/file/mkdir")  # mkdir routed by its query string


# -- the manager through a node's endpoint (fusegw-mountd, two volumes) ------------------------


def test_the_managers_clone_and_file_calls_through_the_node(node: Node) -> None:  # noqa: F811
    """The manager's file calls and clone through mountd's TCP endpoint: the node routes
    each by its volume (a clone by src_volume = dst_volume), the work is charged on that
    volume alone, and a clone across the node's two volumes is a 400 that copies nothing."""
    volumes = volumes_config({"node": (f"http://127.0.0.1:{node.port}", TOKEN_OF_NODE)},
                             "node:vola")
    vola, volb = node.volumes["vola"], node.volumes["volb"]
    qsid, fid = new_qsid(), uuid.uuid4().hex
    vfid, at = f"{qsid}/{fid}", {"host": vola.host, "vfid": f"{qsid}/{fid}"}
    with manager_driver(node.logs.parent / "manager-driver-files.log", volumes) as drv:
        drv.call("create_vfolder", **at)
        mnt = vola.mountpoint / vfolder_rel(qsid, fid)
        assert drv.call("mkdir", **at, path="task/ab") is None
        (mnt / "task" / "ab" / "k.log").write_bytes(b"log line\n" * 100_000)
        names = [i["name"] for i in drv.call("list_files", **at, path="task/ab")["items"]]
        assert names == ["k.log"]
        assert drv.call("fetch_file", **at, relpath="task/ab/k.log")["size"] == 900_000
        dst = drv.call("clone_vfolder", **at)["dst_vfid"]
        dst_mnt = vola.mountpoint / vfolder_rel(*dst.rsplit("/", 1))
        assert tree(dst_mnt) == tree(mnt)
        across = {"src_volume": "vola", "src_vfid": vfid, "dst_volume": "volb",
                  "dst_vfid": dst}
        err = drv.error("request", host=vola.host, method="POST", path="folder/clone",
                        json=across)
        assert err["extra_data"]["status"] == 400, err
        assert not (volb.source / scope_hex(qsid)).exists()
        assert drv.call("delete_files", **at, files=["task"], recursive=True) == {"status": "ok"}
    with httpx.Client(base_url=f"http://127.0.0.1:{node.port}", timeout=30,
                      headers={"X-BackendAI-Storage-Auth-Token": TOKEN_OF_NODE}) as c:
        used = c.request("GET", "/quota-scope", json={"volume": "vola", "qsid": qsid}).json()
    assert used["used_bytes"] == du_bytes(vola.source / scope_hex(qsid))

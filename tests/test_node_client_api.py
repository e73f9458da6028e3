"""The node's client API: fusegw-mountd serves one `[api.client] service-addr` for every volume.

mountd with two volumes and a client listener: a download token got through the node endpoint
(`POST /folder/file/download`, routed by mountd) works through the node's client listener
(whole file and a Range with curl) for each volume; a tus upload with tuspy, dropped mid-body
and resumed, lands in the right volume with usage == `du -s -B1`; a forged token is a 401; an
unknown volume in a genuine token a 404; the gateways open no client TCP port of their own
(each serves its client API on a 0600 Unix socket in mountd's runtime directory).
"""

from __future__ import annotations

import json
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil
import pytest
import trio
from tusclient import client as tus

from mountd.client_router import ClientRouter
from tests.conftest import du_bytes, free_port, new_qsid, scope_hex, vfolder_rel, wait_for
from tests.test_client_api import curl_status, random_file, sha256_of
from tests.test_mountd import Mountd, gateway_pids, toml_str

SECRET = "node-client-secret-shared-with-the-manager"
MiB = 2**20
TUS = {"Tus-Resumable": "1.0.0"}
UPLOAD_SIZE = 6 * MiB


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mountd, str]]:
    base = tmp_path_factory.mktemp("nodeclient")
    base.chmod(0o755)
    port = free_port()
    m = Mountd(base, {}, health_timeout=10.0)
    try:
        vols = [m.vol("p"), m.vol("q")]
        lines = [line for v in vols for line in v.table()]
        lines += ["[control]", f"socket = {toml_str(m.node_socket)}", "",
                  "[api.client]", f'service-addr = {{ host = "127.0.0.1", port = {port} }}', "",
                  "[storage-proxy]", f"secret = {toml_str(SECRET)}", 'session-expire = "1h"', "",
                  "[mountd]", f"log_dir = {toml_str(base / 'logs')}",
                  "health_interval = 0.5", "health_timeout = 10.0",
                  "restart_backoff_max = 8.0", ""]
        m.write_config(vols, "\n".join(lines))
        m.start()
        for v in vols:
            m.serving(v.name, timeout=60)
        yield m, f"http://127.0.0.1:{port}"
    finally:
        m.stop()


def routed(m: Mountd, path: str, body: dict[str, Any]) -> httpx.Response:
    return m.request("POST", path, body)


def make_vfolder(m: Mountd, volume: str) -> tuple[str, str, Path]:
    qsid = new_qsid()
    r = routed(m, "/quota-scope", {"volume": volume, "qsid": qsid,
                                   "options": {"limit_bytes": 64 * MiB}})
    assert r.status_code in (200, 201, 204), r.text
    fid = uuid.uuid4().hex
    r = routed(m, "/folder/create", {"volume": volume, "vfid": f"{qsid}/{fid}"})
    assert r.status_code == 204, r.text
    return qsid, f"{qsid}/{fid}", m.vols[volume].mountpoint / vfolder_rel(qsid, fid)


def token(m: Mountd, op: str, volume: str, vfid: str, **params: Any) -> str:
    r = routed(m, f"/folder/file/{op}", {"volume": volume, "vfid": vfid, **params})
    assert r.status_code == 200, r.text
    t: str = r.json()["token"]
    return t


def used(m: Mountd, volume: str, qsid: str) -> int:
    r = m.request("GET", "/quota-scope", params={"volume": volume, "qsid": qsid})
    assert r.status_code == 200, r.text
    n: int = r.json()["used_bytes"]
    return n


def tus_offset(base: str, tok: str) -> int:
    r = httpx.head(f"{base}/upload", params={"token": tok}, headers=TUS)
    assert r.status_code == 200, r.text
    return int(r.headers["upload-offset"])


def patch_then_drop(base: str, tok: str, data: Path, total: int, send: int) -> None:
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as s:
        s.sendall((f"PATCH /upload?token={tok} HTTP/1.1\r\nHost: x\r\n"
                   "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                   "Content-Type: application/offset+octet-stream\r\n"
                   f"Content-Length: {total}\r\n\r\n").encode())
        s.sendall(data.read_bytes()[:send])


@pytest.mark.parametrize("volume", ["p", "q"])
def test_download_through_the_node_client_listener(node: tuple[Mountd, str],
                                                   volume: str) -> None:
    m, base = node
    _qsid, vfid, path = make_vfolder(m, volume)
    data = (volume * 1000 + "".join(str(i) for i in range(5000))).encode()
    (path / "f.txt").write_bytes(data)
    tok = token(m, "download", volume, vfid, relpath="f.txt")
    url = f"{base}/download?token={tok}"
    status, body, headers = curl_status(url)
    assert status == 200 and body == data
    status, body, headers = curl_status(url, "-r", "100-199")
    assert status == 206, body
    assert body == data[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(data)}"
    # CORS: the origin echoed, as the gateway does it
    status, _, headers = curl_status(url, "-H", "Origin: https://ui.example")
    assert headers.get("access-control-allow-origin") == "https://ui.example"


@pytest.mark.parametrize("volume", ["p", "q"])
def test_tus_upload_interrupted_and_resumed_lands_in_its_volume(
        node: tuple[Mountd, str], volume: str, tmp_path: Path) -> None:
    m, base = node
    qsid, vfid, path = make_vfolder(m, volume)
    src = random_file(tmp_path / "up.bin", UPLOAD_SIZE)
    tok = token(m, "upload", volume, vfid, relpath="in/up.bin", size=UPLOAD_SIZE)
    first = UPLOAD_SIZE // 3
    patch_then_drop(base, tok, src, UPLOAD_SIZE, first)
    wait_for(lambda: tus_offset(base, tok) == first, what="the first part stored")
    url = f"{base}/upload?token={tok}"
    uploader = tus.TusClient(url).uploader(file_path=str(src), url=url, chunk_size=2 * MiB)
    assert uploader.offset == first
    uploader.upload()
    target = path / "in" / "up.bin"
    assert sha256_of(target) == sha256_of(src)
    other = "q" if volume == "p" else "p"
    assert not list(m.vols[other].source.glob(f"{scope_hex(qsid)}*"))
    scope_dir = m.vols[volume].source / scope_hex(qsid)
    wait_for(lambda: used(m, volume, qsid) == du_bytes(scope_dir), what="usage == du")


def test_tus_options_and_preflight_without_a_token(node: tuple[Mountd, str]) -> None:
    _m, base = node
    r = httpx.options(f"{base}/upload")
    assert r.status_code in (200, 204), r.text
    assert r.headers["tus-resumable"] == "1.0.0"
    r = httpx.options(f"{base}/download", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "GET"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://ui.example"


def test_bad_tokens(node: tuple[Mountd, str]) -> None:
    _m, base = node
    claims = {"op": "download", "volume": "p", "vfid": "x", "relpath": "f",
              "exp": int(time.time()) + 600}
    forged = jwt.encode(claims, "another-secret-of-32-bytes-or-more", algorithm="HS256")
    r = httpx.get(f"{base}/download", params={"token": forged})
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    r = httpx.get(f"{base}/download", params={"token": "not.a.token"})
    assert r.status_code == 401
    r = httpx.get(f"{base}/download")
    assert r.status_code == 401
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, SECRET, algorithm="HS256")
    assert httpx.get(f"{base}/download", params={"token": expired}).status_code == 401
    wrong_op = jwt.encode({**claims, "op": "upload"}, SECRET, algorithm="HS256")
    assert httpx.get(f"{base}/download", params={"token": wrong_op}).status_code == 403
    unknown = jwt.encode({**claims, "volume": "nope"}, SECRET, algorithm="HS256")
    r = httpx.get(f"{base}/download", params={"token": unknown})
    assert r.status_code == 404, r.text
    assert json.loads(r.text)["type"].endswith("volume/not-found")


def test_gateways_serve_no_client_port_of_their_own(node: tuple[Mountd, str]) -> None:
    m, _base = node
    pids = gateway_pids(m.base)
    assert len(pids) == 2
    for pid in pids:
        listening = [c for c in psutil.Process(pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert listening == []
        assert b"--client-socket" in Path(f"/proc/{pid}/cmdline").read_bytes()
    for name in ("p", "q"):
        sock = m.base / "mountd" / f"{name}.client.sock"
        st = sock.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


class _Restarting:
    name = "p"
    problem = "restarting after kill -9"

    def serving(self) -> bool:
        return False

    def retry_after(self) -> int:
        return 3


class _Node:
    supervisors = {"p": _Restarting()}

    def volume(self, name: str) -> Any:
        return self.supervisors.get(name)

    def client_socket(self, name: str) -> Path:
        return Path("/nonexistent") / f"{name}.client.sock"


def test_a_restarting_volume_is_503_with_retry_after() -> None:
    """The router alone (a fake node): a genuine token for a volume whose gateway is not
    serving gets 503 and Retry-After, as the node endpoint answers."""
    tok = jwt.encode({"op": "download", "volume": "p", "vfid": "x", "relpath": "f",
                      "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/download", "headers": [],
             "query_string": f"token={tok}".encode()}
    trio.run(ClientRouter(_Node(), SECRET), scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"3") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["type"].endswith("volume/unavailable")

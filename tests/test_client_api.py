"""The client API (the storage proxy's `[api.client]`): tokens from the manager API's
`POST /folder/file/download` and `.../upload`, `GET /download` (ranges, zips of directories)
and tus 1.0.0 `/upload`, against a live gateway, with curl and a real tus client (tuspy).

Every upload is checked against the ledger: usage == `du -s -B1` of the scope once it is
done, and an upload past the scope's limit stores nothing past it.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import (
    Gateway,
    du_bytes,
    free_port,
    new_qsid,
    scope_hex,
    start_gateway,
    vfolder_rel,
)

SECRET = "some-secret-private-for-storage-proxy"
MiB = 2**20
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream"}


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gw(public_dir: Path, client_port: int) -> Iterator[Gateway]:
    g = start_gateway(public_dir, "capi", ["--client-listen", f"127.0.0.1:{client_port}"],
                      env={"FUSEGW_CLIENT_SECRET": SECRET})
    yield g
    g.stop()


@pytest.fixture(scope="module")
def base(client_port: int) -> str:
    return f"http://127.0.0.1:{client_port}"


class VFolder:
    def __init__(self, gw: Gateway, qsid: str, fid: str) -> None:
        self.gw, self.qsid, self.fid = gw, qsid, fid
        self.vfid = f"{qsid}/{fid}"
        self.path = gw.mountpoint / vfolder_rel(qsid, fid)
        self.scope_dir = gw.source / scope_hex(qsid)

    def token(self, op: str, **params: Any) -> str:
        r = self.gw.request("POST", f"/folder/file/{op}",
                            {"volume": self.gw.volume, "vfid": self.vfid, **params})
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    def used(self) -> int:
        used: int = self.gw.describe(self.qsid)["used_bytes"]
        return used

    def assert_exact(self) -> None:
        assert self.used() == du_bytes(self.scope_dir)


def make_vfolder(gw: Gateway, limit_bytes: int | None = None) -> VFolder:
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes)
    fid = uuid.uuid4().hex
    r = gw.request("POST", "/folder/create", {"volume": gw.volume, "vfid": f"{qsid}/{fid}"})
    assert r.status_code == 204, r.text
    return VFolder(gw, qsid, fid)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=120, check=False)


def curl_status(url: str, *args: str) -> tuple[int, bytes, dict[str, str]]:
    """curl's status, body and headers (lower-case names) of one request."""
    proc = curl("-D", "-", "-o", "/dev/stdout", *args, url)
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), body, headers


def uploads_dir(gw: Gateway) -> Path:
    return gw.source / ".fusegw" / "uploads"


def assert_serving(gw: Gateway, base: str) -> None:
    assert gw.request("GET", "/").status_code == 200
    assert httpx.options(f"{base}/upload").status_code == 200


def sign(claims: dict[str, Any], secret: str = SECRET, **kw: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, secret, **kw)


# -- the manager's token routes -----------------------------------------------------------------


def test_token_routes_give_the_storage_proxys_claims(gw: Gateway) -> None:
    vf = make_vfolder(gw)
    now = time.time()
    claims = jwt.decode(vf.token("download", relpath="a/b.txt", archive=False), SECRET,
                        algorithms=["HS256"])
    assert {k: v for k, v in claims.items() if k != "exp"} == {
        "op": "download", "volume": gw.volume, "vfid": vf.vfid, "relpath": "a/b.txt",
        "archive": False, "unmanaged_path": None}
    assert now + 86400 - 5 <= claims["exp"] <= now + 86400 + 5  # session-expire: 1d
    up = jwt.decode(vf.token("upload", relpath="up/x.bin", size=123), SECRET,
                    algorithms=["HS256"])
    assert up["op"] == "upload" and up["size"] == 123 and up["relpath"] == "up/x.bin"
    assert len(up["session"]) == 32 and (uploads_dir(gw) / up["session"]).is_file()
    # the manager sends size as a number; the storage proxy's t.ToInt also takes text
    assert jwt.decode(vf.token("upload", relpath="y", size="7"), SECRET,
                      algorithms=["HS256"])["size"] == 7


@pytest.mark.parametrize("op, params, status, field", [
    ("download", {"relpath": "../x"}, 400, "relpath"),
    ("download", {"relpath": "/etc/passwd"}, 400, "relpath"),
    ("download", {"relpath": "a/../../x"}, 400, "relpath"),
    ("download", {"relpath": 5}, 400, "relpath"),
    ("download", {"relpath": "x", "unmanaged_path": "/etc"}, 400, "unmanaged_path"),
    ("download", {"relpath": "x", "archive": "maybe"}, 400, "archive"),
    ("upload", {"relpath": "x"}, 400, "size"),
    ("upload", {"relpath": "x", "size": -1}, 400, "size"),
    ("upload", {"relpath": "x", "size": 2**70}, 400, "size"),
    ("upload", {"relpath": "x", "size": 200 * 2**30}, 400, "size"),  # > max-upload-size
    ("upload", {"relpath": "x", "size": 1.5}, 400, "size"),
    ("upload", {"relpath": "x", "size": "12abc"}, 400, "size"),
    ("upload", {"relpath": "", "size": 1}, 400, "relpath"),
    ("upload", {"relpath": "../../x", "size": 1}, 400, "relpath"),
])
def test_token_routes_refuse_bad_input(gw: Gateway, op: str, params: dict[str, Any],
                                       status: int, field: str) -> None:
    vf = make_vfolder(gw)
    before = sorted(os.listdir(uploads_dir(gw)))
    r = gw.request("POST", f"/folder/file/{op}",
                   {"volume": gw.volume, "vfid": vf.vfid, **params})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in r.json().get("data", {}), r.text
    assert sorted(os.listdir(uploads_dir(gw))) == before  # nothing made


def test_token_routes_unknown_volume_or_vfolder(gw: Gateway) -> None:
    vf = make_vfolder(gw)
    r = gw.request("POST", "/folder/file/download",
                   {"volume": "elsewhere", "vfid": vf.vfid, "relpath": "x"})
    assert r.status_code == 404
    r = gw.request("POST", "/folder/file/upload",
                   {"volume": gw.volume, "vfid": f"{vf.qsid}/{uuid.uuid4().hex}",
                    "relpath": "x", "size": 1})
    assert r.status_code == 404, r.text
    r = gw.request("POST", "/folder/file/upload", {"volume": gw.volume, "relpath": "x"})
    assert r.status_code == 400 and "vfid" in r.json()["data"]

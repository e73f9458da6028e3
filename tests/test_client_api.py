"""The client API (the storage proxy's `[api.client]`): tokens from the manager API's
`POST /folder/file/download` and `.../upload`, `GET /download` (ranges, zips of directories)
and tus 1.0.0 `/upload`, against a live gateway, with curl and a real tus client (tuspy).

Every upload is checked against the ledger: usage == `du -s -B1` of the scope once it is
done, and an upload past the scope's limit stores nothing past it.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from tusclient import client as tus

from tests.conftest import (
    Gateway,
    du_bytes,
    free_port,
    new_qsid,
    private_source,
    scope_hex,
    start_gateway,
    vfolder_rel,
    wait_for,
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


# -- GET /download ------------------------------------------------------------------------------


def test_download_whole_file_and_ranges_with_curl(gw: Gateway, base: str) -> None:
    vf = make_vfolder(gw)
    data = os.urandom(3 * MiB + 123)
    (vf.path / "d").mkdir()
    (vf.path / "d" / "blob.bin").write_bytes(data)
    url = f"{base}/download?token={vf.token('download', relpath='d/blob.bin')}"
    status, body, headers = curl_status(url)
    assert status == 200 and body == data
    assert headers["content-length"] == str(len(data))
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-disposition"].startswith('attachment;filename="blob.bin";')
    # curl -r: a middle range, an open end, a suffix
    for spec, first, last in [("100-199", 100, 199), (f"{3 * MiB}-", 3 * MiB, len(data) - 1),
                              ("-500", len(data) - 500, len(data) - 1),
                              ("0-99999999", 0, len(data) - 1)]:
        status, body, headers = curl_status(url, "-r", spec)
        assert status == 206, spec
        assert body == data[first:last + 1], spec
        assert headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    status, body, headers = curl_status(url, "-r", f"{len(data)}-")
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
    # If-Range: the client SDK resumes with Last-Modified; a stale validator gets it all
    modified = headers_of(url)["last-modified"]
    status, body, _ = curl_status(url, "-r", "10-19", "-H", f"If-Range: {modified}")
    assert status == 206 and body == data[10:20]
    status, body, _ = curl_status(url, "-r", "10-19",
                                  "-H", "If-Range: Mon, 01 Jan 2001 00:00:00 GMT")
    assert status == 200 and body == data
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))


def headers_of(url: str) -> dict[str, str]:
    return curl_status(url)[2]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_download_refuses_bad_tokens(gw: Gateway, base: str) -> None:
    """Expired, forged (another secret, alg none, garbage), or genuine tokens for another op
    or volume: 401/403 problem+json, the daemon serving."""
    vf = make_vfolder(gw)
    (vf.path / "f").write_bytes(b"secret data")
    claims = {"op": "download", "volume": gw.volume, "vfid": vf.vfid, "relpath": "f"}
    assert httpx.get(f"{base}/download", params={"token": sign(claims)}).content == \
        b"secret data"
    cases = [
        (sign({**claims, "exp": int(time.time()) - 10}), 401, "token-expired"),
        (sign(claims, "another-secret-of-another-storage-proxy"), 401, "invalid-token"),
        (jwt.encode(claims, None, algorithm="none"), 401, "invalid-token"),
        (sign(claims, algorithm="HS512"), 401, "invalid-token"),
        (jwt.encode(claims, SECRET, algorithm="HS256"), 401, "invalid-token"),  # no exp
        ("not.a.token", 401, "invalid-token"),
        ("", 401, "invalid-token"),
        (sign({**claims, "op": "upload"}), 403, "token-mismatch"),
        (sign({**claims, "volume": "other"}), 403, "token-mismatch"),
        (vf.token("upload", relpath="f", size=3), 403, "token-mismatch"),
    ]
    for token, status, kind in cases:
        r = httpx.get(f"{base}/download", params={"token": token})
        assert r.status_code == status, (token, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/" + kind), r.text
    assert httpx.get(f"{base}/download").status_code == 401
    assert_serving(gw, base)


def test_download_refuses_escapes(gw: Gateway, base: str, public_dir: Path) -> None:
    """A (genuine) token whose relpath leaves the vfolder, a symlink out, a directory
    without archive, a missing file: 4xx, nothing read."""
    vf = make_vfolder(gw)
    outside = public_dir / "outside.txt"
    outside.write_text("not yours")
    os.symlink(str(outside), vf.path / "abs-link")
    os.symlink("../../../../..", vf.path / "up-link")
    (vf.path / "sub").mkdir()
    claims = {"op": "download", "volume": gw.volume, "vfid": vf.vfid}
    for relpath, status in [("../x", 400), ("/etc/passwd", 400), ("abs-link", 400),
                            ("up-link/etc/passwd", 400), ("sub", 400), ("missing", 404),
                            ("sub/missing", 404)]:
        r = httpx.get(f"{base}/download", params={"token": sign({**claims,
                                                                  "relpath": relpath})})
        assert r.status_code == status, (relpath, r.text)
        assert b"not yours" not in r.content
    r = httpx.get(f"{base}/download", params={"token": sign(
        {**claims, "relpath": "x", "unmanaged_path": "/etc"})})
    assert r.status_code == 400
    r = httpx.get(f"{base}/download", params={"token": sign({**claims, "relpath": "sub"}),
                                              "dst_dir": "../.."})
    assert r.status_code == 400
    assert_serving(gw, base)


def test_zip_of_a_directory_with_10000_files(gw: Gateway, base: str) -> None:
    """archive=true streams a zip (zipstream-ng) of the tree, read through the mount; checked
    by unzipping every member."""
    vf = make_vfolder(gw)
    top = vf.path / "many"
    expected: dict[str, bytes] = {}
    for d in range(10):
        (top / f"d{d}").mkdir(parents=True)
        for i in range(1000):
            name = f"d{d}/f{i:04d}.txt"
            content = f"{name} {i * d}\n".encode() * (1 + i % 7)
            (top / name).write_bytes(content)
            expected[name] = content
    (top / "empty").mkdir()
    os.symlink("/etc/passwd", top / "link")  # left out, never followed
    url = f"{base}/download?token={vf.token('download', relpath='many', archive=True)}"
    out = gw.source.parent / "many.zip"
    started = time.monotonic()
    proc = curl("-f", "-o", str(out), url)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        files = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
        dirs = {i.filename for i in zf.infolist() if i.is_dir()}
    assert files == expected
    assert dirs == {"empty/"}
    out.unlink()
    print(f"\nzip of 10,000 files ({out.name}): {seconds:.2f} s")
    # the query's archive=true works too, as the storage proxy reads it
    plain = vf.token("download", relpath="many/d0")
    r = httpx.get(f"{base}/download", params={"token": plain, "archive": "true"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert len(zf.namelist()) == 1000
    vf.assert_exact()


# -- tus /upload --------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def patch_then_drop(base: str, token: str, offset: int, data_path: Path, total: int,
                    send: int) -> None:
    """A PATCH announcing `total` bytes that sends only `send` of them and drops the
    connection, as a client whose network went away."""
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as s:
        s.sendall((f"PATCH /upload?token={token} HTTP/1.1\r\nHost: x\r\n"
                   f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
                   "Content-Type: application/offset+octet-stream\r\n"
                   f"Content-Length: {total}\r\n\r\n").encode())
        with open(data_path, "rb") as f:
            f.seek(offset)
            left = send
            while left:
                chunk = f.read(min(left, 4 * MiB))
                s.sendall(chunk)
                left -= len(chunk)


def tus_offset(base: str, token: str) -> int:
    r = httpx.head(f"{base}/upload", params={"token": token}, headers=TUS)
    assert r.status_code == 200, r.text
    return int(r.headers["upload-offset"])


UPLOAD_SIZE = 1024 * MiB


def test_tus_upload_interrupted_and_resumed_1gib(gw: Gateway, base: str,
                                                 public_dir: Path) -> None:
    """1 GiB with a real tus client (tuspy): a PATCH dropped mid-body, a gateway restart,
    then tuspy resumes from HEAD's Upload-Offset; the file is identical, usage == du."""
    vf = make_vfolder(gw, limit_bytes=2 * UPLOAD_SIZE)
    src = random_file(public_dir / "upload.bin", UPLOAD_SIZE)
    want = sha256_of(src)
    token = vf.token("upload", relpath="deep/dir/upload.bin", size=UPLOAD_SIZE)
    url = f"{base}/upload?token={token}"
    started = time.monotonic()
    first = UPLOAD_SIZE // 3
    patch_then_drop(base, token, 0, src, UPLOAD_SIZE, first)
    # every byte that arrived before the connection dropped is stored, none invented
    wait_for(lambda: tus_offset(base, token) == first, what="the first part stored")
    gw.stop()  # state persisted: the session survives a restart
    gw.start()
    resumed = tus_offset(base, token)
    assert resumed == first
    uploader = tus.TusClient(url).uploader(file_path=str(src), url=url, chunk_size=256 * MiB)
    assert uploader.offset == resumed  # tuspy asked HEAD
    uploader.upload()
    seconds = time.monotonic() - started
    target = vf.path / "deep/dir/upload.bin"
    assert target.stat().st_size == UPLOAD_SIZE
    assert sha256_of(target) == want
    assert not (uploads_dir(gw) / token_session(token)).exists()  # moved, not copied
    vf.assert_exact()
    print(f"\n1 GiB tus upload, dropped at {first} bytes, gateway restarted, resumed: "
          f"{seconds:.1f} s")
    r = httpx.head(f"{base}/upload", params={"token": token}, headers=TUS)
    assert r.status_code == 404  # the session is done
    src.unlink()
    target.unlink()
    vf.assert_exact()


def token_session(token: str) -> str:
    session: str = jwt.decode(token, SECRET, algorithms=["HS256"])["session"]
    return session


def test_tus_refuses_what_tus_forbids(gw: Gateway, base: str) -> None:
    """A wrong Upload-Offset (409), a wrong content type (415), another tus version (412),
    more than the upload's size (413, nothing past it stored), bad tokens: nothing changed."""
    vf = make_vfolder(gw)
    token = vf.token("upload", relpath="t.bin", size=1000)
    url = f"{base}/upload"
    q = {"token": token}
    ok = {**TUS, **OFFSET_TYPE}
    r = httpx.patch(url, params=q, headers={**ok, "Upload-Offset": "5"}, content=b"x" * 10)
    assert r.status_code == 409, r.text
    r = httpx.patch(url, params=q, headers={**TUS, "Upload-Offset": "0",
                                            "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 415
    r = httpx.patch(url, params=q, headers={**ok, "Tus-Resumable": "0.2.2",
                                            "Upload-Offset": "0"}, content=b"x")
    assert r.status_code == 412
    r = httpx.patch(url, params=q, headers={**ok, "Upload-Offset": "abc"}, content=b"x")
    assert r.status_code == 400
    r = httpx.patch(url, params=q, headers={**ok, "Upload-Offset": "0"}, content=b"x" * 1001)
    assert r.status_code == 413, r.text
    assert tus_offset(base, token) == 0  # nothing past the size, and here nothing at all
    for bad in [sign({"op": "upload", "volume": gw.volume, "vfid": vf.vfid,
                      "session": token_session(token), "relpath": "t.bin", "size": 1000},
                     "another-secret-of-another-storage-proxy"),
                sign({"op": "upload", "volume": gw.volume, "vfid": vf.vfid,
                      "session": "0" * 32, "relpath": "t.bin", "size": 1000}),
                vf.token("download", relpath="t.bin")]:
        r = httpx.patch(url, params={"token": bad}, headers={**ok, "Upload-Offset": "0"},
                        content=b"x")
        assert r.status_code in (401, 403, 404), r.text
    r = httpx.patch(url, params=q, headers={**ok, "Upload-Offset": "0"}, content=b"y" * 600)
    assert r.status_code == 204 and r.headers["upload-offset"] == "600"
    r = httpx.patch(url, params=q, headers={**ok, "Upload-Offset": "600"}, content=b"z" * 400)
    assert r.status_code == 204 and r.headers["upload-offset"] == "1000"
    assert (vf.path / "t.bin").read_bytes() == b"y" * 600 + b"z" * 400
    vf.assert_exact()
    assert_serving(gw, base)


def test_upload_past_the_scope_limit_is_refused(gw: Gateway, base: str,
                                                public_dir: Path) -> None:
    """Admitted piece by piece against the scope's limit: refused (413, which tus clients do
    not retry) before the excess is stored; an upload bigger than the limit itself is refused
    when the manager asks for the token."""
    limit = 8 * MiB
    vf = make_vfolder(gw, limit_bytes=limit)
    (vf.path / "existing").write_bytes(os.urandom(3 * MiB))
    r = gw.request("POST", "/folder/file/upload", {"volume": gw.volume, "vfid": vf.vfid,
                                                   "relpath": "big", "size": 9 * MiB})
    assert r.status_code in (409, 413) and "quota" in r.json()["type"], r.text
    src = random_file(public_dir / "six.bin", 6 * MiB)
    token = vf.token("upload", relpath="six.bin", size=6 * MiB)
    url = f"{base}/upload?token={token}"
    with pytest.raises(Exception) as refused:
        tus.TusClient(url).uploader(file_path=str(src), url=url, chunk_size=6 * MiB).upload()
    assert "413" in str(refused.value) or getattr(refused.value, "status_code", 0) == 413
    data = uploads_dir(gw) / token_session(token)
    stored = os.stat(data).st_blocks * 512
    used = vf.used()
    assert used <= limit
    assert used == du_bytes(vf.scope_dir) + stored  # charged as it arrived
    assert tus_offset(base, token) == os.stat(data).st_size < 6 * MiB
    assert not (vf.path / "six.bin").exists()
    src.unlink()


@pytest.fixture
def short_lived(public_dir: Path, request: pytest.FixtureRequest
                ) -> Iterator[tuple[Gateway, str]]:
    """A gateway read from a storage proxy's own file: [api.client] service-addr,
    [storage-proxy] secret and a session-expire (60 s, or the test's indirect parameter)."""
    expire = getattr(request, "param", "60s")
    port = free_port()
    name = f"short{uuid.uuid4().hex[:8]}"
    source = private_source(public_dir, name)
    mnt = public_dir / f"{name}.mnt"
    mnt.mkdir()
    config = public_dir / f"{name}.toml"
    config.write_text(f"""
[storage-proxy]
secret = "{SECRET}"
session-expire = "{expire}"

[api.client]
service-addr = {{ host = "127.0.0.1", port = {port} }}
ssl-enabled = false

[volume.{name}]
backend = "vfs"
path = "{source}"
mountpoint = "{mnt}"
""")
    g = Gateway(source, mnt, public_dir / f"{name}.sock", public_dir / f"{name}.log",
                name, ["--config", str(config)])
    try:
        g.start()
        yield g, f"http://127.0.0.1:{port}"
    finally:
        g.stop()


def test_first_requests_on_a_fresh_mount(short_lived: tuple[Gateway, str]) -> None:
    """The very first open and close of the mount come from the client API (the kernel's
    first FLUSH waits for the gateway's answer): served from worker threads, no deadlock.
    An empty upload, which no PATCH completes, is moved into place by its HEAD."""
    gw, base = short_lived
    vf = make_vfolder(gw)
    token = vf.token("upload", relpath="first.txt", size=5)
    r = httpx.patch(f"{base}/upload", params={"token": token},
                    headers={**TUS, **OFFSET_TYPE, "Upload-Offset": "0"}, content=b"hello")
    assert r.status_code == 204
    r = httpx.get(f"{base}/download", params={"token": vf.token("download",
                                                                relpath="first.txt")})
    assert r.status_code == 200 and r.content == b"hello"
    empty = vf.token("upload", relpath="sub/empty.txt", size=0)
    assert tus_offset(base, empty) == 0
    assert (vf.path / "sub" / "empty.txt").read_bytes() == b""
    vf.assert_exact()


@pytest.mark.parametrize("short_lived", ["3s"], indirect=True)
def test_upload_into_a_deleted_vfolder(short_lived: tuple[Gateway, str]) -> None:
    """The vfolder goes while its upload is half done: the next PATCH is a 404, and the
    session's charge, which went with the vfolder's figures, is not taken twice."""
    gw, base = short_lived
    vf = make_vfolder(gw)
    token = vf.token("upload", relpath="gone.bin", size=2 * MiB)
    ok = {**TUS, **OFFSET_TYPE}
    r = httpx.patch(f"{base}/upload", params={"token": token},
                    headers={**ok, "Upload-Offset": "0"}, content=os.urandom(MiB))
    assert r.status_code == 204
    r = gw.request("POST", "/folder/delete", {"volume": gw.volume, "vfid": vf.vfid})
    assert r.status_code == 204
    r = httpx.patch(f"{base}/upload", params={"token": token},
                    headers={**ok, "Upload-Offset": str(MiB)}, content=os.urandom(MiB))
    assert r.status_code == 404, r.text
    data = uploads_dir(gw) / token_session(token)
    wait_for(lambda: not data.exists(), what="session removed")
    vf.assert_exact()


@pytest.mark.parametrize("short_lived", ["2s"], indirect=True)
def test_abandoned_upload_is_removed_after_session_expire(
        short_lived: tuple[Gateway, str]) -> None:
    gw, base = short_lived
    vf = make_vfolder(gw, limit_bytes=64 * MiB)
    token = vf.token("upload", relpath="half.bin", size=4 * MiB)
    r = httpx.patch(f"{base}/upload", params={"token": token},
                    headers={**TUS, **OFFSET_TYPE, "Upload-Offset": "0"},
                    content=os.urandom(2 * MiB))
    assert r.status_code == 204, r.text
    data = uploads_dir(gw) / token_session(token)
    assert vf.used() > du_bytes(vf.scope_dir)  # the half upload is charged
    wait_for(lambda: not data.exists() and not data.with_suffix(".json").exists(),
             what="abandoned session removed")
    vf.assert_exact()  # and uncharged
    r = httpx.head(f"{base}/upload", params={"token": token}, headers=TUS)
    assert r.status_code in (401, 404)


# -- CORS ---------------------------------------------------------------------------------------


def test_cors_as_the_storage_proxy_sends_it(gw: Gateway, base: str) -> None:
    vf = make_vfolder(gw)
    (vf.path / "c.txt").write_text("cors")
    origin = {"Origin": "https://webui.example.com"}
    r = httpx.options(f"{base}/upload", headers=origin)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-methods"] == "*"
    assert "Upload-Offset" in r.headers["access-control-allow-headers"]
    assert "Upload-Offset" in r.headers["access-control-expose-headers"]
    assert r.headers["tus-resumable"] == "1.0.0" and r.headers["tus-version"] == "1.0.0"
    assert int(r.headers["tus-max-size"]) == 100 * 2**30
    assert "tus-extension" in r.headers
    token = vf.token("upload", relpath="u", size=1)
    r = httpx.head(f"{base}/upload", params={"token": token}, headers=origin)
    assert r.headers["access-control-allow-origin"] == "*"
    r = httpx.head(f"{base}/upload", params={"token": "bad"}, headers=origin)
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "*"
    # /download: aiohttp_cors with credentials, the origin echoed, headers exposed
    r = httpx.options(f"{base}/download", headers={
        **origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin["Origin"]
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-allow-methods"] == "GET"
    assert r.headers["access-control-allow-headers"] == "range"
    r = httpx.get(f"{base}/download", params={"token": vf.token("download", relpath="c.txt")},
                  headers=origin)
    assert r.status_code == 200 and r.text == "cors"
    assert r.headers["access-control-allow-origin"] == origin["Origin"]
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "content-disposition" in r.headers["access-control-expose-headers"]
    r = httpx.get(f"{base}/download", params={"token": vf.token("download", relpath="c.txt")})
    assert "access-control-allow-origin" not in r.headers  # no Origin, no CORS
    assert httpx.options(f"{base}/download").status_code == 403  # not a preflight


def test_unknown_routes_and_methods(gw: Gateway, base: str) -> None:
    assert httpx.get(f"{base}/").status_code == 404
    assert httpx.post(f"{base}/upload").status_code == 405
    assert httpx.delete(f"{base}/download").status_code == 405
    r = httpx.get(f"{base}/download", params={"token": "x"}, headers={"Upgrade": "h2c"})
    assert r.status_code == 400
    assert_serving(gw, base)


def test_upload_charge_survives_kill9_and_rescan(gw: Gateway, base: str) -> None:
    """After kill -9 the scope being written is rescanned, which sees only the scope's own
    directory: the half-stored upload's charge comes back with it (a ledger Settler), the
    upload resumes, and usage == du once it is complete."""
    vf = make_vfolder(gw, limit_bytes=64 * MiB)
    data = os.urandom(4 * MiB)
    token = vf.token("upload", relpath="k.bin", size=len(data))
    q = {"token": token}
    r = httpx.patch(f"{base}/upload", params=q,
                    headers={**TUS, **OFFSET_TYPE, "Upload-Offset": "0"}, content=data[:MiB])
    assert r.status_code == 204
    stored = os.stat(uploads_dir(gw) / token_session(token)).st_blocks * 512
    assert vf.used() == du_bytes(vf.scope_dir) + stored
    gw.kill9()
    gw.start()
    wait_for(lambda: gw.request("GET", "/").json()["accounting"] == "ready", what="rescan")
    assert vf.qsid in [r["qsid"] for r in gw.request("GET", "/").json()["rebuilds"]]
    assert vf.used() == du_bytes(vf.scope_dir) + stored
    r = httpx.patch(f"{base}/upload", params=q, headers={
        **TUS, **OFFSET_TYPE, "Upload-Offset": str(tus_offset(base, token))},
        content=data[MiB:])
    assert r.status_code == 204, r.text
    assert (vf.path / "k.bin").read_bytes() == data
    vf.assert_exact()


def test_download_given_up_stops_reading(gw: Gateway, base: str) -> None:
    """A client that goes away mid-zip: the gateway stops reading the tree (hypercorn drops
    what is sent to a closed connection silently, so it watches for the disconnect)."""
    vf = make_vfolder(gw)
    tree = vf.path / "big"
    tree.mkdir()
    for i in range(64):
        (tree / f"r{i:02d}.bin").write_bytes(os.urandom(4 * MiB))  # 256 MiB, incompressible
    reads = gw.request("GET", "/").json()["fuse_requests"].get("read", 0)
    token = vf.token("download", relpath="big", archive=True)
    with httpx.stream("GET", f"{base}/download", params={"token": token}) as r:
        assert r.status_code == 200
        got = next(r.iter_bytes())
        assert got[:2] == b"PK"
    wait_for(lambda: "download given up by the client" in gw.read_log(), what="give-up")
    assert "failed mid-answer" not in gw.read_log()  # a clean stop, not an error
    done = gw.request("GET", "/").json()["fuse_requests"].get("read", 0) - reads
    # a whole read of 256 MiB takes at least 256 reads of 1 MiB (the mount's largest)
    print(f"\nreads after give-up: {done}")
    assert done < 128, done
    assert_serving(gw, base)


def test_client_listener_needs_the_secret(make_gateway: Any) -> None:
    """--client-listen without FUSEGW_CLIENT_SECRET (or [storage-proxy] secret) is refused
    in one line before anything is mounted; the manager's token routes say the client API is
    off where no secret is set."""
    g = make_gateway("nosecret", extra=["--client-listen", f"127.0.0.1:{free_port()}"],
                     start=False)
    proc = g.start(check=False)
    assert proc.returncode == 1
    assert "FUSEGW_CLIENT_SECRET" in proc.stderr and "\n" not in proc.stderr.strip()
    plain = make_gateway("plain")
    qsid = new_qsid()
    plain.create_scope(qsid)
    fid = uuid.uuid4().hex
    assert plain.request("POST", "/folder/create", {"volume": "plain",
                                                    "vfid": f"{qsid}/{fid}"}).status_code == 204
    r = plain.request("POST", "/folder/file/download",
                      {"volume": "plain", "vfid": f"{qsid}/{fid}", "relpath": "x"})
    assert r.status_code == 409 and "client-api-disabled" in r.json()["type"], r.text


def test_upload_into_a_btrfs_subvolume_scope(tmp_path: Path) -> None:
    """On btrfs each scope is a subvolume: the rename from .fusegw/uploads is EXDEV, so the
    complete upload is copied into place through the mount (accounted as any writer's) and
    its data file dropped and uncharged; usage is the storage's own figure."""
    from btrfs_fixtures import make_btrfs
    from test_backends import qgroup_referenced

    port = free_port()
    with make_btrfs(tmp_path / "btrfs") as source:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        gw = Gateway(source, mnt, tmp_path / "gw.sock", tmp_path / "gw.log", "bt",
                     ["--backend", "btrfs", "--client-listen", f"127.0.0.1:{port}"],
                     {"FUSEGW_CLIENT_SECRET": SECRET})
        try:
            gw.start()
            base = f"http://127.0.0.1:{port}"
            vf = make_vfolder(gw, limit_bytes=64 * MiB)
            data = os.urandom(3 * MiB + 5)
            token = vf.token("upload", relpath="in/sub.bin", size=len(data))
            r = httpx.patch(f"{base}/upload", params={"token": token},
                            headers={**TUS, **OFFSET_TYPE, "Upload-Offset": "0"},
                            content=data)
            assert r.status_code == 204, r.text
            assert (vf.path / "in" / "sub.bin").read_bytes() == data
            assert not (uploads_dir(gw) / token_session(token)).exists()
            # a native enforcer's figures are the storage's own: the qgroup's, once synced
            wait_for(lambda: (os.sync(), vf.used() == qgroup_referenced(vf.scope_dir)[0])[1],
                     what="usage == the qgroup's referenced bytes")
        finally:
            gw.stop()


def test_a_second_gateway_on_the_client_port_still_serves(gw: Gateway, client_port: int,
                                                          make_gateway: Any) -> None:
    """Two gateways read the same [api.client] service-addr (one storage-proxy.toml, one
    `fusegw mount --config` per volume): the second mounts and serves its volume, and logs
    that the client API is not served by it."""
    second = make_gateway("second", extra=["--client-listen", f"127.0.0.1:{client_port}"],
                          env={"FUSEGW_CLIENT_SECRET": SECRET})
    assert second.request("GET", "/").status_code == 200
    assert "client API not served: cannot listen on" in second.read_log()
    assert httpx.options(f"http://127.0.0.1:{client_port}/upload").status_code == 200

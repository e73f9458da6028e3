"""`purestorage` (FlashBlade): plain directories with the gateway enforcing, the Purity//FB
REST API for the volume's figures, RapidFile Toolkit's `prm` for tree removal.

The gateway runs with `--config` and the storage proxy's `purity_*` options pointing at the
FlashBlade emulator (tests/emulators/purestorage.py): quota scopes never reach the appliance,
the gateway's ledger refuses writes past a limit (EDQUOT) exactly as on `vfs`, and a wrong API
token does not keep the mount from serving. The figures (`volume_usage`, `performance`) are
called on a backend instance, inside trio.run, against the emulator over real HTTP: the exact
requests, the session kept and renewed once when it expires, and every fault.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import Gateway, du_bytes, free_port, new_qsid, scope_hex, wait_for
from emulators import purestorage as fb
from emulators.common import Emulator, allocated_bytes, start_emulator
from vendor_fixture import sent, vendor_gateway

from backends.base import BackendError
from backends.purestorage import PureStorageBackend
from backends.rest import ApplianceError

MiB = 2**20
SMALL_TIMEOUT = 0.5


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Emulator]]:
    """A gateway on `--backend purestorage`, configured by TOML with the purity options."""
    with vendor_gateway("purestorage", tmp_path_factory.mktemp("pure")) as pair:
        yield pair


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    """A FlashBlade emulator alone, its file system = tmp_path/volume."""
    root = tmp_path / "volume"
    root.mkdir()
    emu = start_emulator("purestorage", root, free_port())
    try:
        yield emu
    finally:
        emu.stop()


def backend_for(emu: Emulator, **options: Any) -> PureStorageBackend:
    """A backend for the figures calls (they never touch the volume's directory)."""
    return PureStorageBackend(Path("/nonexistent-volume"),
                              {**fb.gateway_options(emu.url), **options})


def run(backend: PureStorageBackend,
        *calls: Callable[[PureStorageBackend], Awaitable[Any]]) -> list[Any]:
    """Call the backend's coroutines in order in one trio run; the client closed after."""
    async def main() -> list[Any]:
        try:
            return [await call(backend) for call in calls]
        finally:
            await backend.aclose()

    return trio.run(main)


def usage(b: PureStorageBackend) -> Awaitable[dict[str, int]]:
    return b.volume_usage()


def perf(b: PureStorageBackend) -> Awaitable[dict[str, float]]:
    return b.performance()


def failing(b: PureStorageBackend, call: Callable[[PureStorageBackend], Awaitable[Any]]
            ) -> ApplianceError:
    with pytest.raises(ApplianceError) as excinfo:
        run(b, call)
    return excinfo.value


def appliance_requests(emu: Emulator) -> list[dict[str, Any]]:
    return [r for r in emu.requests() if r["path"].startswith("/api/")]


# -- (1) the quota-scope flow through the gateway ---------------------------------------------


def test_quota_scope_flow_never_asks_the_appliance(pure):
    """Create, describe (the gateway's own figures: FlashBlade has no directory quota), usage
    following a write, PATCH, PATCH upsert, DELETE quota, folder/create with an initial size,
    DELETE: all served, and not one request reached the FlashBlade."""
    gw, emu = pure
    before = len(emu.requests())
    qsid = new_qsid()
    scope = gw.create_scope(qsid, limit_bytes=10 * MiB)
    figures = gw.describe(qsid)
    assert figures["limit_bytes"] == 10 * MiB
    assert figures["used_bytes"] <= 4096
    vf = gw.make_vfolder(qsid)
    with open(vf / "data.bin", "wb") as f:
        f.write(b"p" * 8192)
        os.fsync(f.fileno())
    backing = gw.source / scope_hex(qsid)
    wait_for(lambda: gw.describe(qsid)["used_bytes"] == du_bytes(backing), 20,
             "used_bytes to follow the write")
    assert int(os.getxattr(scope, "user.fusegw.used_bytes")) == du_bytes(backing)
    r = gw.request("PATCH", "/quota-scope", {"volume": gw.volume, "qsid": qsid,
                                             "options": {"limit_bytes": 20 * MiB}})
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] == 20 * MiB
    missing = new_qsid("project")
    r = gw.request("PATCH", "/quota-scope", {"volume": gw.volume, "qsid": missing,
                                             "options": {"limit_bytes": 3 * MiB}})
    assert r.status_code == 204, r.text
    assert gw.describe(missing)["limit_bytes"] == 3 * MiB
    assert (gw.source / scope_hex(missing)).is_dir()
    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] is None
    fresh = new_qsid()
    vfid = f"{fresh}/{uuid.uuid4().hex}"
    r = gw.request("POST", "/folder/create", {"volume": gw.volume, "vfid": vfid, "options": {
        "initial_max_size_for_quota_scope": 4 * MiB}})
    assert r.status_code == 204, r.text
    assert gw.describe(fresh)["limit_bytes"] == 4 * MiB
    r = gw.request("POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid})
    assert r.status_code == 204, r.text
    for q in (fresh, missing):
        r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": q})
        assert r.status_code == 204, r.text
        assert not (gw.source / scope_hex(q)).exists()
    assert emu.requests()[before:] == []
    assert fb.API_TOKEN not in gw.read_log()


def test_gateway_enforces_the_limit_edquot(pure):
    """With `--backend purestorage` and the purity options in its TOML, the gateway's ledger
    refuses a write past the limit with EDQUOT, as on vfs; what was accepted stays within it.
    The appliance enforces nothing: the same bytes written beside the gateway go through."""
    gw, _ = pure
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=2 * MiB)
    vf = gw.make_vfolder(qsid)
    chunk = b"y" * (256 * 1024)
    written = 0
    with pytest.raises(OSError) as excinfo, open(vf / "big.bin", "wb", buffering=0) as f:
        for _ in range(64):
            written += f.write(chunk)
    assert excinfo.value.errno == errno.EDQUOT
    assert 0 < written <= 2 * MiB
    assert os.path.getsize(vf / "big.bin") == written
    backing = gw.source / vf.relative_to(gw.mountpoint)
    (backing / "beside.bin").write_bytes(chunk * 12)  # 3 MiB: no quota on the export
    assert (backing / "beside.bin").stat().st_size == 3 * MiB


def test_bad_api_token_mount_still_serves(tmp_path):
    """A wrong purity_api_token: the gateway starts and serves quota scopes and writes (the
    figures are optional); the figures call fails, 502 naming the appliance."""
    with vendor_gateway("purestorage", tmp_path, options={
            "purity_api_token": "T-00000000-0000-0000-0000-000000000000"}) as (gw, emu):
        assert gw.request("GET", "/").status_code == 200
        qsid = new_qsid()
        gw.create_scope(qsid, limit_bytes=5 * MiB)
        (gw.make_vfolder(qsid) / "f").write_bytes(b"z" * 10_000)
        assert gw.describe(qsid)["limit_bytes"] == 5 * MiB
        assert appliance_requests(emu) == []
        b = backend_for(emu, purity_api_token="T-00000000-0000-0000-0000-000000000000")
        err = failing(b, usage)
        assert err.status == 502
        assert str(err).startswith(f"FlashBlade {emu.url}: HTTP 401")
        assert "invalid API token" in str(err)
        assert emu.state()["failed_logins"] == 1  # a refused login is not retried
        assert "T-00000000" not in gw.read_log()


# -- (2) the exact requests ---------------------------------------------------------------------


def test_volume_usage_requests_and_figures(emulator, tmp_path):
    """One login (api-token header), then GET file-systems?names=FS in its session
    (x-auth-token); capacity = provisioned, used = space.total_physical (du of the export).
    A second call keeps the session: no second login."""
    root = tmp_path / "volume"  # the emulator's file system
    (root / "f.bin").write_bytes(b"u" * 50_000)
    os.sync()
    first, second = run(backend_for(emulator), usage, usage)
    assert first == {"capacity_bytes": fb.PROVISIONED, "used_bytes": allocated_bytes(root)}
    assert second == first
    login, get1, get2, logout = appliance_requests(emulator)
    assert (login["method"], login["path"], login["query"], login["json"]) == (
        "POST", "/api/login", {}, None)
    assert login["headers"] == {"api-token": fb.API_TOKEN}
    token = get1["headers"]["x-auth-token"]
    for get in (get1, get2):
        assert (get["method"], get["path"], get["query"]) == (
            "GET", "/api/1.8/file-systems", {"names": fb.FS_NAME})
        assert get["headers"] == {"x-auth-token": token}
    assert (logout["method"], logout["path"], logout["headers"]) == (
        "POST", "/api/logout", {"x-auth-token": token})
    assert emulator.state()["logins"] == 1
    assert emulator.state()["sessions"] == 0  # logged out at aclose


def test_performance_requests_and_figures(emulator):
    """GET file-systems/performance?names=FS&protocol=NFS, mapped as the storage proxy maps
    it (reads_per_sec -> iops_read ... usec_per_write_op -> io_usec_write)."""
    (metric,) = run(backend_for(emulator), perf)
    p = fb.PERFORMANCE
    assert metric == {"iops_read": p["reads_per_sec"], "iops_write": p["writes_per_sec"],
                      "io_bytes_read": p["read_bytes_per_sec"],
                      "io_bytes_write": p["write_bytes_per_sec"],
                      "io_usec_read": p["usec_per_read_op"],
                      "io_usec_write": p["usec_per_write_op"]}
    (get,) = sent(emulator, "GET", "/performance")
    assert get["path"] == "/api/1.8/file-systems/performance"
    assert get["query"] == {"names": fb.FS_NAME, "protocol": "NFS"}
    assert set(get["headers"]) == {"x-auth-token"}


def test_api_version_option_is_the_path(emulator):
    (_,) = run(backend_for(emulator, purity_api_version="1.5"), usage)
    assert [r["path"] for r in sent(emulator, "GET", "file-systems")] == [
        "/api/1.5/file-systems"]


def test_credentials_never_logged_and_verify_off_warned(emulator, caplog):
    """Neither the API token nor the session token reaches our log, at DEBUG; turning TLS
    verification off (purity_ssl_verify = "false", as the storage proxy's sample) warns."""
    caplog.set_level(logging.DEBUG)
    run(backend_for(emulator, purity_ssl_verify="false"), usage, perf)
    token = sent(emulator, "GET", "file-systems")[0]["headers"]["x-auth-token"]
    # httpcore's own DEBUG trace prints response headers (the session token among them):
    # the daemon's logging must keep httpcore above DEBUG (reported; fusegw/logs.py's)
    ours = "\n".join(r.getMessage() for r in caplog.records
                     if not r.name.startswith("httpcore"))
    assert fb.API_TOKEN not in caplog.text
    assert token not in ours
    assert "TLS verification is off for FlashBlade" in caplog.text


# -- (3) faults ---------------------------------------------------------------------------------


def test_expired_token_logs_in_again_once(emulator):
    """The session expires between two calls: the 401 is answered by one new login and the
    request sent again, transparently; one session is left, the expired one not reused."""
    async def expire_then_usage(b: PureStorageBackend) -> dict[str, int]:
        emulator.fault("expire_token", 1, "GET")
        return await b.volume_usage()

    first, after = run(backend_for(emulator), usage, expire_then_usage)
    assert first == after
    steps = [(r["method"], r["path"]) for r in appliance_requests(emulator)]
    assert steps == [("POST", "/api/login"), ("GET", "/api/1.8/file-systems"),
                     ("GET", "/api/1.8/file-systems"),  # 401: expired
                     ("POST", "/api/login"), ("GET", "/api/1.8/file-systems"),
                     ("POST", "/api/logout")]
    gets = sent(emulator, "GET", "file-systems")
    assert gets[1]["headers"] == gets[0]["headers"] != gets[2]["headers"]
    assert emulator.state() | {"file_systems": None} == {
        "file_systems": None, "sessions": 0, "logins": 2, "failed_logins": 0,
        "expired_sessions": 1}


def test_token_refused_after_a_new_login_is_502_not_a_loop(emulator):
    emulator.fault("expire_token", 2, "GET")
    err = failing(backend_for(emulator), usage)
    assert err.status == 502
    assert "HTTP 401" in str(err) and "expired" in str(err)
    assert [(r["method"], r["path"]) for r in appliance_requests(emulator)] == [
        ("POST", "/api/login"), ("GET", "/api/1.8/file-systems"),
        ("POST", "/api/login"), ("GET", "/api/1.8/file-systems"),
        ("POST", "/api/logout")]
    (_,) = run(backend_for(emulator), usage)  # the fault cleared: served again


@pytest.mark.parametrize("path", ["/api/1.8/file-systems", "/api/login"])
def test_5xx_once_is_retried(emulator, path):
    emulator.fault("5xx", 1, path=path)
    (figures,) = run(backend_for(emulator), usage)
    assert figures["capacity_bytes"] == fb.PROVISIONED
    assert len([r for r in appliance_requests(emulator) if r["path"] == path]) == 2
    assert emulator.state()["sessions"] == 0


@pytest.mark.parametrize("path", ["/api/1.8/file-systems", "/api/login"])
def test_5xx_beyond_the_retries_is_502_then_served(emulator, path):
    """Four 503s (the first try and three retries): 502 naming the appliance and its
    message; after the fault clears the same call succeeds, one session in all."""
    emulator.fault("5xx", 4, path=path)
    b = backend_for(emulator)
    err = failing(b, usage)
    assert err.status == 502
    assert str(err) == f"FlashBlade {emulator.url}: HTTP 503: emulated failure"
    (figures,) = run(b, usage)
    assert figures["capacity_bytes"] == fb.PROVISIONED
    assert emulator.state()["sessions"] == 0


@pytest.mark.parametrize("kind", ["timeout", "drop"])
def test_timeout_or_drop_once_is_retried(emulator, kind):
    emulator.fault(kind, 1, "GET")
    (metric,) = run(backend_for(emulator, appliance_timeout=SMALL_TIMEOUT), perf)
    assert metric["iops_read"] == fb.PERFORMANCE["reads_per_sec"]
    assert len(sent(emulator, "GET", "/performance")) == 2


@pytest.mark.parametrize(("kind", "why"), [("timeout", "ReadTimeout"),
                                           ("drop", "RemoteProtocolError")])
def test_timeout_or_drop_every_time_is_502_unreachable(emulator, kind, why):
    emulator.fault(kind, 4, "GET")
    b = backend_for(emulator, appliance_timeout=SMALL_TIMEOUT)
    err = failing(b, perf)
    assert err.status == 502
    assert str(err).startswith(f"FlashBlade {emulator.url}: unreachable ({why}")
    (metric,) = run(b, perf)
    assert metric["iops_write"] == fb.PERFORMANCE["writes_per_sec"]
    assert emulator.state()["sessions"] == 0


def test_unreachable_endpoint_is_502():
    b = PureStorageBackend(Path("/nonexistent"), {
        **fb.gateway_options(f"http://127.0.0.1:{free_port()}"), "appliance_timeout": 1})
    err = failing(b, usage)
    assert err.status == 502
    assert "unreachable (ConnectError" in str(err)


def test_refused_input_is_4xx(emulator):
    """A file system the FlashBlade does not have is its 400, passed on with its message;
    an API version it does not serve, its 404."""
    err = failing(backend_for(emulator, purity_fs_name="FB-NOPE"), usage)
    assert err.status == 400
    assert str(err) == f"FlashBlade {emulator.url}: HTTP 400: File system does not exist."
    err = failing(backend_for(emulator, purity_api_version="9.9"), perf)
    assert err.status == 404
    assert "API version 9.9 is not supported" in str(err)


def test_figures_need_the_purity_options():
    b = PureStorageBackend(Path("/nonexistent"), {"purity_fs_name": "x"})
    with pytest.raises(BackendError) as excinfo:
        run(b, usage)
    assert "purity_endpoint, purity_api_token" in str(excinfo.value)
    assert excinfo.value.errno == errno.ENOTSUP


def test_bad_appliance_timeout_refused_at_start():
    b = PureStorageBackend(Path("/nonexistent"), {"appliance_timeout": "soon"})
    with pytest.raises(BackendError, match="appliance_timeout"):
        trio.run(b.check_volume)
    trio.run(PureStorageBackend(Path("/nonexistent"), {}).check_volume)


# -- RapidFile Toolkit: prm ---------------------------------------------------------------------


def make_tree(base: Path) -> Path:
    tree = base / "scope" / "ab" / "cd" / "vf"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_bytes(b"a" * 1000)
    (tree / "sub" / "b").write_bytes(b"b")
    os.symlink("/etc/passwd", tree / "link")
    return tree


def test_remove_tree_without_prm(tmp_path, monkeypatch):
    """No RapidFile Toolkit on PATH: the tree goes in a worker thread; gone already is done;
    a path outside the volume is refused."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert shutil.which("prm") is None
    tree = make_tree(tmp_path)
    b = PureStorageBackend(tmp_path, {})
    trio.run(b.remove_tree, tree)
    assert not tree.exists() and (tmp_path / "scope" / "ab" / "cd").is_dir()
    assert Path("/etc/passwd").exists()
    trio.run(b.remove_tree, tree)
    with pytest.raises(BackendError, match="not below the volume"):
        trio.run(b.remove_tree, tmp_path / ".." / "elsewhere")
    with pytest.raises(BackendError, match="not below the volume"):
        trio.run(b.remove_tree, tmp_path)


def test_remove_tree_with_prm(tmp_path, monkeypatch):
    """`prm` on PATH: it is called as `prm -rf PATH` (here a stand-in that records its
    arguments and removes with rm); its failure is a BackendError with its stderr."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "prm.calls"
    prm = bindir / "prm"
    prm.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$PRM_CALLS"\n'
                   'if [ -n "$PRM_FAIL" ]; then echo "prm: $PRM_FAIL" >&2; exit 3; fi\n'
                   'exec rm "$@"\n')
    prm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("PRM_CALLS", str(calls))
    tree = make_tree(tmp_path)
    b = PureStorageBackend(tmp_path, {})
    trio.run(b.remove_tree, tree)
    assert calls.read_text().splitlines() == [f"-rf {tree}"]
    assert not tree.exists()
    again = make_tree(tmp_path / "x")
    monkeypatch.setenv("PRM_FAIL", "cannot remove: Permission denied")
    with pytest.raises(BackendError, match="prm: cannot remove: Permission denied"):
        trio.run(b.remove_tree, again)
    assert again.exists()


def test_vfolder_deletion_uses_prm_where_it_is_installed(tmp_path):
    """With RapidFile Toolkit's `prm` on the gateway's PATH (here a stand-in that records its
    arguments and removes with rm), `folder/delete` removes the vfolder's tree with it, as
    the storage proxy does; the scope's usage comes back down as without it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "prm.calls"
    prm = bindir / "prm"
    prm.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$PRM_CALLS"\nexec rm "$@"\n')
    prm.chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "PRM_CALLS": str(calls)}
    with vendor_gateway("purestorage", tmp_path, env=env) as (gw, _):
        qsid = new_qsid()
        gw.create_scope(qsid, limit_bytes=64 * MiB)
        base = gw.describe(qsid)["used_bytes"]
        fid = uuid.uuid4().hex
        vf = gw.make_vfolder(qsid, fid)
        (vf / "sub").mkdir()
        (vf / "sub" / "f").write_bytes(b"z" * MiB)
        backing = gw.source / vf.relative_to(gw.mountpoint)
        r = gw.request("POST", "/folder/delete", {"volume": gw.volume, "vfid": f"{qsid}/{fid}"})
        assert r.status_code == 204, r.text
        assert calls.read_text().splitlines() == [f"-rf {backing}"]
        assert not backing.exists()
        assert gw.describe(qsid)["used_bytes"] <= base + 2 * 4096  # the fan-out may stay

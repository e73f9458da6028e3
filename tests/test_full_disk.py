"""A full backing disk never takes the mount down (issue 9, item 7).

The volume lives on a small real ext4 (an image file on a loop device, `mkfs.ext4 -m 0`, so
root has no reserved blocks either) under a root-only directory. It is filled through the
mount until ENOSPC; the ledger snapshot and the dirty marks then cannot be written. The mount
must keep serving, `GET /` must say what cannot be written, the gateway must start again on
the still-full disk (after SIGTERM and after kill -9), and once space is freed the state must
be written again and usage must equal `du -s -B1`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway, du_bytes, new_qsid, scope_hex, wait_for
from loopfs import make_loop_fs

MiB = 2**20
IMAGE_SIZE = "48M"
FAILURE_CYCLES = 4  # failed snapshot attempts (0.5 s apart) the mount is watched through


# -- a small ext4 on a loop device -------------------------------------------------------------


@contextlib.contextmanager
def small_ext4(workdir: Path) -> Iterator[Path]:
    """A fresh ext4 of IMAGE_SIZE without reserved blocks, torn down even on failure."""
    with make_loop_fs(workdir, "ext4", IMAGE_SIZE, "-F", "-m", "0", "-b", "4096") as mnt:
        yield mnt


@pytest.fixture
def gw(tmp_path: Path, make_gateway: Callable[..., Gateway]) -> Iterator[Gateway]:
    """A vfs gateway over <ext4>/private/vol (private 0700: no other user reaches the volume);
    stopped before the filesystem goes."""
    with small_ext4(tmp_path / "disk") as disk:
        private = disk / "private"
        private.mkdir(mode=0o700)
        volume = private / "vol"
        volume.mkdir(mode=0o755)
        gateway: Gateway = make_gateway(source=volume)
        try:
            yield gateway
        finally:
            gateway.stop()


# -- helpers -------------------------------------------------------------------------------------


def status(gw: Gateway) -> dict[str, Any]:
    r = gw.request("GET", "/")
    assert r.status_code == 200, r.text
    return dict(r.json())


def persist_error(gw: Gateway) -> dict[str, Any] | None:
    error = status(gw).get("persist_error")
    return dict(error) if error else None


def used_bytes_xattr(path: Path) -> int:
    out = subprocess.run(["getfattr", "--only-values", "-n", "user.fusegw.used_bytes",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return int(out)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(directory: Path) -> int:
    """Write through the mount until the backing disk refuses (ENOSPC) even after a sync
    (writeback gives back what ext4 reserved for delayed allocation); bytes written."""
    total = 0
    while True:
        written = _fill_pass(directory)
        os.sync()
        total += written
        if not written:
            return total


def _fill_pass(directory: Path) -> int:
    total = 0
    for n, chunk in enumerate((MiB, 64 * 1024, 4096)):
        fd = os.open(directory / f"fill{n}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while True:
                total += os.write(fd, b"\xa5" * chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
    return total


def try_small_file(directory: Path) -> None:
    """A new small file on the full disk: refused with ENOSPC, or stored; never anything else."""
    name = directory / f"small-{uuid.uuid4().hex[:8]}"
    try:
        name.write_bytes(b"x" * 100)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
        with contextlib.suppress(FileNotFoundError):
            name.unlink()


def log_lines(gw: Gateway, needle: str) -> list[str]:
    return [line for line in gw.read_log().splitlines() if needle in line]


def wait_quiet_and_exact(gw: Gateway, qsid: str) -> None:
    """Poll until the ledger's used_bytes equals du -s -B1 of the scope's backing directory."""
    backing = gw.source / scope_hex(qsid)
    wait_for(lambda: gw.describe(qsid)["used_bytes"] == du_bytes(backing), 20,
             "used_bytes == du -s -B1")


def serves(gw: Gateway, keep: Path, content: bytes, vfolder: Path) -> None:
    """The mount answers: stat, read, the usage attribute, a small create; the daemon lives."""
    assert gw.alive()
    assert keep.stat().st_size == len(content)
    assert keep.read_bytes() == content
    assert used_bytes_xattr(vfolder) > 30 * MiB
    try_small_file(vfolder)


# -- tests ---------------------------------------------------------------------------------------


def test_full_backing_disk_keeps_mount_serving_restarts_and_recovers(gw: Gateway) -> None:
    qsid = new_qsid()
    gw.create_scope(qsid)  # no limit: only the disk stops it
    vfolder = gw.make_vfolder(qsid)
    keep, content = vfolder / "keep", os.urandom(256 * 1024)
    keep.write_bytes(content)

    written = fill(vfolder)
    assert written > 30 * MiB
    assert free_bytes(gw.source) < MiB

    # the snapshot cannot be written: reported, retried, the mount keeps serving
    error = wait_for(lambda: persist_error(gw), 20, "GET / reports the persist error")
    assert error["errno"] == errno.ENOSPC and error["code"] == "ENOSPC", error
    assert status(gw)["state"] == "degraded"
    first = error["failures"]

    def watched() -> bool:
        serves(gw, keep, content, vfolder)
        current = persist_error(gw)
        assert current is not None, "the disk is still full"
        return bool(current["failures"] >= first + FAILURE_CYCLES)

    wait_for(watched, 20, f"{FAILURE_CYCLES} more failed snapshot attempts")
    assert len(log_lines(gw, "state write failing")) == len(error["files"]), gw.read_log()
    assert "Traceback" not in gw.read_log()

    # a clean stop on the full disk, then a start on it
    gw.stop()
    assert log_lines(gw, "unmounted volume="), gw.read_log()
    assert free_bytes(gw.source) < MiB
    gw.start()
    serves(gw, keep, content, vfolder)

    # kill -9 on the full disk, then a start on it: the scope is rebuilt
    gw.kill9()
    assert free_bytes(gw.source) < MiB
    gw.start()
    wait_for(lambda: not status(gw)["rebuilding"], 30, "rebuild done")
    assert qsid in {r["qsid"] for r in status(gw)["rebuilds"]}
    serves(gw, keep, content, vfolder)
    wait_for(lambda: persist_error(gw), 20, "the persist error again after the restart")

    # free space through the mount: the state is written again, the figures are exact
    for name in ("fill0", "fill1", "fill2"):
        (vfolder / name).unlink()
    wait_for(lambda: persist_error(gw) is None, 20, "the persist error clears")
    assert status(gw)["state"] == "ok"
    assert log_lines(gw, "state write recovered"), gw.read_log()
    wait_quiet_and_exact(gw, qsid)
    assert used_bytes_xattr(vfolder) == du_bytes(gw.source / scope_hex(qsid))
    assert keep.read_bytes() == content

    # the snapshot written after recovery is trusted by the next start
    gw.stop()
    gw.start()
    assert status(gw)["rebuilds"] == []
    wait_quiet_and_exact(gw, qsid)


def test_unwritable_dirty_mark_drops_the_snapshot_so_a_restart_rescans(gw: Gateway) -> None:
    """A scope changed while dirty.json cannot be written: ledger.json goes (durably) before
    the change, so after kill -9 the next start trusts no stale figure and rescans."""
    full, clean = new_qsid(), new_qsid()
    gw.create_scope(full)
    gw.create_scope(clean)
    clean_vf = gw.make_vfolder(clean)
    target = clean_vf / "data"
    target.write_bytes(os.urandom(1 * MiB))
    state = gw.source / ".fusegw"

    def marks() -> list[str]:
        try:
            return list(json.loads((state / "dirty.json").read_text())["dirty"])
        except (FileNotFoundError, ValueError):
            return ["?"]

    wait_for(lambda: marks() == [], 20, "every scope snapshotted and clean")
    fill(gw.make_vfolder(full))
    wait_for(lambda: persist_error(gw), 20, "GET / reports the persist error")
    assert (state / "ledger.json").exists()

    # an overwrite inside allocated blocks needs no space: it is served, and the clean
    # scope, whose dirty mark cannot be written, takes the snapshot with it
    fd = os.open(target, os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"\x00" * 4096, 0) == 4096
    finally:
        os.close(fd)
    assert not (state / "ledger.json").exists()
    error = wait_for(lambda: persist_error(gw), 20, "the persist error")
    assert error["snapshot_dropped"] is True, error
    assert gw.alive()

    gw.kill9()
    gw.start()
    wait_for(lambda: not status(gw)["rebuilding"], 30, "rebuild done")
    rebuilt = {r["qsid"] for r in status(gw)["rebuilds"]}
    assert {full, clean} <= rebuilt, rebuilt
    assert gw.describe(clean)["used_bytes"] == du_bytes(gw.source / scope_hex(clean))


def test_scope_changes_on_a_full_disk_fail_cleanly(gw: Gateway) -> None:
    """Registry writes that cannot be done answer 507 with the errno and change nothing, in
    memory or on disk; after space is freed the same requests succeed."""
    qsid, other, adopted = new_qsid(), new_qsid(), new_qsid()
    gw.create_scope(qsid, limit_bytes=100 * MiB)
    (gw.source / scope_hex(adopted)).mkdir()  # left by the storage proxy: adopted on create
    fill(gw.make_vfolder(qsid))
    registry = (gw.source / ".fusegw" / "registry.json").read_bytes()

    r = gw.request("POST", "/quota-scope", {"volume": gw.volume, "qsid": other, "options": None})
    assert r.status_code == 507, r.text
    assert "No space left on device" in r.json()["detail"]
    r = gw.request("GET", "/quota-scope", {"volume": gw.volume, "qsid": other})
    assert r.status_code == 404, r.text
    assert not (gw.source / scope_hex(other)).exists()

    r = gw.request("POST", "/quota-scope",
                   {"volume": gw.volume, "qsid": adopted, "options": {"limit_bytes": MiB}})
    assert r.status_code == 507, r.text
    r = gw.request("GET", "/quota-scope", {"volume": gw.volume, "qsid": adopted})
    assert r.status_code == 404, r.text

    r = gw.request("PATCH", "/quota-scope",
                   {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": 200 * MiB}})
    assert r.status_code == 507, r.text
    assert gw.describe(qsid)["limit_bytes"] == 100 * MiB
    assert (gw.source / ".fusegw" / "registry.json").read_bytes() == registry
    assert gw.alive()

    for name in ("fill0", "fill1", "fill2"):
        for vf in (gw.source / scope_hex(qsid)).glob(f"*/*/*/{name}"):
            (gw.mountpoint / vf.relative_to(gw.source)).unlink()
    gw.create_scope(other)
    gw.create_scope(adopted, limit_bytes=MiB)
    r = gw.request("PATCH", "/quota-scope",
                   {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": 200 * MiB}})
    assert r.status_code == 204, r.text
    gw.stop()
    gw.start()
    assert gw.describe(qsid)["limit_bytes"] == 200 * MiB
    assert gw.describe(other)["limit_bytes"] is None
    assert gw.describe(adopted)["limit_bytes"] == MiB

"""`fusegw migrate` moves a flat v2 volume to layout v3, after which the gateway serves it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import du_bytes, new_qsid, scope_hex, wait_for


def make_v2(volume: Path, count: int) -> dict[str, bytes]:
    """A flat v2 volume (version.txt says 2) with `count` vfolders holding a file each."""
    volume.mkdir()
    (volume / "version.txt").write_text("2\n")
    contents = {}
    for _ in range(count):
        fid = uuid.uuid4().hex
        path = volume / fid[0:2] / fid[2:4] / fid[4:]
        path.mkdir(parents=True)
        data = fid.encode() * 100
        (path / "data.bin").write_bytes(data)
        contents[fid] = data
    return contents


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusegw", "migrate", *args],
                          capture_output=True, text=True, timeout=60)


def tree(volume: Path) -> list[str]:
    return sorted(str(p.relative_to(volume)) for p in volume.rglob("*"))


def test_migrate_moves_vfolders_under_their_scopes_and_the_gateway_serves_it(make_gateway,
                                                                              tmp_path):
    """Mapped vfolders go to their scope, the rest to the default; data intact; version 3;
    the gateway then mounts the volume and its figures equal du."""
    volume = tmp_path / "vol"
    contents = make_v2(volume, 4)
    fids = sorted(contents)
    mapped, default = new_qsid("project"), new_qsid("user")
    (tmp_path / "map").write_text(f"# fid qsid\n{fids[0]} {mapped}\n{fids[1]} {mapped}\n")
    proc = migrate(str(volume), "--map", str(tmp_path / "map"), "--default-scope", default)
    assert proc.returncode == 0, proc.stderr
    assert (volume / "version.txt").read_text().strip() == "3"
    for fid, data in contents.items():
        qsid = mapped if fid in fids[:2] else default
        moved = volume / scope_hex(qsid) / fid[0:2] / fid[2:4] / fid[4:] / "data.bin"
        assert hashlib.sha256(moved.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert not (volume / fid[0:2]).exists() or not (volume / fid[0:2] / fid[2:4]).exists()
    gw = make_gateway(source=volume)
    wait_for(lambda: not gw.request("GET", "/").json()["rebuilding"], what="first scan")
    for qsid in (mapped, default):
        figures = gw.describe(qsid)
        assert figures["used_bytes"] == du_bytes(volume / scope_hex(qsid))


def test_unmapped_vfolders_refuse_the_migration_and_nothing_moves(tmp_path):
    """Without a scope for every vfolder, nothing is moved and the exit status says usage."""
    volume = tmp_path / "vol"
    contents = make_v2(volume, 3)
    first = sorted(contents)[0]
    (tmp_path / "map").write_text(f"{first} {new_qsid()}\n")
    before = tree(volume)
    proc = migrate(str(volume), "--map", str(tmp_path / "map"))
    assert proc.returncode == 2
    assert "2 vfolders have no quota scope" in proc.stderr
    assert tree(volume) == before


def test_dry_run_moves_nothing(tmp_path):
    """--dry-run prints the plan and leaves the volume as it was."""
    volume = tmp_path / "vol"
    make_v2(volume, 2)
    before = tree(volume)
    proc = migrate(str(volume), "--default-scope", new_qsid(), "--dry-run")
    assert proc.returncode == 0
    assert "2 vfolders would move" in proc.stdout
    assert tree(volume) == before


def test_interrupted_migration_completes_when_run_again(tmp_path):
    """A volume where some vfolders already moved (an interrupted run) finishes cleanly."""
    volume = tmp_path / "vol"
    contents = make_v2(volume, 3)
    qsid = new_qsid()
    fid = sorted(contents)[0]
    target = volume / scope_hex(qsid) / fid[0:2] / fid[2:4]
    target.mkdir(parents=True)
    (volume / fid[0:2] / fid[2:4] / fid[4:]).rename(target / fid[4:])
    proc = migrate(str(volume), "--default-scope", qsid)
    assert proc.returncode == 0, proc.stderr
    for f in contents:
        assert (volume / scope_hex(qsid) / f[0:2] / f[2:4] / f[4:] / "data.bin").exists()
    assert (volume / "version.txt").read_text().strip() == "3"

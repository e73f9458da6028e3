"""What pyfuse3 leaves out, through a real mount: `df` inside a scope reports the scope, and
`fallocate(1)` works, admitted and charged like a write (the pyfuse3 patches 0001 and 0002)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import Gateway, du_bytes, new_qsid, scope_hex, wait_for

MiB = 2**20
GiB = 2**30


def df(path: Path, *fields: str) -> list[int]:
    """df's figures for `path`: size/used/avail in bytes, itotal/iused/iavail in inodes."""
    argv = ["df", "-B1", f"--output={','.join(fields)}", str(path)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return [int(v) for v in out.splitlines()[1].split()]


def used(gw: Gateway, qsid: str) -> int:
    return int(gw.describe(qsid)["used_bytes"])


def quiet_figure(gw: Gateway, qsid: str, path: Path) -> int:
    """The scope's used bytes once the ledger agrees with du (written back and settled)."""
    def agreed() -> int | None:
        os.sync()
        figure = used(gw, qsid)
        return figure if figure == du_bytes(path) else None
    return int(wait_for(agreed, what="ledger == du"))


def test_df_inside_a_vfolder_is_the_scope(gateway: Gateway) -> None:
    """df -B1 on a vfolder, a file in it and the scope directory: size = the limit, used =
    the usage, available = what is left; its inode columns likewise."""
    qsid = new_qsid()
    limit = 96 * MiB
    scope_dir = gateway.create_scope(qsid, limit_bytes=limit, limit_inodes=500)
    vf = gateway.make_vfolder(qsid)
    (vf / "data").write_bytes(b"d" * (5 * MiB))
    figure = quiet_figure(gateway, qsid, gateway.source / scope_dir.name)
    for path in (vf, vf / "data", scope_dir):
        assert df(path, "size", "used", "avail") == [limit, figure, limit - figure]
    inodes = int(gateway.describe(qsid)["used_inodes"])
    assert df(vf, "itotal", "iused", "iavail") == [500, inodes, 500 - inodes]
    (vf / "more").write_bytes(b"m" * MiB)  # df follows the ledger at once
    assert df(vf, "used")[0] == used(gateway, qsid) > figure


def test_df_without_a_limit_is_the_volume(gateway: Gateway) -> None:
    qsid = new_qsid()
    gateway.create_scope(qsid)
    vf = gateway.make_vfolder(qsid)
    disk = os.statvfs(gateway.source)
    assert df(vf, "size")[0] == disk.f_blocks * disk.f_frsize
    assert df(gateway.mountpoint, "size")[0] == disk.f_blocks * disk.f_frsize


def test_fallocate_past_the_room_left_fails_and_changes_nothing(gateway: Gateway) -> None:
    """fallocate -l 1G in a scope with 512 MiB left: EDQUOT, the file stays empty, the usage
    is what it was."""
    qsid = new_qsid()
    gateway.create_scope(qsid, limit_bytes=GiB)
    vf = gateway.make_vfolder(qsid)
    target = vf / "big"
    target.touch()
    filler = vf / "filler"
    subprocess.run(["fallocate", "-l", str(GiB // 2 - 64 * 1024), str(filler)], check=True)
    before = quiet_figure(gateway, qsid, gateway.source / scope_hex(qsid))
    assert GiB - before <= GiB // 2 + 64 * 1024  # about 512 MiB left
    proc = subprocess.run(["fallocate", "-l", "1G", str(target)], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "Disk quota exceeded" in proc.stderr, proc.stderr
    assert target.stat().st_size == 0 and target.stat().st_blocks == 0
    assert used(gateway, qsid) == before


def test_fallocate_within_the_limit_allocates_and_is_charged(gateway: Gateway) -> None:
    """Allocate (size grows), allocate keeping the size, punch a hole: each is charged as the
    backing filesystem allocated it, and du -s -B1 equals the vfolder's xattr figure."""
    qsid = new_qsid()
    scope_dir = gateway.create_scope(qsid, limit_bytes=GiB)
    vf = gateway.make_vfolder(qsid)
    f = vf / "prealloc"
    backing_scope = gateway.source / scope_dir.name
    start = quiet_figure(gateway, qsid, backing_scope)
    subprocess.run(["fallocate", "-l", "100M", str(f)], check=True)
    assert f.stat().st_size == 100 * MiB
    assert quiet_figure(gateway, qsid, backing_scope) - start >= 100 * MiB
    subprocess.run(["fallocate", "-n", "-o", "100M", "-l", "20M", str(f)], check=True)
    assert f.stat().st_size == 100 * MiB  # --keep-size
    kept = quiet_figure(gateway, qsid, backing_scope)
    assert kept - start >= 120 * MiB
    subprocess.run(["fallocate", "-p", "-o", "0", "-l", "50M", str(f)], check=True)
    punched = quiet_figure(gateway, qsid, backing_scope)
    assert kept - punched >= 50 * MiB - 64 * 1024
    vf_backing = gateway.source / vf.relative_to(gateway.mountpoint)
    assert int(os.getxattr(vf, "user.fusegw.vfolder.used_bytes")) == du_bytes(vf_backing)

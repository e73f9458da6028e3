"""fusegw's pyfuse3 patch series (third_party/pyfuse3), on real FUSE mounts of tests/patchfs.py.

Each test mounts patchfs in a subprocess; teardown unmounts it and stops the process, also when
the test fails.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
from conftest import DEADLINE, is_mounted, wait_for

from fusegw.errors import VolumeRefused
from fusegw.fs import pyfuse3_check

PATCHFS = Path(__file__).with_name("patchfs.py")
CONNECTIONS = Path("/sys/fs/fuse/connections")
MiB = 1 << 20


@dataclass
class PatchFS:
    mountpoint: Path
    events_file: Path
    proc: subprocess.Popen[str]

    def events(self, op: str | None = None) -> list[dict[str, Any]]:
        lines = self.events_file.read_text().splitlines()
        return [e for e in map(json.loads, lines) if op is None or e["op"] == op]

    def unmount(self) -> int:
        """fusermount3 -u, then the daemon's exit code (it must exit by itself)."""
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=True,
                       capture_output=True, timeout=DEADLINE)
        return self.proc.wait(timeout=DEADLINE)

    def stop(self) -> None:
        """Whatever state it is in: unmounted, process gone."""
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                           capture_output=True)
            if is_mounted(self.mountpoint):
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def mount_patchfs(tmp_path: Path) -> Iterator[Callable[..., PatchFS]]:
    started: list[PatchFS] = []

    def mount(*args: str) -> PatchFS:
        mountpoint = tmp_path / f"mnt{len(started)}"
        mountpoint.mkdir()
        events = tmp_path / f"events{len(started)}.jsonl"
        events.touch()
        log = open(tmp_path / f"patchfs{len(started)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(PATCHFS), str(mountpoint), "--events", str(events), *args],
            stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()
        fs = PatchFS(mountpoint, events, proc)
        started.append(fs)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"patchfs exited with {proc.returncode}: "
                                     + (tmp_path / f"patchfs{len(started) - 1}.log").read_text())
            return is_mounted(mountpoint)

        wait_for(up, what="patchfs mounted")
        return fs

    yield mount
    for fs in started:
        fs.stop()


def test_installed_pyfuse3_is_the_patched_build() -> None:
    assert "+fusegw." in importlib.metadata.version("pyfuse3")
    for name in ("statfs_inode", "fallocate", "max_background", "congestion_threshold"):
        assert hasattr(pyfuse3.Operations, name), name
    pyfuse3_check.require_patched()


def test_require_patched_refuses_an_unpatched_pyfuse3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(pyfuse3.Operations, "statfs_inode")
    with pytest.raises(VolumeRefused, match=r"pyfuse3 lacks fusegw's patches .*make install"):
        pyfuse3_check.require_patched()


def test_statfs_inode_answers_per_directory(mount_patchfs: Callable[..., PatchFS]) -> None:
    fs = mount_patchfs("--statfs", "inode")
    root, sub = os.statvfs(fs.mountpoint), os.statvfs(fs.mountpoint / "sub")
    assert (root.f_blocks, root.f_bfree) == (1000, 100)
    assert (sub.f_blocks, sub.f_bfree) == (2000, 200)
    with open(fs.mountpoint / "sub" / "f", "w") as f:
        assert os.fstatvfs(f.fileno()).f_blocks == 1000  # the file's own inode, not sub's
    inodes = [e["inode"] for e in fs.events("statfs_inode")]
    assert inodes[:2] == [pyfuse3.ROOT_INODE, pyfuse3.ROOT_INODE + 1]
    assert len(inodes) == 3 and inodes[2] not in inodes[:2]
    assert fs.unmount() == 0


def test_statfs_only_filesystem_still_answers(mount_patchfs: Callable[..., PatchFS]) -> None:
    fs = mount_patchfs("--statfs", "plain")
    assert os.statvfs(fs.mountpoint).f_blocks == 3000
    assert os.statvfs(fs.mountpoint / "sub").f_blocks == 3000
    assert len(fs.events("statfs")) == 2


def test_fallocate_reaches_the_filesystem(mount_patchfs: Callable[..., PatchFS]) -> None:
    fs = mount_patchfs()
    path = fs.mountpoint / "file"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, MiB)
        assert os.fstat(fd).st_size == MiB
    finally:
        os.close(fd)
    subprocess.run(["fallocate", "-l", str(2 * MiB), str(path)], check=True)
    assert path.stat().st_size == 2 * MiB
    subprocess.run(["fallocate", "--keep-size", "-o", str(2 * MiB), "-l", str(4 * MiB),
                    str(path)], check=True)
    assert path.stat().st_size == 2 * MiB  # FALLOC_FL_KEEP_SIZE
    # A mode the filesystem refuses: its FUSEError's errno (EOPNOTSUPP) reaches the caller,
    # which util-linux words as "keep size mode is unsupported" for a punch hole.
    punch = subprocess.run(["fallocate", "--punch-hole", "-o", "0", "-l", "4096", str(path)],
                           capture_output=True, text=True)
    assert punch.returncode != 0 and "unsupported" in punch.stderr, punch
    calls = [(e["mode"], e["offset"], e["length"]) for e in fs.events("fallocate")]
    assert calls == [(0, 0, MiB), (0, 0, 2 * MiB), (1, 2 * MiB, 4 * MiB), (3, 0, 4096)]


def test_fallocate_unimplemented_is_eopnotsupp(mount_patchfs: Callable[..., PatchFS]) -> None:
    fs = mount_patchfs("--no-fallocate")
    path = fs.mountpoint / "file"
    for _ in range(2):  # the second one the kernel answers by itself
        r = subprocess.run(["fallocate", "-l", "1M", str(path)], capture_output=True, text=True)
        assert r.returncode != 0, r
        assert "Operation not supported" in r.stderr, r.stderr
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, MiB)  # glibc falls back to writing, as before the patches
        assert os.fstat(fd).st_size == MiB
    finally:
        os.close(fd)
    assert fs.events("fallocate") == []


def test_concurrent_awaiting_handlers_then_clean_exit(
        mount_patchfs: Callable[..., PatchFS]) -> None:
    """32 readers at once, each read awaiting (trio.sleep or a worker thread): all complete,
    they overlap, and unmounting ends the (non-blocking) session loop with exit code 0."""
    fs = mount_patchfs()
    n = 32
    barrier = threading.Barrier(n, timeout=DEADLINE)

    def read(i: int) -> bytes:
        path = fs.mountpoint / ("slow-sleep" if i % 2 else "slow-thread")
        with open(path, "rb", buffering=0) as f:
            barrier.wait()
            return f.read(4096)

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(read, range(n), timeout=DEADLINE))
    assert results == [b"x" * 4096] * n
    reads = fs.events("read")
    assert len(reads) == n
    assert {e["slow"] for e in reads} == {"sleep", "thread"}
    # Serialised, the reads would take 32 * 0.2 s; the daemon saw most of them at once.
    assert max(e["concurrent"] for e in reads) >= n // 2, reads
    assert fs.unmount() == 0
    assert not is_mounted(fs.mountpoint)


def fuse_connection(mountpoint: Path) -> Path:
    if not CONNECTIONS.is_dir():
        pytest.skip("the kernel has no /sys/fs/fuse/connections (no fusectl)")
    if not is_mounted(CONNECTIONS):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(CONNECTIONS)], check=True)
    return CONNECTIONS / str(os.minor(os.stat(mountpoint).st_dev))


@pytest.mark.parametrize(("args", "expected"), [((), "12"), (("--max-background", "64"), "64")])
def test_max_background_reaches_the_kernel(mount_patchfs: Callable[..., PatchFS],
                                           args: tuple[str, ...], expected: str) -> None:
    fs = mount_patchfs(*args)
    conn = fuse_connection(fs.mountpoint)
    assert (conn / "max_background").read_text().strip() == expected
    if expected == "64":  # libfuse's default congestion threshold: 3/4 of max_background
        assert (conn / "congestion_threshold").read_text().strip() == "48"

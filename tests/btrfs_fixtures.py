"""A real, throwaway btrfs filesystem for tests: sparse image -> loop device -> mount.

`make_btrfs(workdir)` is a context manager usable from fixtures of any scope (module-scoped
ones included: pass a directory from `tmp_path_factory`); `btrfs_volume` is a ready-made
function-scoped fixture. Import both into a test module or conftest:

    from btrfs_fixtures import btrfs_volume, make_btrfs  # noqa: F401

(the tests directory is on sys.path, as for `from conftest import ...`).

The image is sparse, so 512 MiB costs only what is written. Teardown always runs, also when the
test failed or left files open: unmount (lazily if busy), detach the loop device, delete the
image. Needs root, btrfs-progs and loop devices.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

IMAGE_SIZE = "512M"


def _run(*argv: str) -> str:
    """Run a setup command; fail loudly with its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@contextlib.contextmanager
def make_btrfs(workdir: Path, size: str = IMAGE_SIZE) -> Iterator[Path]:
    """Yield the mount point of a fresh, empty btrfs (quotas not enabled) under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / "btrfs.img"
    mountpoint = workdir / "mnt"
    mountpoint.mkdir()
    loopdev: str | None = None
    try:
        _run("truncate", "-s", size, str(image))
        _run("mkfs.btrfs", "-q", str(image))
        loopdev = _run("losetup", "--find", "--show", str(image)).strip()
        _run("mount", "-t", "btrfs", loopdev, str(mountpoint))
        yield mountpoint
    finally:
        if _is_mounted(mountpoint):
            umount = subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
            if umount.returncode != 0:
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True,
                               check=False)
        if loopdev:
            subprocess.run(["losetup", "-d", loopdev], capture_output=True, check=False)
        image.unlink(missing_ok=True)


@pytest.fixture
def btrfs_volume(tmp_path: Path) -> Iterator[Path]:
    """A fresh btrfs mounted for one test."""
    with make_btrfs(tmp_path / "btrfs") as mountpoint:
        yield mountpoint

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
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopfs import make_loop_fs

IMAGE_SIZE = "512M"


@contextlib.contextmanager
def make_btrfs(workdir: Path, size: str = IMAGE_SIZE) -> Iterator[Path]:
    """Yield the mount point of a fresh, empty btrfs (quotas not enabled) under `workdir`."""
    with make_loop_fs(workdir, "btrfs", size) as mountpoint:
        yield mountpoint


@pytest.fixture
def btrfs_volume(tmp_path: Path) -> Iterator[Path]:
    """A fresh btrfs mounted for one test."""
    with make_btrfs(tmp_path / "btrfs") as mountpoint:
        yield mountpoint

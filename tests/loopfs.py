"""Real, throwaway filesystems for tests: sparse image -> loop device -> mount.

`make_loop_fs(workdir, "ext4", "48M", "-m", "0")` is a context manager usable from fixtures of
any scope. The image is sparse, so its size costs only what is written. Teardown always runs,
also when the test failed or left files open: unmount (lazily if busy), detach the loop device,
delete the image. Needs root and loop devices.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


def run(*argv: str) -> str:
    """Run a setup command; fail loudly with its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@contextlib.contextmanager
def make_loop_fs(workdir: Path, fstype: str, size: str, *mkfs_args: str) -> Iterator[Path]:
    """Yield the mount point of a fresh, empty `fstype` of `size` under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / f"{fstype}.img"
    mountpoint = workdir / "mnt"
    mountpoint.mkdir()
    loopdev: str | None = None
    try:
        run("truncate", "-s", size, str(image))
        run(f"mkfs.{fstype}", "-q", *mkfs_args, str(image))
        loopdev = run("losetup", "--find", "--show", str(image)).strip()
        run("mount", "-t", fstype, loopdev, str(mountpoint))
        yield mountpoint
    finally:
        if is_mounted(mountpoint):
            umount = subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
            if umount.returncode != 0:
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True,
                               check=False)
        if loopdev:
            subprocess.run(["losetup", "-d", loopdev], capture_output=True, check=False)
        image.unlink(missing_ok=True)

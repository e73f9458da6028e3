"""The mount points mountd looks after: is something mounted there, does it answer, clear it.

A stat of a FUSE mount whose daemon hangs (SIGSTOP, a deadlock) blocks in the kernel and no
signal frees the thread, so every probe runs in a worker thread that the caller abandons at
its deadline; the thread returns once the daemon is killed (the kernel then fails the pending
request with ENOTCONN).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import psutil
import trio

log = logging.getLogger("fusegw.mountd")

UNMOUNT_TIMEOUT = 10.0
PROBE_THREADS = 16
_limiter: trio.CapacityLimiter | None = None


def _probe_limiter() -> trio.CapacityLimiter:
    """Probe threads have a limit of their own: threads stuck on a hung mount (until its
    daemon dies; forever if it cannot) never take the ones mountd's own work needs, such as
    the watchdog's sd_notify."""
    global _limiter
    if _limiter is None:
        _limiter = trio.CapacityLimiter(PROBE_THREADS)
    return _limiter


def mount_types(path: Path) -> list[str]:
    """The filesystem types mounted at `path` (several if stacked), from the mount table."""
    target = os.path.abspath(path)
    return [p.fstype for p in psutil.disk_partitions(all=True) if p.mountpoint == target]


def is_mounted(path: Path) -> bool:
    return bool(mount_types(path))


def _probe(path: Path) -> None:
    """A stat and a statfs of the mount: the stat may be answered from the kernel's attribute
    cache, the statfs always reaches the daemon, so a gateway that cannot answer fails it."""
    os.stat(path)
    os.statvfs(path)


async def probe(path: Path, timeout: float) -> str | None:
    """None if the mount answers within `timeout`; else why not (one line)."""
    with trio.move_on_after(timeout):
        try:
            await trio.to_thread.run_sync(_probe, path, abandon_on_cancel=True,
                                          limiter=_probe_limiter())
        except OSError as e:
            return f"stat of {path} failed: {os.strerror(e.errno or errno.EIO)}"
        return None
    return f"stat of {path} did not answer within {timeout:g}s"


DEAD = (errno.ENOTCONN, errno.ECONNABORTED)


async def is_dead_fuse_mount(path: Path, timeout: float) -> bool:
    """A FUSE mount at `path` whose daemon is gone: its statfs fails with ENOTCONN (a stat
    may still be answered from the attributes the kernel cached; a statfs never is)."""
    if not any(t == "fuse" or t.startswith("fuse.") for t in mount_types(path)):
        return False
    with trio.move_on_after(timeout):
        try:
            await trio.to_thread.run_sync(os.statvfs, path, abandon_on_cancel=True,
                                          limiter=_probe_limiter())
        except OSError as e:
            return e.errno in DEAD
    return False  # a live daemon that does not answer is not ours to unmount here


async def clear_if_dead(path: Path, timeout: float) -> bool:
    """Lazily unmount a dead FUSE mount at `path`; True if there was one."""
    if not await is_dead_fuse_mount(path, timeout):
        return False
    log.info("clearing dead mount path=%s", path)
    await lazy_unmount(path)
    return True


async def lazy_unmount(path: Path) -> bool:
    """Detach whatever is mounted at `path` (a dead gateway's mount): fusermount3 -u -z, else
    umount -l. True once nothing is mounted there."""
    for _ in range(4):  # stacked mounts come off one at a time
        if not is_mounted(path):
            return True
        for argv in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
            with trio.move_on_after(UNMOUNT_TIMEOUT):
                result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                                check=False)
                if result.returncode == 0:
                    break
                log.debug("unmount failed argv=%s error=%s", argv[0],
                          result.stderr.decode(errors="replace").strip())
    mounted = is_mounted(path)
    if mounted:
        log.error("cannot unmount path=%s", path)
    return not mounted

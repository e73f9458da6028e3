"""Requests served concurrently, through a real mount: what a waiting syscall does to the
others, and reads whose range the backing page cache holds in part.

The disk of these machines answers a cold read in ~40 µs, so by default the gateway serves it
inline (`fusegw/fs/offload.py`); these tests mount with `io_inline_max_us=0`, which sends every
syscall that may wait to the worker threads, as a slow disk would."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from conftest import Gateway, new_qsid, wait_for

MiB = 2**20
THREADED = ["-o", "io_inline_max_us=0,io_threads=4"]


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(256)) * (n // 256)


def drop_backing_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_reads_partly_cached_on_the_backing_side_are_whole(make_gateway) -> None:  # type: ignore[no-untyped-def]
    """A file whose backing pages are cached in patches (every other 256 KiB): each 1 MiB
    READ is answered in part from the cache (RWF_NOWAIT) and the rest from a worker thread
    into the same buffer; the bytes read through the mount are the file's."""
    gw: Gateway = make_gateway(extra=THREADED)
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=64 * MiB)
    vf = gw.make_vfolder(qsid)
    data = pattern(8 * MiB, 7)
    (vf / "f").write_bytes(data)
    backing = gw.source / (vf / "f").relative_to(gw.mountpoint)
    drop_backing_cache(backing)
    with open(backing, "rb") as f:  # cache patches of it, beside the gateway
        for off in range(0, len(data), 512 * 1024):
            f.seek(off)
            f.read(256 * 1024)
    assert (vf / "f").read_bytes() == data
    calls = gw.request("GET", "/").json()["syscalls"]
    assert calls["in_threads"] > 0, calls


def test_a_read_stuck_in_a_worker_holds_up_nothing(make_gateway) -> None:  # type: ignore[no-untyped-def]
    """A read whose backing file cannot answer (it lies on a second gateway, bind-mounted
    into the first's vfolder, and that gateway is stopped with SIGSTOP) waits in a worker
    thread, while stats, reads and getxattrs of other files of the mount are answered; once
    the second gateway goes on, the stuck read returns the file's bytes."""
    gw: Gateway = make_gateway(extra=THREADED)
    other: Gateway = make_gateway(name="other")
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=64 * MiB)
    vf = gw.make_vfolder(qsid)
    (vf / "here").write_bytes(b"h" * 4096)
    oq = new_qsid()
    other.create_scope(oq)
    ovf = other.make_vfolder(oq)
    data = pattern(MiB, 3)
    (ovf / "there").write_bytes(data)
    target = gw.source / (vf / "remote").relative_to(gw.mountpoint)
    target.mkdir()
    subprocess.run(["mount", "--bind", str(ovf), str(target)], check=True)
    result: list[bytes] = []
    stuck = open(vf / "remote" / "there", "rb")  # noqa: SIM115 (closed below)
    reader = threading.Thread(target=lambda: result.append(stuck.read()), daemon=True)
    assert other.pid is not None
    try:
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
        os.kill(other.pid, signal.SIGSTOP)
        reader.start()
        wait_for(lambda: _state(other.pid) == "T" and reader.is_alive() and _waiting(gw),
                 what="the read waiting in a worker")
        served: list[int] = []

        def probe() -> None:  # in a thread: were it held up, the deadline below says so
            for _ in range(50):
                assert (vf / "here").read_bytes() == b"h" * 4096
                assert os.stat(vf / "here").st_size == 4096
                assert int(os.getxattr(vf, "user.fusegw.used_bytes")) > 0
                served.append(1)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        wait_for(lambda: len(served) == 50, 10, "requests served while the read waits")
        assert reader.is_alive() and not result
    finally:
        os.kill(other.pid, signal.SIGCONT)
        reader.join(30)
        stuck.close()
        subprocess.run(["umount", "-l", str(target)], check=False)
    assert result == [data]


def _state(pid: int | None) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _waiting(gw: Gateway) -> bool:
    """A READ has reached the gateway and not been answered (it is in a worker)."""
    status = gw.request("GET", "/").json()
    return bool(status["syscalls"]["in_threads"]) and status["fuse_requests"].get("read", 0) > 0

"""Quota enforcement and accounting of the `vfs` backend, on real FUSE mounts over ext4.

The truth every figure is held against is the backing volume itself: `du -s -B1` of the scope
(or vfolder) directory for bytes, and the number of distinct inodes below it for inodes. The
ledger answers through the control socket (`GET /quota-scope`) and through the
`user.fusegw.*` extended attributes; both are checked.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway, du_bytes, inodes_below, new_qsid, scope_hex, wait_for

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
JOIN_DEADLINE = 20.0
SETTLE_DEADLINE = 10.0


# -- helpers ---------------------------------------------------------------------------------


def backing(gw: Gateway, path: Path) -> Path:
    """The backing-side twin of a path under the mount."""
    return gw.source / path.relative_to(gw.mountpoint)


def scope_backing(gw: Gateway, qsid: str) -> Path:
    return gw.source / scope_hex(qsid)


def xattr_int(path: Path, name: str) -> int:
    return int(os.getxattr(path, f"user.fusegw.{name}"))


def tree_state(top: Path) -> dict[str, Any]:
    """Everything observable about a backing tree: per entry type, size, links, content hash."""
    state: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, top)
            if os.path.islink(p):
                state[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                state[rel] = ("dir",)
            else:
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                state[rel] = ("file", st.st_size, st.st_nlink, st.st_ino, digest)
    return state


def usage_mismatch(gw: Gateway, qsid: str, vfolders: list[Path]) -> str | None:
    """What differs between the ledger (API and xattrs) and the disk, or None."""
    os.sync()
    src = scope_backing(gw, qsid)
    want = {"used_bytes": du_bytes(src), "used_inodes": inodes_below(src)}
    fig = gw.describe(qsid)
    scope_dir = gw.mountpoint / scope_hex(qsid)
    got = {
        "api": {k: fig[k] for k in want},
        "xattr": {k: xattr_int(scope_dir, k) for k in want},
    }
    for vf in vfolders:
        vsrc = backing(gw, vf)
        want[vf.name] = {"used_bytes": du_bytes(vsrc), "used_inodes": inodes_below(vsrc)}
        got[vf.name] = {k: xattr_int(vf, f"vfolder.{k}") for k in ("used_bytes", "used_inodes")}
    disk = {"api": {k: want[k] for k in ("used_bytes", "used_inodes")}}
    disk["xattr"] = disk["api"]
    disk.update({vf.name: want[vf.name] for vf in vfolders})
    return None if got == disk else f"ledger {got} != disk {disk}"


def assert_exact(gw: Gateway, qsid: str, vfolders: list[Path] = (),
                 timeout: float = SETTLE_DEADLINE) -> dict[str, Any]:
    """Ledger == disk for the scope (API and xattrs) and for each vfolder (xattrs), once the
    gateway has settled: no operation is in flight here, so usage must match the disk.

    Writeback is forced first (os.sync), so blocks the filesystem allocates late (delayed
    allocation, extent-tree blocks) are on disk when `du` looks: quiescence includes
    writeback. The gateway gets a short deadline to account for what writeback allocated.
    """
    last: list[str | None] = [None]

    def matches() -> bool:
        last[0] = usage_mismatch(gw, qsid, list(vfolders))
        return last[0] is None

    try:
        wait_for(matches, timeout, "ledger == disk")
    except AssertionError:
        raise AssertionError(f"usage not exact after quiescence: {last[0]}") from None
    return gw.describe(qsid)


def expect_errno(err: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == err, f"{fn.__name__}: {info.value!r}, wanted {errno.errorcode[err]}"


def status(gw: Gateway) -> dict[str, Any]:
    r = gw.request("GET", "/")
    assert r.status_code == 200, r.text
    return dict(r.json())


def dirty_list(gw: Gateway) -> list[str] | None:
    try:
        return list(json.loads((gw.source / ".fusegw" / "dirty.json").read_text())["dirty"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def wait_settled(gw: Gateway) -> None:
    """Wait until the ledger has snapshotted every scope and cleared every dirty mark."""
    wait_for(lambda: dirty_list(gw) == [], what="ledger settled (dirty.json empty)")


def patch_limits(gw: Gateway, qsid: str, **options: int) -> None:
    r = gw.request("PATCH", "/quota-scope",
                   {"volume": gw.volume, "qsid": qsid, "options": options})
    assert r.status_code == 204, r.text


def fill(path: Path, nbytes: int, byte: bytes = b"f") -> None:
    """Write `nbytes` through the mount in whole requests (<= 1 MiB each)."""
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, MiB)
            assert f.write(byte * n) == n
            left -= n


def run_bounded(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Run fn in a thread and fail if it has not returned by the deadline (no hung test)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} did not return within {timeout}s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


# -- 1. a refused write changes nothing -----------------------------------------------------


def test_write_past_limit_fails_edquot_and_leaves_file_unchanged(gateway: Gateway) -> None:
    """A single write (one FUSE request) that would take the scope past its byte limit fails
    with EDQUOT and stores nothing: an append leaves size and content as they were, and so does
    a write that overwrites the tail of a file and grows it (its overwritten part included).
    Usage does not move; a write that fits the remaining room still succeeds."""
    qsid = new_qsid()
    limit = 2 * MiB
    gateway.create_scope(qsid, limit_bytes=limit)
    vf = gateway.make_vfolder(qsid)
    target = vf / "target.bin"
    original = os.urandom(CHUNK)
    target.write_bytes(original)
    # Leave between 16 KiB and 32 KiB of room: smaller than the growth of every refused write
    # below, so none of them could even partly fit.
    room_wanted = 24 * KiB
    filler_size = limit - gateway.describe(qsid)["used_bytes"] - room_wanted
    fill(vf / "filler.bin", filler_size)
    used = gateway.describe(qsid)["used_bytes"]
    room = limit - used
    assert 16 * KiB <= room <= 32 * KiB, room

    fd = os.open(target, os.O_RDWR)
    try:
        # An append of 1 MiB: one request, far beyond the room.
        expect_errno(errno.EDQUOT, os.pwrite, fd, os.urandom(MiB), len(original))
        # Overwrite the last 16 KiB and grow by 48 KiB (> room): nothing may be overwritten.
        expect_errno(errno.EDQUOT, os.pwrite, fd, b"\xee" * CHUNK, len(original) - 16 * KiB)
        # A plain write() through the file offset, same outcome.
        os.lseek(fd, 0, os.SEEK_END)
        expect_errno(errno.EDQUOT, os.write, fd, b"\xdd" * (256 * KiB))
    finally:
        os.close(fd)

    for view in (target, backing(gateway, target)):
        assert view.stat().st_size == len(original)
        assert view.read_bytes() == original
    assert gateway.describe(qsid)["used_bytes"] == used
    assert xattr_int(target, "used_bytes") == used

    # A new file: create costs no bytes, its first oversized write is refused whole.
    fresh = vf / "fresh.bin"
    with open(fresh, "wb", buffering=0) as f:
        expect_errno(errno.EDQUOT, f.write, b"n" * (128 * KiB))
    assert fresh.stat().st_size == 0
    assert backing(gateway, fresh).stat().st_size == 0

    # Room is room: a 16 KiB append fits and is stored whole.
    with open(target, "ab", buffering=0) as f:
        assert f.write(b"t" * (16 * KiB)) == 16 * KiB
    assert backing(gateway, target).read_bytes() == original + b"t" * (16 * KiB)
    fig = assert_exact(gateway, qsid, [vf])
    assert fig["used_bytes"] <= limit


# -- 2. concurrent writers never overshoot --------------------------------------------------


def run_in_threads(work: Callable[[int], None], n: int, deadline: float) -> None:
    """work(0) ... work(n - 1), each in its own thread; their failures raised here."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as e:  # collected for the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline)
    assert not any(t.is_alive() for t in threads), "threads did not finish"
    assert not errors, errors


THREADED = ["-o", "io_inline_max_us=0,io_threads=8"]
"""Every syscall that may wait in a worker thread, whatever the disk's speed: the path a slow
disk takes."""


@pytest.fixture(params=["adaptive", "threaded"])
def mode_gateway(request: pytest.FixtureRequest, make_gateway: Callable[..., Gateway]
                 ) -> Gateway:
    """A gateway as configured by default, and one serving every waiting syscall from its
    worker threads."""
    gw: Gateway = make_gateway(extra=THREADED if request.param == "threaded" else [])
    return gw


def assert_threads_used(gw: Gateway) -> None:
    calls = gw.request("GET", "/").json()["syscalls"]
    if "io_inline_max_us=0,io_threads=8" in gw.extra:
        assert calls["in_threads"] > 0 and calls["threads"] == 8, calls


def test_concurrent_writers_stop_at_limit_with_whole_writes(mode_gateway: Gateway) -> None:
    """16 threads appending 64 KiB writes to their own files until EDQUOT end with the scope at
    or below its limit, in the ledger and per du; every write was stored whole or refused
    (each file size a multiple of 64 KiB, equal to what its writer was told it wrote), and the
    scope was filled to within one refused write per writer of the limit."""
    gateway = mode_gateway
    qsid = new_qsid()
    limit = 8 * MiB
    writers = 16
    gateway.create_scope(qsid, limit_bytes=limit)
    vf = gateway.make_vfolder(qsid)
    paths = [vf / f"w{i:02d}.bin" for i in range(writers)]
    for p in paths:
        p.touch()
    overhead = gateway.describe(qsid)["used_bytes"]  # directories only
    barrier = threading.Barrier(writers)
    written = [0] * writers
    payload = b"c" * CHUNK

    def writer(i: int) -> None:
        fd = os.open(paths[i], os.O_WRONLY | os.O_APPEND)
        try:
            barrier.wait(10)
            for _ in range(limit // CHUNK + 1):
                try:
                    n = os.write(fd, payload)
                except OSError as e:
                    if e.errno == errno.EDQUOT:
                        return
                    raise
                assert n == CHUNK, f"short write {n}"
                written[i] += n
            raise AssertionError("writer never hit EDQUOT")
        finally:
            os.close(fd)

    run_in_threads(writer, writers, 60)

    for i, p in enumerate(paths):
        size = backing(gateway, p).stat().st_size
        assert size % CHUNK == 0, f"{p.name}: {size} is not whole writes"
        assert size == written[i], f"{p.name}: stored {size}, reported {written[i]}"
    assert gateway.describe(qsid)["used_bytes"] <= limit
    os.sync()
    assert du_bytes(scope_backing(gateway, qsid)) <= limit
    total = sum(written)
    assert total >= limit - writers * CHUNK - overhead, (total, limit, overhead)
    assert_exact(gateway, qsid, [vf])
    assert_threads_used(gateway)


def _mixed_writer(kind: int, d: Path, limit: int, barrier: threading.Barrier) -> int:
    """One of the writer kinds racing into a scope until EDQUOT: appends, sparse writes far
    apart, many small files, directories and long symlinks, fallocate, extending truncate and
    rewrite. Returns the EDQUOTs seen (each kind stops at its first)."""
    d.mkdir()
    barrier.wait(10)
    try:
        if kind == 0:  # appender, 64 KiB writes
            fd = os.open(d / "a", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                for _ in range(limit // CHUNK + 1):
                    os.write(fd, b"a" * CHUNK)
            finally:
                os.close(fd)
        elif kind == 1:  # sparse: 4 KiB every 1 MiB, extent after extent
            fd = os.open(d / "s", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                for i in range(limit // 4096 + 1):
                    os.pwrite(fd, b"s" * 4096, i * MiB)
            finally:
                os.close(fd)
        elif kind == 2:  # small files
            for i in range(limit // 4096 + 1):
                (d / f"f{i}").write_bytes(b"f" * 4096)
        elif kind == 3:  # directories and block-sized symlinks
            for i in range(limit // 4096 + 1):
                (d / f"d{i}").mkdir()
                os.symlink("x" * 200, d / f"l{i}")
        elif kind == 4:  # fallocate 256 KiB at a time
            fd = os.open(d / "p", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                for i in range(limit // (256 * KiB) + 1):
                    os.posix_fallocate(fd, i * 256 * KiB, 256 * KiB)
            finally:
                os.close(fd)
        else:  # extend by truncate (allocates nothing), then fill by rewriting
            fd = os.open(d / "t", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                for i in range(limit // CHUNK + 1):
                    os.ftruncate(fd, (i + 1) * CHUNK)
                    os.pwrite(fd, b"t" * CHUNK, i * CHUNK)
            finally:
                os.close(fd)
    except OSError as e:
        if e.errno != errno.EDQUOT:
            raise
        return 1
    return 0


def test_sixteen_mixed_writers_never_overshoot(mode_gateway: Gateway) -> None:
    """16 threads of six kinds of growth (appends, sparse writes, small files, directories and
    symlinks, fallocate, truncate-and-fill) race into one scope with requests served
    concurrently by the daemon: every one is stopped by EDQUOT, the scope never passes its
    limit (ledger and du), and once quiet the ledger equals du exactly."""
    gateway = mode_gateway
    qsid = new_qsid()
    limit = 12 * MiB
    writers = 16
    gateway.create_scope(qsid, limit_bytes=limit)
    vf = gateway.make_vfolder(qsid)
    barrier = threading.Barrier(writers)
    refused = [0] * writers

    def run(i: int) -> None:
        refused[i] = _mixed_writer(i % 6, vf / f"w{i:02d}", limit, barrier)

    run_in_threads(run, writers, 120)
    assert refused == [1] * writers, refused
    assert gateway.describe(qsid)["used_bytes"] <= limit
    os.sync()
    assert du_bytes(scope_backing(gateway, qsid)) <= limit
    figures = assert_exact(gateway, qsid, [vf])
    assert figures["used_bytes"] <= limit
    assert_threads_used(gateway)


# -- 3. accounting is exact after a mixed workload -------------------------------------------


def test_usage_matches_du_after_mixed_workload(gateway: Gateway) -> None:
    """After creates, overwrites, sparse writes (one file with more extents than an ext4 inode
    holds, whose extent-tree block ext4 allocates only at writeback), truncates both ways, hard
    links, renames (also over existing files and directories), unlinks (also of an open file),
    mkdir/rmdir, a directory grown past one block, and short (inline) and long (block)
    symlinks, once quiet and written back the scope's used_bytes equals `du -s -B1` of the
    backing scope directory and used_inodes the number of distinct inodes below it; each
    vfolder's xattr figures equal du and the inode count of its backing directory."""
    qsid = new_qsid()
    gateway.create_scope(qsid, limit_bytes=256 * MiB)
    vf = gateway.make_vfolder(qsid)
    vf2 = gateway.make_vfolder(qsid)

    # create, overwrite (O_TRUNC), partial overwrite that grows
    (vf / "a.bin").write_bytes(os.urandom(100_000))
    (vf / "a.bin").write_bytes(os.urandom(5_000))
    (vf / "b.bin").write_bytes(b"x" * 200_000)
    with open(vf / "b.bin", "r+b") as f:
        f.seek(50_000)
        f.write(b"y" * 300_000)
    # sparse files: a few extents, and one with more extents than an ext4 inode holds
    with open(vf / "sparse3.bin", "wb") as f:
        for i in range(3):
            f.seek(i * MiB)
            f.write(b"s" * 5_000)
    with open(vf / "sparse12.bin", "wb") as f:
        for i in range(12):
            f.seek(i * 2 * MiB + 123)
            f.write(b"S" * 9_000)
    # truncate smaller, then larger (a hole), then write into the hole
    os.truncate(vf / "b.bin", 10_000)
    os.truncate(vf / "b.bin", 5 * MiB)
    with open(vf / "b.bin", "r+b") as f:
        f.seek(3 * MiB)
        f.write(b"h" * 4_096)
    # directories, nested; hard links, one across directories of the vfolder
    (vf / "d1" / "d2").mkdir(parents=True)
    os.link(vf / "a.bin", vf / "a.link")
    os.link(vf / "sparse3.bin", vf / "d1" / "d2" / "sparse3.link")
    os.link(vf / "b.bin", vf / "b.link1")
    os.link(vf / "b.bin", vf / "b.link2")
    # renames: plain, across directories, over an existing file, over a hard-linked file,
    # a directory over an empty directory
    os.rename(vf / "a.bin", vf / "d1" / "a.moved")
    (vf / "victim.bin").write_bytes(os.urandom(40_000))
    (vf / "c.bin").write_bytes(os.urandom(70_000))
    os.rename(vf / "c.bin", vf / "victim.bin")
    (vf / "e.bin").write_bytes(os.urandom(12_000))
    os.rename(vf / "e.bin", vf / "b.link1")  # b.bin's inode keeps two names
    (vf / "empty").mkdir()
    (vf / "full").mkdir()
    (vf / "full" / "inner.bin").write_bytes(os.urandom(9_000))
    os.rename(vf / "full", vf / "empty")
    os.rename(vf / "d1", vf / "d1renamed")
    # unlink: a plain file, one name of a linked file, an open file that is written after
    (vf / "gone.bin").write_bytes(os.urandom(30_000))
    os.unlink(vf / "gone.bin")
    os.unlink(vf / "b.link2")
    with open(vf / "tmp.bin", "wb") as f:
        f.write(os.urandom(20_000))
        f.flush()
        os.unlink(vf / "tmp.bin")
        f.write(os.urandom(50_000))
        f.flush()
    # mkdir / rmdir, and a directory grown past one block by many long names
    (vf / "gone_dir" / "sub").mkdir(parents=True)
    (vf / "gone_dir" / "sub").rmdir()
    (vf / "gone_dir").rmdir()
    big = vf / "bigdir"
    big.mkdir()
    for i in range(150):
        (big / (f"{i:04d}-" + "n" * 100)).touch()
    for i in range(0, 150, 2):
        (big / (f"{i:04d}-" + "n" * 100)).unlink()
    # symlinks: inline (short) and block-backed (long), dangling and not, one removed
    os.symlink("a.link", vf / "short.lnk")
    os.symlink("/" + "t" * 80, vf / "long.lnk")
    os.symlink("../" + "u" * 70, vf / "d1renamed" / "long2.lnk")
    os.symlink("x" * 100, vf / "long_gone.lnk")
    os.unlink(vf / "long_gone.lnk")
    # second vfolder: its own files, links and a removal
    (vf2 / "z.bin").write_bytes(os.urandom(300_000))
    os.link(vf2 / "z.bin", vf2 / "z.link")
    os.symlink("v" * 90, vf2 / "z.lnk")
    (vf2 / "zz").mkdir()
    (vf2 / "zz" / "q.bin").write_bytes(os.urandom(8_192))
    os.unlink(vf2 / "z.bin")

    assert_exact(gateway, qsid, [vf, vf2])


# -- 4. no rename or link across scopes or vfolders -----------------------------------------


def test_rename_and_link_across_scopes_and_vfolders_fail_exdev(gateway: Gateway) -> None:
    """rename(2) and link(2) from one scope to another, and from one vfolder to another of the
    same scope (files, a directory, and a rename over an existing file), fail with EXDEV, and
    neither side changes: the backing trees and the usage figures are as before."""
    qa, qb = new_qsid(), new_qsid("project")
    gateway.create_scope(qa, limit_bytes=64 * MiB)
    gateway.create_scope(qb, limit_bytes=64 * MiB)
    a1, a2 = gateway.make_vfolder(qa), gateway.make_vfolder(qa)
    b1 = gateway.make_vfolder(qb)
    (a1 / "f.bin").write_bytes(os.urandom(50_000))
    (a1 / "dir").mkdir()
    (a1 / "dir" / "g.bin").write_bytes(os.urandom(10_000))
    (a2 / "existing.bin").write_bytes(os.urandom(20_000))
    (b1 / "existing.bin").write_bytes(os.urandom(30_000))

    before = {q: (tree_state(scope_backing(gateway, q)), gateway.describe(q)) for q in (qa, qb)}

    attempts = [
        (os.rename, a1 / "f.bin", b1 / "f.bin"),             # scope -> scope
        (os.rename, a1 / "f.bin", b1 / "existing.bin"),      # ... over an existing file
        (os.rename, a1 / "dir", b1 / "dir"),                 # ... a directory
        (os.link, a1 / "f.bin", b1 / "f.link"),
        (os.rename, a1 / "f.bin", a2 / "f.bin"),             # vfolder -> vfolder, one scope
        (os.rename, a1 / "f.bin", a2 / "existing.bin"),
        (os.rename, a1 / "dir", a2 / "dir"),
        (os.link, a1 / "f.bin", a2 / "f.link"),
        (os.rename, b1 / "existing.bin", a1 / "from_b.bin"),  # the other direction
        (os.link, b1 / "existing.bin", a2 / "from_b.link"),
    ]
    for fn, src, dst in attempts:
        with pytest.raises(OSError) as info:
            fn(src, dst)
        assert info.value.errno == errno.EXDEV, f"{fn.__name__}({src}, {dst}): {info.value!r}"

    after = {q: (tree_state(scope_backing(gateway, q)), gateway.describe(q)) for q in (qa, qb)}
    assert after == before
    assert_exact(gateway, qa, [a1, a2])
    assert_exact(gateway, qb, [b1])


# -- 5. shrinking works over the limit -----------------------------------------------------


def test_shrinking_succeeds_over_limit_and_growth_is_refused(gateway: Gateway) -> None:
    """With a limit set (PATCH) below current usage, unlink, truncate-to-smaller and rmdir
    succeed and lower usage, an extending truncate succeeds (it allocates nothing), and a
    growing write fails with EDQUOT and stores nothing."""
    qsid = new_qsid()
    gateway.create_scope(qsid)
    vf = gateway.make_vfolder(qsid)
    fill(vf / "a.bin", 256 * KiB)
    fill(vf / "b.bin", 256 * KiB)
    fill(vf / "c.bin", CHUNK)
    (vf / "d").mkdir()
    fill(vf / "d" / "inner.bin", CHUNK)
    used = gateway.describe(qsid)["used_bytes"]
    limit = 8 * KiB
    assert used > limit
    patch_limits(gateway, qsid, limit_bytes=limit)
    fig = gateway.describe(qsid)
    assert fig["limit_bytes"] == limit
    assert xattr_int(vf, "limit_bytes") == limit

    c_content = (vf / "c.bin").read_bytes()
    with open(vf / "c.bin", "ab", buffering=0) as f:
        expect_errno(errno.EDQUOT, f.write, b"g" * 4096)
    assert backing(gateway, vf / "c.bin").read_bytes() == c_content

    os.unlink(vf / "a.bin")
    after_unlink = gateway.describe(qsid)["used_bytes"]
    assert after_unlink < used
    os.truncate(vf / "b.bin", 4096)
    after_truncate = gateway.describe(qsid)["used_bytes"]
    assert after_truncate < after_unlink
    assert (vf / "b.bin").stat().st_size == 4096
    os.unlink(vf / "d" / "inner.bin")
    os.rmdir(vf / "d")
    after_rmdir = gateway.describe(qsid)["used_bytes"]
    assert after_rmdir < after_truncate
    assert not backing(gateway, vf / "d").exists()
    assert after_rmdir > limit  # still over: growth stays refused

    os.truncate(vf / "c.bin", 10 * MiB)
    assert (vf / "c.bin").stat().st_size == 10 * MiB
    assert gateway.describe(qsid)["used_bytes"] == after_rmdir

    # Writing into the new hole would allocate: refused, nothing stored.
    with open(vf / "c.bin", "r+b", buffering=0) as f:
        f.seek(5 * MiB)
        expect_errno(errno.EDQUOT, f.write, b"h" * 4096)
    with open(backing(gateway, vf / "c.bin"), "rb") as f:
        f.seek(5 * MiB)
        assert f.read(4096) == b"\0" * 4096
    assert_exact(gateway, qsid, [vf])


# -- 6. inode limit --------------------------------------------------------------------------


def test_inode_limit_refuses_next_entry_but_not_hard_link(gateway: Gateway) -> None:
    """With limit_inodes N, the entries below the scope (the vfolder's two fan-out directories
    and its root included) may reach N; creating a file, a directory or a symlink as number N+1
    fails with EDQUOT and creates nothing, while a hard link (no new inode) succeeds and leaves
    used_inodes at N."""
    qsid = new_qsid()
    n = 6
    gateway.create_scope(qsid, limit_inodes=n)
    assert gateway.describe(qsid)["limit_inodes"] == n
    vf = gateway.make_vfolder(qsid)  # 3 inodes: fan-out, fan-out, vfolder root
    (vf / "f1").write_bytes(b"1")
    (vf / "d1").mkdir()
    os.symlink("f1", vf / "s1")
    assert gateway.describe(qsid)["used_inodes"] == n

    expect_errno(errno.EDQUOT, os.open, vf / "f2", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    expect_errno(errno.EDQUOT, os.mkdir, vf / "d2")
    expect_errno(errno.EDQUOT, os.symlink, "f1", vf / "s2")
    expect_errno(errno.EDQUOT, os.mkdir, vf / "d1" / "nested")
    for name in ("f2", "d2", "s2", "d1/nested"):
        assert not os.path.lexists(backing(gateway, vf / name)), name

    os.link(vf / "f1", vf / "f1.link")
    assert (vf / "f1.link").read_bytes() == b"1"
    assert os.lstat(backing(gateway, vf / "f1")).st_nlink == 2
    fig = assert_exact(gateway, qsid, [vf])
    assert fig["used_inodes"] == n
    assert xattr_int(vf, "limit_inodes") == n


# -- 7. persistence across a clean restart -----------------------------------------------------


def test_usage_survives_clean_restart_without_rescan(gateway: Gateway) -> None:
    """After SIGTERM and a new mount the scope and vfolder figures and limits are the ones
    before, they still equal the disk, and `GET /` lists no rebuild: nothing was rescanned."""
    qsid = new_qsid()
    gateway.create_scope(qsid, limit_bytes=32 * MiB, limit_inodes=1000)
    vf = gateway.make_vfolder(qsid)
    (vf / "a.bin").write_bytes(os.urandom(300_000))
    os.link(vf / "a.bin", vf / "a.link")
    (vf / "d").mkdir()
    (vf / "d" / "b.bin").write_bytes(os.urandom(5_000))
    os.symlink("l" * 100, vf / "long.lnk")
    before = assert_exact(gateway, qsid, [vf])
    vf_before = (xattr_int(vf, "vfolder.used_bytes"), xattr_int(vf, "vfolder.used_inodes"))

    gateway.stop()
    gateway.start()

    assert gateway.describe(qsid) == before
    assert (xattr_int(vf, "vfolder.used_bytes"), xattr_int(vf, "vfolder.used_inodes")) \
        == vf_before
    st = status(gateway)
    assert st["rebuilds"] == [] and st["rebuilding"] == []
    assert_exact(gateway, qsid, [vf])


# -- 8. kill -9 rebuilds only the scope being written --------------------------------------


def test_kill9_rebuilds_only_changed_scope_and_usage_is_exact(gateway: Gateway) -> None:
    """After the ledger settled, a write into scope A and kill -9: the new gateway rebuilds A
    and only A (`GET /` rebuilds names A alone), and both scopes' figures equal the disk."""
    qa, qb = new_qsid(), new_qsid()
    gateway.create_scope(qa, limit_bytes=64 * MiB)
    gateway.create_scope(qb, limit_bytes=64 * MiB)
    va, vb = gateway.make_vfolder(qa), gateway.make_vfolder(qb)
    (va / "a.bin").write_bytes(os.urandom(200_000))
    (vb / "b.bin").write_bytes(os.urandom(300_000))
    os.symlink("s" * 80, vb / "long.lnk")
    wait_settled(gateway)

    with open(va / "new.bin", "wb") as f:
        f.write(os.urandom(500_000))
    gateway.kill9()
    gateway.start()

    wait_for(lambda: status(gateway)["rebuilding"] == [], what="rebuild finished")
    rebuilt = [r["qsid"] for r in status(gateway)["rebuilds"]]
    assert rebuilt == [qa]
    assert_exact(gateway, qa, [va])
    assert_exact(gateway, qb, [vb])


# -- 9. the mount answers during a rebuild; growth waits -------------------------------------


def test_pending_rebuild_serves_reads_and_shrinks_and_holds_growth(
        gateway: Gateway, tmp_path: Path) -> None:
    """While scope A's rebuild is held (FUSEGW_REBUILD_GATE), reads, stat and unlink in A are
    answered at once, a growing write waits (counted in `waiting_for_rebuild`, its thread still
    blocked), and once the rebuild may run the write completes whole and the figures equal the
    disk."""
    qa = new_qsid()
    gateway.create_scope(qa, limit_bytes=64 * MiB)
    va = gateway.make_vfolder(qa)
    keep = os.urandom(100_000)
    (va / "keep.bin").write_bytes(keep)
    (va / "victim.bin").write_bytes(os.urandom(200_000))
    (va / "grow.bin").write_bytes(b"g" * 4096)
    wait_settled(gateway)
    with open(va / "dirty.bin", "wb") as f:
        f.write(os.urandom(50_000))
    gateway.kill9()

    gate = tmp_path / "rebuild-gate"
    gateway.env = {"FUSEGW_REBUILD_GATE": str(gate)}
    gateway.start()
    assert status(gateway)["rebuilding"] == [qa]

    assert run_bounded(lambda: (va / "keep.bin").read_bytes()) == keep
    assert run_bounded(lambda: (va / "keep.bin").stat().st_size) == len(keep)
    run_bounded(lambda: os.unlink(va / "victim.bin"))
    assert not backing(gateway, va / "victim.bin").exists()

    fd = os.open(va / "grow.bin", os.O_WRONLY | os.O_APPEND)
    result: dict[str, Any] = {}

    def grow() -> None:
        try:
            result["n"] = os.write(fd, b"G" * CHUNK)
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=grow, daemon=True)
    try:
        t.start()
        wait_for(lambda: status(gateway)["waiting_for_rebuild"] == 1,
                 what="growing write held by the rebuild")
        assert t.is_alive()
        assert status(gateway)["rebuilding"] == [qa]
        assert backing(gateway, va / "grow.bin").stat().st_size == 4096

        gate.touch()
        t.join(JOIN_DEADLINE)
        assert not t.is_alive(), "growing write still blocked after the rebuild"
        assert result == {"n": CHUNK}
    finally:
        gate.touch()
        t.join(JOIN_DEADLINE)
        os.close(fd)
    wait_for(lambda: status(gateway)["rebuilding"] == [], what="rebuild finished")
    assert status(gateway)["waiting_for_rebuild"] == 0
    assert backing(gateway, va / "grow.bin").read_bytes() == b"g" * 4096 + b"G" * CHUNK
    assert [r["qsid"] for r in status(gateway)["rebuilds"]] == [qa]
    assert_exact(gateway, qa, [va])



# -- 10. one vfs gateway per volume --------------------------------------------------------


def test_second_gateway_on_same_volume_refused_naming_holder(
        gateway: Gateway, make_gateway: Callable[..., Gateway]) -> None:
    """A second `fusegw mount` of the same source (own mount point and socket) exits with
    status 1 and names the holder as hostname:pid of the first; it mounts nothing and the
    first keeps serving."""
    qsid = new_qsid()
    gateway.create_scope(qsid, limit_bytes=MiB)
    second = make_gateway(name="second", source=gateway.source, start=False)
    proc = second.start(check=False)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    holder = f"{socket.gethostname()}:{gateway.pid}"
    assert holder in proc.stderr, proc.stderr
    assert not os.path.ismount(second.mountpoint)
    assert not second.socket.exists()
    assert status(gateway)["pid"] == gateway.pid
    assert gateway.describe(qsid)["limit_bytes"] == MiB
    (gateway.make_vfolder(qsid) / "still.bin").write_bytes(b"ok")


# -- 11. what the storage proxy expects ------------------------------------------------------


def test_storage_proxy_expectations_for_10mib_scope_and_unlimited(gateway: Gateway) -> None:
    """A new 10 MiB scope reports used_bytes <= 4096 and limit_bytes == 10 MiB; an 8192-byte
    file written and fsynced in a vfolder adds between 8192 and 8192+4096 to used_bytes.
    An unlimited scope answers null limits in the API and '0' in the limit xattrs."""
    qsid = new_qsid()
    scope_dir = gateway.create_scope(qsid, limit_bytes=10 * MiB)
    fig = gateway.describe(qsid)
    assert fig["used_bytes"] <= 4096
    assert fig["limit_bytes"] == 10 * MiB
    vf = gateway.make_vfolder(qsid)
    base = gateway.describe(qsid)["used_bytes"]
    with open(vf / "test.bin", "wb") as f:
        f.write(b"\xab" * 8192)
        f.flush()
        os.fsync(f.fileno())
    used = gateway.describe(qsid)["used_bytes"]
    assert 8192 <= used - base <= 8192 + 4096
    assert xattr_int(scope_dir, "used_bytes") == used
    assert xattr_int(scope_dir, "limit_bytes") == 10 * MiB

    free = new_qsid("project")
    free_dir = gateway.create_scope(free)
    fig = gateway.describe(free)
    assert fig["limit_bytes"] is None and fig["limit_inodes"] is None
    assert os.getxattr(free_dir, "user.fusegw.limit_bytes") == b"0"
    assert os.getxattr(free_dir, "user.fusegw.limit_inodes") == b"0"
    assert os.getxattr(free_dir, "user.fusegw.scope") == free.encode()
    assert uuid.UUID(free.split(":", 1)[1]).hex == free_dir.name

"""The quota core driven in-process (no mount, no subprocess), as s3ql tests its operations:
reservations against limits, the vfolder-root rule, rebuilds waiting for changes in flight,
the change locks and the worker pool, and the FUSE operations under concurrency."""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.testing
from test_fs_core import make_ops

from fusegw.fs.locks import InodeLocks
from fusegw.fs.offload import Offload
from fusegw.ids import QuotaScopeID
from fusegw.layout import flat_relpath, vfolder_hex, vfolder_names, vfolder_relpath
from fusegw.ledger import Ledger, QuotaExceeded, ScopeUsage
from fusegw.ledger.scan import scan_scope
from fusegw.ledger.usage import leaves_with_name
from fusegw.state import StateDir

KiB = 1024
MiB = 1024 * KiB


def _scope(limit_bytes: int = 0, limit_inodes: int = 0) -> ScopeUsage:
    return ScopeUsage(QuotaScopeID.parse(f"user:{uuid.uuid4()}"), limit_bytes, limit_inodes)


def _ledger(tmp_path: Path) -> Ledger:
    state = StateDir(tmp_path)
    state.open()
    return Ledger(tmp_path, state)


# -- the layout, in one place -----------------------------------------------------------------


def test_layout_names_and_paths() -> None:
    h = "9f86d081884c7d659a2feaa0c55ad015"
    assert vfolder_names(h) == ("9f", "86", "d081884c7d659a2feaa0c55ad015")
    assert vfolder_relpath("s" * 32, h) == "s" * 32 + "/9f/86/d081884c7d659a2feaa0c55ad015"
    assert flat_relpath(h) == "9f/86/d081884c7d659a2feaa0c55ad015"
    assert vfolder_hex("9f86", "d081884c7d659a2feaa0c55ad015") == h
    assert vfolder_hex("9f8", "6d081884c7d659a2feaa0c55ad015") is None
    assert vfolder_hex("9f86", "not-hex") is None


# -- reservations --------------------------------------------------------------------------


@pytest.mark.trio
async def test_reservations_in_flight_count_against_the_limit(tmp_path: Path) -> None:
    """Two changes each fitting the room left, but not together: the second is refused while
    the first holds its reservation, and admitted once the first has settled smaller."""
    ledger = _ledger(tmp_path)
    scope = ledger.add_scope(_scope().qsid, limit_bytes=100 * KiB, limit_inodes=0)
    first = await ledger.reserve(scope, 60 * KiB, 1)
    with pytest.raises(QuotaExceeded) as refused:
        await ledger.reserve(scope, 60 * KiB, 1)
    assert refused.value.errno == errno.EDQUOT
    assert scope.refusals == 1
    with first:
        first.charge(None, 8 * KiB, 1)  # the disk allocated less than the bound
    assert (scope.used_bytes, scope.reserved_bytes, scope.inflight) == (8 * KiB, 0, 0)
    with await ledger.reserve(scope, 60 * KiB, 1) as second:
        second.charge(None, 60 * KiB, 0)
    assert scope.used_bytes == 68 * KiB


@pytest.mark.trio
async def test_a_failed_change_gives_its_reservation_back(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    scope = ledger.add_scope(_scope().qsid, limit_bytes=64 * KiB, limit_inodes=4)
    with pytest.raises(OSError), await ledger.reserve(scope, 64 * KiB, 4):
        raise OSError(errno.EIO, "the change failed")
    assert (scope.reserved_bytes, scope.reserved_inodes, scope.inflight) == (0, 0, 0)
    assert scope.used_bytes == 0 and scope.dirty  # recorded as changed: a rescan is safe


@pytest.mark.trio
async def test_shrinks_are_never_refused_and_reserve_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    scope = ledger.add_scope(_scope().qsid, limit_bytes=4 * KiB, limit_inodes=1)
    scope.used_bytes, scope.used_inodes = 8 * KiB, 3  # over the limit (it was lowered)
    with await ledger.reserve(scope, 1 * MiB, 10, growth=False) as r:
        assert scope.reserved_bytes == 0
        r.charge(None, -4 * KiB, -1)
    assert (scope.used_bytes, scope.used_inodes) == (4 * KiB, 2)


def test_vfolder_root_counts_its_inode_in_the_scope_only() -> None:
    scope = _scope()
    vf = scope.vfolder("ab" * 16)
    scope.charge(vf, 4096, 1, vf_root=True)
    scope.charge(vf, 8192, 1)
    assert (scope.used_bytes, scope.used_inodes) == (12288, 2)
    assert (vf.used_bytes, vf.used_inodes) == (12288, 1)


def test_a_hard_linked_file_leaves_with_its_last_name(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    os.link(f, tmp_path / "g")
    assert not leaves_with_name(os.stat(f))
    os.unlink(tmp_path / "g")
    assert leaves_with_name(os.stat(f))
    assert leaves_with_name(os.stat(tmp_path))


@pytest.mark.trio
async def test_room_counts_reservations() -> None:
    scope = _scope(limit_bytes=10 * KiB, limit_inodes=5)
    scope.reserve(4 * KiB, 2)
    assert scope.room() == (6 * KiB, 3)
    assert _scope().room() == (None, None)


# -- rebuilds and changes in flight ---------------------------------------------------------


@pytest.mark.trio
async def test_growth_waits_for_a_rebuild_shrinks_do_not(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    scope = ledger.add_scope(_scope().qsid, limit_bytes=0, limit_inodes=0)
    ledger.start_rebuild([scope])
    with await ledger.reserve(scope, growth=False):  # not held up
        pass
    admitted = trio.Event()

    async def grow() -> None:
        with await ledger.reserve(scope, 4096, 1):
            admitted.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(grow)
        await trio.testing.wait_all_tasks_blocked()
        assert not admitted.is_set() and scope.waiting == 1
        scope.ready.set()
    assert admitted.is_set()


@pytest.mark.trio
async def test_a_rescan_waits_for_changes_in_flight(tmp_path: Path) -> None:
    """A rebuild does not scan while a reserved change is half-made: it starts once the
    change has settled, so its figures include it exactly once."""
    ledger = _ledger(tmp_path)
    scope = ledger.add_scope(_scope().qsid, limit_bytes=0, limit_inodes=0)
    (tmp_path / scope.pathname).mkdir()
    change = await ledger.reserve(scope, 4096, 1)
    ledger.start_rebuild([scope])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ledger.rebuild, scope)
        await trio.testing.wait_all_tasks_blocked()
        assert scope.rebuilding, "the scan ran beside a change in flight"
        (tmp_path / scope.pathname / "new").write_bytes(b"n" * 4096)
        change.charge(None, 4096, 1)
        change.release()
    assert not scope.rebuilding
    assert scope.used_inodes == 1  # the file, counted once, by the scan
    assert scope.used_bytes == os.lstat(tmp_path / scope.pathname).st_blocks * 512 + 4096


# -- locks and the worker pool -----------------------------------------------------------------


@pytest.mark.trio
async def test_inode_locks_serialise_one_inode_not_two() -> None:
    locks = InodeLocks()
    order: list[str] = []

    async def change(key: tuple[int, int], name: str, hold: trio.Event) -> None:
        held = await locks.acquire([key])
        order.append(f"{name}+")
        await hold.wait()
        order.append(f"{name}-")
        locks.release(held)

    a_done, b_done, c_done = trio.Event(), trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(change, (1, 1), "a", a_done)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(change, (1, 1), "b", b_done)
        nursery.start_soon(change, (1, 2), "c", c_done)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a+", "c+"]  # b waits for a; c, another inode, does not
        assert not locks.try_add([], (1, 1))
        a_done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert order[-1] == "b+"
        b_done.set()
        c_done.set()
    assert len(locks) == 0  # nothing kept once nobody holds or waits


@pytest.mark.trio
async def test_offload_runs_calls_side_by_side_and_raises_their_errors() -> None:
    pool = Offload(threads=4)
    barrier = threading.Barrier(4, timeout=10)  # broken unless four run at once
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(pool.in_thread, barrier.wait)
        with pytest.raises(FileNotFoundError):
            await pool.in_thread(os.stat, "/nonexistent/fusegw")
        assert await pool.in_thread(sum, [1, 2, 3]) == 6
    finally:
        pool.close()


@pytest.mark.trio
async def test_offload_keeps_short_calls_inline_and_sends_waiting_ones_to_workers() -> None:
    """A call that returns at once stays on the loop (the hop would cost more than it saves);
    one that waits (here 5 ms, as a slow disk) goes to the workers once it is known to wait,
    except when nothing else is being served."""
    alone = False
    pool = Offload(threads=2, alone=lambda: alone)

    def waits() -> None:
        time.sleep(0.005)  # the workload: a syscall that takes its time

    try:
        for _ in range(5):
            await pool.run(os.getpid)
        assert (pool.inline_calls, pool.offloaded_calls) == (5, 0)
        await pool.run(waits)  # first seen: inline, and measured
        await pool.run(waits)
        assert pool.offloaded_calls == 1 and pool.pace[waits] >= 0.005
        alone = True
        await pool.run(waits)
        assert pool.offloaded_calls == 1  # alone: inline
    finally:
        pool.close()


# -- the FUSE operations under concurrency, without a mount --------------------------------------


class Ctx:
    uid = gid = pid = 0
    umask = 0o022


async def _vfolder_node(ops, ledger: Ledger, limit: int) -> tuple[int, ScopeUsage]:  # type: ignore[no-untyped-def]
    qsid = _scope().qsid
    scope = ledger.add_scope(qsid, limit_bytes=limit, limit_inodes=0)
    os.mkdir(ledger.volume / scope.pathname)
    scope.used_bytes = os.lstat(ledger.volume / scope.pathname).st_blocks * 512  # as created
    ctx = Ctx()
    ino = pyfuse3.ROOT_INODE
    ino = (await ops.lookup(ino, scope.pathname.encode(), ctx)).st_ino
    for name in vfolder_names(uuid.uuid4().hex):
        ino = (await ops.mkdir(ino, name.encode(), 0o755, ctx)).st_ino
    return ino, scope


@pytest.mark.trio
async def test_concurrent_writes_in_process_never_overshoot(tmp_path: Path) -> None:
    """32 tasks appending 64 KiB writes through the operations at once (each write a pwrite in
    a worker thread): the scope ends at or below its limit, equal to what the files hold."""
    ops = make_ops(tmp_path / "vol")
    ledger = ops.ledger
    limit = 4 * MiB
    vf_ino, scope = await _vfolder_node(ops, ledger, limit)
    refused = 0

    async def writer(i: int) -> None:
        nonlocal refused
        info, _ = await ops.create(vf_ino, f"w{i}".encode(), 0o644, os.O_WRONLY, Ctx())
        off = 0
        try:
            while True:
                try:
                    off += await ops.write(info.fh, off, b"w" * 65536)
                except pyfuse3.FUSEError as e:
                    assert e.errno == errno.EDQUOT
                    refused += 1
                    return
        finally:
            await ops.release(info.fh)

    async with trio.open_nursery() as nursery:
        for i in range(32):
            nursery.start_soon(writer, i)
    assert refused == 32
    assert scope.used_bytes <= limit
    assert (scope.reserved_bytes, scope.inflight) == (0, 0)
    ops.late.settle_now()
    assert scan_scope(str(ledger.volume / scope.pathname)).used_bytes == scope.used_bytes
    ops.offload.close()


@pytest.mark.trio
async def test_fallocate_in_process_is_admitted_like_a_write(tmp_path: Path) -> None:
    ops = make_ops(tmp_path / "vol")
    vf_ino, scope = await _vfolder_node(ops, ops.ledger, 1 * MiB)
    info, _ = await ops.create(vf_ino, b"f", 0o644, os.O_RDWR, Ctx())
    used = scope.used_bytes
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.fallocate(info.fh, 0, 0, 2 * MiB)
    assert refused.value.errno == errno.EDQUOT
    assert os.fstat(info.fh).st_size == 0 and scope.used_bytes == used
    await ops.fallocate(info.fh, 0, 0, 256 * KiB)
    assert scope.used_bytes - used == os.fstat(info.fh).st_blocks * 512 >= 256 * KiB
    with pytest.raises(pyfuse3.FUSEError) as unsupported:
        await ops.fallocate(info.fh, 0x08, 0, 4096)  # COLLAPSE_RANGE
    assert unsupported.value.errno == errno.EOPNOTSUPP
    await ops.release(info.fh)
    ops.offload.close()


def test_the_queue_signal_is_a_readable_descriptor() -> None:
    """`alone` polls the session's descriptor: readable means a request waits. (A pipe
    stands in for /dev/fuse, which only a mount opens; this process has none.)"""
    from fusegw.fs.session import Queue, fuse_fd

    assert fuse_fd() is None
    r, w = os.pipe()
    try:
        queue = Queue(r)
        assert not queue.waiting()
        os.write(w, b"r")
        assert queue.waiting()
    finally:
        os.close(r)
        os.close(w)

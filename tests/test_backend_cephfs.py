"""The `cephfs` backend against an emulation of CephFS's quota xattrs, and against a real
CephFS directory when FUSEGW_CEPHFS_PATH names one.

The emulation (tests/cephfs_emulation.py, whose docstring lists exactly what it models)
stands in for the kernel client over a temporary directory: ceph.dir.rbytes is the recursive
sum of file sizes, ceph.dir.rfiles/rsubdirs recursive counts (the directory itself among the
subdirs), ceph.quota.max_bytes/max_files are settable on directories, 0 removes a limit,
reading a quota of a directory without any quota gives ENODATA (and "0" for the unset one
while the other is set), invalid values give EINVAL. EDQUOT is emulated by the client-side
helpers `write`/`create`/`mkdir`, which refuse growth past max_bytes and creations once
rfiles + rsubdirs reaches max_files, as the CephFS clients do.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from pathlib import Path

import pytest
import trio
from cephfs_emulation import EmulatedCephFS, tree_bytes

from backends.base import BackendError, QuotaLimits, QuotaUsage
from backends.cephfs import CEPH_SUPER_MAGIC, MAX_BYTES, MAX_FILES, CephFSBackend, fs_magic

MiB = 2**20


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    vol = tmp_path / "vol"
    vol.mkdir()
    return vol


@pytest.fixture
def ceph(volume: Path) -> EmulatedCephFS:
    return EmulatedCephFS(volume)


@pytest.fixture
def backend(volume: Path, ceph: EmulatedCephFS) -> CephFSBackend:
    return CephFSBackend(volume, {"emulated": True}, xattrs=ceph)


def remove_tree(top: Path, keep_top: bool = False) -> None:
    for p in sorted(top.rglob("*"), reverse=True):
        if p.is_dir() and not p.is_symlink():
            p.rmdir()
        else:
            p.unlink()
    if not keep_top:
        top.rmdir()


def quota_xattr(ceph: EmulatedCephFS, path: Path, name: str) -> int | None:
    """The attribute as an integer, None for ENODATA."""
    try:
        return int(ceph.get(str(path), name))
    except OSError as e:
        assert e.errno == errno.ENODATA
        return None


# -- the emulation itself behaves like CephFS ---------------------------------------------------


def test_emulation_semantics(volume: Path, ceph: EmulatedCephFS) -> None:
    d = volume / "d"
    d.mkdir()
    (d / "sub").mkdir()
    (d / "sub" / "f").write_bytes(b"x" * 1000)
    (d / "g").write_bytes(b"y" * 24)
    assert ceph.get(str(d), "ceph.dir.rbytes") == b"1024"
    assert ceph.get(str(d), "ceph.dir.rfiles") == b"2"
    assert ceph.get(str(d), "ceph.dir.rsubdirs") == b"2"  # d itself and sub
    assert ceph.get(str(d), "ceph.dir.rentries") == b"4"
    # no quota at all: both names are absent
    assert quota_xattr(ceph, d, MAX_BYTES) is None
    assert quota_xattr(ceph, d, MAX_FILES) is None
    # IEC suffixes are cast to binary units even for SI spellings
    ceph.set(str(d), MAX_BYTES, b"100K")
    assert quota_xattr(ceph, d, MAX_BYTES) == 102400
    assert quota_xattr(ceph, d, MAX_FILES) == 0  # present while the directory has a quota
    ceph.set(str(d), MAX_BYTES, b"5Gi")
    assert quota_xattr(ceph, d, MAX_BYTES) == 5 << 30
    for bad in (b"-1", b"abc", b"", b"1.5", b"10 "):
        with pytest.raises(OSError) as e:
            ceph.set(str(d), MAX_BYTES, bad)
        assert e.value.errno == errno.EINVAL, bad
    with pytest.raises(OSError) as e:
        ceph.set(str(d), MAX_FILES, b"10K")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        ceph.set(str(d / "g"), MAX_BYTES, b"1")  # quotas live on directories only
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        ceph.set(str(d), "ceph.dir.rbytes", b"1")
    assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as e:
        ceph.get(str(d / "g"), "ceph.dir.rbytes")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(OSError) as e:
        ceph.get(str(volume / "missing"), "ceph.dir.rbytes")
    assert e.value.errno == errno.ENOENT
    # 0 removes the limit; with none left the names vanish
    ceph.set(str(d), MAX_BYTES, b"0")
    assert quota_xattr(ceph, d, MAX_BYTES) is None
    # the quota follows the inode through a rename
    ceph.set(str(d), MAX_FILES, b"7")
    os.rename(d, volume / "e")
    assert quota_xattr(ceph, volume / "e", MAX_FILES) == 7
    ceph.remove(str(volume / "e"), MAX_FILES)
    assert quota_xattr(ceph, volume / "e", MAX_FILES) is None


def test_emulated_client_refuses_past_limits(volume: Path, ceph: EmulatedCephFS) -> None:
    d = volume / "q"
    d.mkdir()
    ceph.set(str(d), MAX_BYTES, b"1000")
    ceph.set(str(d), MAX_FILES, b"3")  # d itself counts: two entries fit
    ceph.write(d / "a", b"x" * 600)
    ceph.write(d / "a", b"x" * 400, append=True)  # exactly at the limit
    with pytest.raises(OSError) as e:
        ceph.write(d / "a", b"x", append=True)
    assert e.value.errno == errno.EDQUOT
    ceph.create(d / "b")
    with pytest.raises(OSError) as e:
        ceph.mkdir(d / "c")
    assert e.value.errno == errno.EDQUOT
    # a quota on an ancestor applies to deeper paths too
    os.unlink(d / "b")
    ceph.mkdir(d / "sub")
    with pytest.raises(OSError) as e:
        ceph.create(d / "sub" / "f")
    assert e.value.errno == errno.EDQUOT


# -- the backend --------------------------------------------------------------------------------


@pytest.mark.trio
async def test_check_volume(volume: Path, backend: CephFSBackend, ceph: EmulatedCephFS
                            ) -> None:
    await backend.check_volume()  # emulated: only ceph.dir.rbytes is asked
    assert ("get", str(volume), "ceph.dir.rbytes") in ceph.calls
    real = CephFSBackend(volume, xattrs=ceph)  # not emulated: statfs must say CephFS
    assert fs_magic(volume) != CEPH_SUPER_MAGIC
    with pytest.raises(BackendError, match="not on CephFS") as e:
        await real.check_volume()
    assert e.value.errno == errno.EINVAL
    with pytest.raises(BackendError) as e:
        await CephFSBackend(volume / "nope", {"emulated": True}, xattrs=ceph).check_volume()
    assert e.value.errno == errno.ENOENT
    ceph.fail_get["ceph.dir.rbytes"] = errno.EOPNOTSUPP
    with pytest.raises(BackendError) as e:
        await backend.check_volume()
    assert e.value.errno == errno.EOPNOTSUPP


@pytest.mark.trio
async def test_lifecycle(volume: Path, backend: CephFSBackend, ceph: EmulatedCephFS) -> None:
    await backend.create_scope("s1", QuotaLimits(limit_bytes=10 * MiB, limit_inodes=5))
    scope = volume / "s1"
    assert scope.is_dir()
    assert quota_xattr(ceph, scope, MAX_BYTES) == 10 * MiB
    assert quota_xattr(ceph, scope, MAX_FILES) == 6  # the scope directory counts itself
    assert await backend.describe_scope("s1") == QuotaUsage(
        used_bytes=0, limit_bytes=10 * MiB, used_inodes=0, limit_inodes=5)

    # CephFS refuses what passes the limits; the figures follow the tree
    ceph.mkdir(scope / "vf")
    ceph.write(scope / "vf" / "big", b"\0" * (6 * MiB))
    ceph.write(scope / "small", b"\0" * (4 * MiB))
    with pytest.raises(OSError) as e:
        ceph.write(scope / "small", b"\0", append=True)
    assert e.value.errno == errno.EDQUOT
    for name in ("c", "d"):
        ceph.create(scope / name)
    with pytest.raises(OSError) as e:  # vf, big, small, c, d: five entries below the scope
        ceph.create(scope / "e")
    assert e.value.errno == errno.EDQUOT
    assert await backend.describe_scope("s1") == QuotaUsage(
        used_bytes=tree_bytes(scope), limit_bytes=10 * MiB, used_inodes=5, limit_inodes=5)

    # raising the limits lets writes through again
    await backend.update_scope("s1", QuotaLimits(limit_bytes=20 * MiB, limit_inodes=10))
    assert quota_xattr(ceph, scope, MAX_FILES) == 11
    ceph.write(scope / "small", b"\0" * MiB, append=True)
    ceph.create(scope / "e")
    usage = await backend.describe_scope("s1")
    assert usage == QuotaUsage(11 * MiB, 20 * MiB, 6, 10)

    # update with one limit 0 lifts only that one; max_bytes then reads as absent/0
    await backend.update_scope("s1", QuotaLimits(limit_bytes=0, limit_inodes=10))
    assert quota_xattr(ceph, scope, MAX_BYTES) == 0
    assert (await backend.describe_scope("s1")) == QuotaUsage(11 * MiB, None, 6, 10)

    # unset lifts both: the quota names vanish
    await backend.unset_scope("s1")
    assert quota_xattr(ceph, scope, MAX_BYTES) is None
    assert quota_xattr(ceph, scope, MAX_FILES) is None
    assert (await backend.describe_scope("s1")) == QuotaUsage(11 * MiB, None, 6, None)
    ceph.write(scope / "huge", b"\0" * (30 * MiB))  # nothing refuses now

    # delete refuses while entries exist, and leaves everything as it was
    with pytest.raises(BackendError) as e:
        await backend.delete_scope("s1")
    assert e.value.errno == errno.ENOTEMPTY
    assert scope.is_dir()
    remove_tree(scope, keep_top=True)
    await backend.delete_scope("s1")
    assert not scope.exists()
    await backend.delete_scope("s1")  # gone already: nothing to do
    assert await backend.describe_scope("s1") is None


@pytest.mark.trio
async def test_create_without_limits_sets_no_quota(volume: Path, backend: CephFSBackend,
                                                   ceph: EmulatedCephFS) -> None:
    """A new directory has no quota: zeros are not written (a client without the `p` cap can
    still create unlimited scopes)."""
    await backend.create_scope("s0", QuotaLimits())
    assert not [c for c in ceph.calls if c[0] == "set"]
    assert await backend.describe_scope("s0") == QuotaUsage(0, None, 0, None)
    await backend.create_scope("s2", QuotaLimits(limit_bytes=MiB))
    assert [c[2] for c in ceph.calls if c[0] == "set"] == [MAX_BYTES]
    assert quota_xattr(ceph, volume / "s2", MAX_FILES) == 0


@pytest.mark.trio
async def test_failures_map_to_backend_error(volume: Path, backend: CephFSBackend,
                                             ceph: EmulatedCephFS) -> None:
    # setting a quota refused (no `p` in the client's caps): the directory is removed again
    ceph.fail_set[MAX_FILES] = errno.EACCES
    with pytest.raises(BackendError, match=r"ceph\.quota\.max_files") as e:
        await backend.create_scope("s1", QuotaLimits(limit_bytes=MiB, limit_inodes=3))
    assert e.value.errno == errno.EACCES
    assert not (volume / "s1").exists()
    ceph.fail_set.clear()

    await backend.create_scope("s1", QuotaLimits(limit_bytes=MiB))
    with pytest.raises(BackendError) as e:  # exists already
        await backend.create_scope("s1", QuotaLimits())
    assert e.value.errno == errno.EEXIST
    ceph.fail_get["ceph.dir.rbytes"] = errno.EIO
    with pytest.raises(BackendError, match=r"ceph\.dir\.rbytes") as e:
        await backend.describe_scope("s1")
    assert e.value.errno == errno.EIO
    ceph.fail_get.clear()

    # an update whose second attribute is refused puts the first one back
    ceph.fail_set[MAX_FILES] = errno.EACCES
    with pytest.raises(BackendError) as e:
        await backend.update_scope("s1", QuotaLimits(limit_bytes=2 * MiB, limit_inodes=9))
    assert e.value.errno == errno.EACCES
    assert quota_xattr(ceph, volume / "s1", MAX_BYTES) == MiB
    ceph.fail_set.clear()

    with pytest.raises(BackendError) as e:
        await backend.update_scope("missing", QuotaLimits(limit_bytes=MiB))
    assert e.value.errno == errno.ENOENT
    with pytest.raises(BackendError) as e:
        await backend.unset_scope("missing")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(BackendError) as e:
        await backend.update_scope("s1", QuotaLimits(limit_bytes=-1))
    assert e.value.errno == errno.EINVAL
    assert await backend.describe_scope("missing") is None


@pytest.mark.trio
async def test_garbage_xattr_value_is_an_error(volume: Path) -> None:
    class Garbage:
        def get(self, path: str, name: str) -> bytes:
            return b"12 apples"

        def set(self, path: str, name: str, value: bytes) -> None:
            raise AssertionError("not called")

    (volume / "s").mkdir()
    backend = CephFSBackend(volume, {"emulated": True}, xattrs=Garbage())
    with pytest.raises(BackendError, match="not a number"):
        await backend.describe_scope("s")


@pytest.mark.trio
async def test_xattr_calls_run_off_the_event_loop(volume: Path, ceph: EmulatedCephFS) -> None:
    threads: set[int] = set()

    class Recording:
        def get(self, path: str, name: str) -> bytes:
            threads.add(threading.get_ident())
            return ceph.get(path, name)

        def set(self, path: str, name: str, value: bytes) -> None:
            threads.add(threading.get_ident())
            ceph.set(path, name, value)

    backend = CephFSBackend(volume, {"emulated": True}, xattrs=Recording())
    await backend.create_scope("s", QuotaLimits(limit_bytes=MiB, limit_inodes=2))
    await backend.describe_scope("s")
    await backend.unset_scope("s")
    assert threads and threading.get_ident() not in threads


# -- a real CephFS ------------------------------------------------------------------------------


def _mounted_cephfs() -> str | None:
    """A CephFS mounted on this machine (kernel client or ceph-fuse), if there is one."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] in ("ceph", "fuse.ceph-fuse"):
                return fields[1]
    return None


CEPHFS_PATH = os.environ.get("FUSEGW_CEPHFS_PATH") or _mounted_cephfs()


@pytest.mark.skipif(not CEPHFS_PATH,
                    reason="no CephFS on this machine: /proc/self/mounts lists no ceph or "
                           "fuse.ceph-fuse mount and FUSEGW_CEPHFS_PATH names none (a Ceph "
                           "cluster needs monitors, OSDs and an MDS this machine does not run); "
                           "the emulated CephFS tests above cover the protocol")
@pytest.mark.trio
async def test_real_cephfs() -> None:
    """Against a real CephFS directory (FUSEGW_CEPHFS_PATH); the client needs the `p` cap.

    rstats propagate lazily, so figures are polled with a deadline.
    """
    assert CEPHFS_PATH
    volume = Path(CEPHFS_PATH) / f"fusegw-test-{uuid.uuid4().hex[:8]}"
    volume.mkdir()
    backend = CephFSBackend(volume)
    try:
        await backend.check_volume()
        await backend.create_scope("s1", QuotaLimits(limit_bytes=8 * MiB, limit_inodes=4))
        usage = await backend.describe_scope("s1")
        assert usage is not None
        assert (usage.limit_bytes, usage.limit_inodes, usage.used_inodes) == (8 * MiB, 4, 0)
        (volume / "s1" / "f").write_bytes(b"\0" * MiB)
        with trio.fail_after(60):
            while True:
                usage = await backend.describe_scope("s1")
                assert usage is not None
                if usage.used_bytes == MiB and usage.used_inodes == 1:
                    break
                await trio.sleep(0.5)  # polling the lazily propagated rstat, with a deadline
        await backend.update_scope("s1", QuotaLimits(limit_bytes=16 * MiB))
        usage = await backend.describe_scope("s1")
        assert usage is not None and (usage.limit_bytes, usage.limit_inodes) == (16 * MiB, None)
        await backend.unset_scope("s1")
        usage = await backend.describe_scope("s1")
        assert usage is not None and (usage.limit_bytes, usage.limit_inodes) == (None, None)
        with pytest.raises(BackendError) as e:
            await backend.delete_scope("s1")
        assert e.value.errno == errno.ENOTEMPTY
        (volume / "s1" / "f").unlink()
        await backend.delete_scope("s1")
        assert not (volume / "s1").exists()
    finally:
        remove_tree(volume)

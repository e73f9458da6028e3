"""The btrfs backend against a real btrfs on a loop device, driven directly (no gateway).

Figures are cross-checked with what `btrfs qgroup show --raw` prints, parsed here on its own;
the limit is proven real by the kernel refusing a write with EDQUOT.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio
from btrfs_fixtures import btrfs_volume, make_btrfs  # noqa: F401
from conftest import wait_for

from backends.base import BackendError, QuotaLimits, QuotaUsage, run_command
from backends.btrfs import BtrfsBackend

KiB = 1024
MiB = 1024 * KiB
EMPTY_SUBVOLUME_BYTES = 16 * KiB  # one metadata node: the empty subvolume's root tree
DEADLINE = 20.0


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def qgroups(volume: Path) -> dict[str, tuple[int, int | None]]:
    """qgroupid -> (referenced, max referenced or None) as `btrfs qgroup show -re --raw` says.

    Format (btrfs-progs 6.2), after two header lines:
        0/256            16384        16384         1048576           none   s1
    """
    out = sh("btrfs", "qgroup", "show", "-re", "--raw", str(volume)).stdout
    rows: dict[str, tuple[int, int | None]] = {}
    for line in out.splitlines()[2:]:
        qgroupid, rfer, _excl, max_rfer, *_ = line.split()
        rows[qgroupid] = (int(rfer), None if max_rfer == "none" else int(max_rfer))
    return rows


def rootid(path: Path) -> int:
    return int(sh("btrfs", "inspect-internal", "rootid", str(path)).stdout)


def is_subvolume(path: Path) -> bool:
    return sh("btrfs", "subvolume", "show", str(path), check=False).returncode == 0


async def poll(fetch: Callable[[], Awaitable[QuotaUsage | None]],
               done: Callable[[QuotaUsage], bool], what: str) -> QuotaUsage:
    """Fetch until done(result) or fail at the deadline (qgroup figures move at commit)."""
    with trio.move_on_after(DEADLINE):
        while True:
            usage = await fetch()
            assert usage is not None
            if done(usage):
                return usage
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {usage}")


def qgroup_gone(volume: Path, qgroupid: str) -> None:
    """Wait (with a deadline) until the kernel has dropped a deleted subvolume's qgroup: it
    goes once the cleaner has freed the subvolume, after `subvolume delete` returned."""
    sh("btrfs", "subvolume", "sync", str(volume))
    wait_for(lambda: qgroupid not in qgroups(volume), DEADLINE, f"qgroup {qgroupid} to go")


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One btrfs with quotas enabled (by the backend) for the whole module."""
    with make_btrfs(tmp_path_factory.mktemp("btrfs")) as mountpoint:
        trio.run(BtrfsBackend(mountpoint).check_volume)
        yield mountpoint


@pytest.fixture
def backend(volume: Path) -> BtrfsBackend:
    return BtrfsBackend(volume)


def new_name() -> str:
    return uuid.uuid4().hex


# -- volume -------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_check_volume_enables_quotas(btrfs_volume: Path) -> None:  # noqa: F811
    before = sh("btrfs", "qgroup", "show", str(btrfs_volume), check=False)
    assert before.returncode != 0 and "quotas not enabled" in before.stderr

    await BtrfsBackend(btrfs_volume).check_volume()
    assert "0/5" in qgroups(btrfs_volume)
    status = sh("btrfs", "quota", "rescan", "-s", str(btrfs_volume)).stdout
    assert "no rescan operation in progress" in status
    await BtrfsBackend(btrfs_volume).check_volume()  # already enabled: fine


@pytest.mark.trio
async def test_check_volume_refuses_other_filesystems(tmp_path: Path) -> None:
    fstype = sh("findmnt", "-n", "-o", "FSTYPE", "-T", str(tmp_path)).stdout.strip()
    assert fstype and fstype != "btrfs", "the test needs a tmp dir that is not on btrfs"
    with pytest.raises(BackendError) as info:
        await BtrfsBackend(tmp_path).check_volume()
    assert f"{tmp_path} is not on btrfs (found {fstype})" in str(info.value)
    assert info.value.errno == errno.EINVAL


# -- scopes -------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_create_with_limit(backend: BtrfsBackend, volume: Path) -> None:
    name = new_name()
    await backend.create_scope(name, QuotaLimits(limit_bytes=MiB))
    path = volume / name
    assert is_subvolume(path)
    assert os.stat(path).st_ino == 256
    assert qgroups(volume)[f"0/{rootid(path)}"][1] == MiB

    usage = await backend.describe_scope(name)
    assert usage is not None
    assert usage.used_bytes is not None and usage.used_bytes <= EMPTY_SUBVOLUME_BYTES
    assert usage.limit_bytes == MiB
    assert usage.used_inodes is None and usage.limit_inodes is None


@pytest.mark.trio
async def test_create_unlimited(backend: BtrfsBackend, volume: Path) -> None:
    name = new_name()
    await backend.create_scope(name, QuotaLimits())
    assert qgroups(volume)[f"0/{rootid(volume / name)}"][1] is None
    usage = await backend.describe_scope(name)
    assert usage is not None and usage.limit_bytes is None


@pytest.mark.trio
async def test_describe_counts_written_bytes(backend: BtrfsBackend, volume: Path) -> None:
    name = new_name()
    await backend.create_scope(name, QuotaLimits(limit_bytes=10 * MiB))
    (volume / name / "data").write_bytes(os.urandom(8192))
    sh("sync")

    usage = await poll(lambda: backend.describe_scope(name),
                       lambda u: (u.used_bytes or 0) >= 8192, "8192 bytes accounted")
    assert usage.used_bytes is not None
    assert 8192 <= usage.used_bytes <= 8192 + EMPTY_SUBVOLUME_BYTES
    assert usage.limit_bytes == 10 * MiB
    assert qgroups(volume)[f"0/{rootid(volume / name)}"] == (usage.used_bytes, 10 * MiB)


@pytest.mark.trio
async def test_kernel_refuses_writes_past_the_limit(backend: BtrfsBackend, volume: Path) -> None:
    name = new_name()
    await backend.create_scope(name, QuotaLimits(limit_bytes=MiB))
    chunk = os.urandom(64 * KiB)
    written = 0
    fd = os.open(volume / name / "big", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as info:  # from write() or fsync(), whichever reserves
            while written < 8 * MiB:
                written += os.write(fd, chunk)
                os.fsync(fd)
    finally:
        os.close(fd)
    assert info.value.errno == errno.EDQUOT
    assert written <= MiB


@pytest.mark.trio
async def test_update_and_unset(backend: BtrfsBackend, volume: Path) -> None:
    name = new_name()
    await backend.create_scope(name, QuotaLimits(limit_bytes=MiB))
    qgroupid = f"0/{rootid(volume / name)}"

    await backend.update_scope(name, QuotaLimits(limit_bytes=3 * MiB))
    assert qgroups(volume)[qgroupid][1] == 3 * MiB
    usage = await backend.describe_scope(name)
    assert usage is not None and usage.limit_bytes == 3 * MiB

    await backend.unset_scope(name)
    assert qgroups(volume)[qgroupid][1] is None
    usage = await backend.describe_scope(name)
    assert usage is not None and usage.limit_bytes is None

    await backend.update_scope(name, QuotaLimits(limit_bytes=2 * MiB))
    assert qgroups(volume)[qgroupid][1] == 2 * MiB
    await backend.update_scope(name, QuotaLimits(limit_bytes=0))  # 0 = unlimited
    assert qgroups(volume)[qgroupid][1] is None


@pytest.mark.trio
async def test_delete_refuses_non_empty_then_deletes(backend: BtrfsBackend, volume: Path) -> None:
    name = new_name()
    path = volume / name
    await backend.create_scope(name, QuotaLimits(limit_bytes=MiB))
    qgroupid = f"0/{rootid(path)}"
    (path / "file").write_bytes(b"x")

    with pytest.raises(BackendError) as info:
        await backend.delete_scope(name)
    assert info.value.errno == errno.ENOTEMPTY
    assert is_subvolume(path) and (path / "file").exists()

    (path / "file").unlink()
    await backend.delete_scope(name)
    assert not os.path.lexists(path)
    qgroup_gone(volume, qgroupid)


@pytest.mark.trio
async def test_failing_limit_leaves_no_subvolume(backend: BtrfsBackend, volume: Path) -> None:
    name = new_name()
    seen_ids: list[int] = []

    async def failing_limit(argv: Sequence[str], timeout: float = 30.0) -> str:
        if list(argv[1:3]) == ["qgroup", "limit"]:
            seen_ids.append(rootid(Path(argv[-1])))
            raise BackendError(f"{' '.join(argv)}: injected failure")
        return await run_command(argv, timeout)

    backend.run = failing_limit
    with pytest.raises(BackendError, match="injected failure"):
        await backend.create_scope(name, QuotaLimits(limit_bytes=MiB))
    assert not os.path.lexists(volume / name)
    assert name not in sh("btrfs", "subvolume", "list", str(volume)).stdout
    assert seen_ids
    qgroup_gone(volume, f"0/{seen_ids[0]}")


@pytest.mark.trio
async def test_plain_directory_is_not_a_scope(backend: BtrfsBackend, volume: Path) -> None:
    name = new_name()
    (volume / name).mkdir()
    with pytest.raises(BackendError, match="plain directory, not a btrfs subvolume"):
        await backend.create_scope(name, QuotaLimits(limit_bytes=MiB))
    assert not is_subvolume(volume / name)
    # Limiting it would reach the enclosing (top-level) subvolume: refused instead.
    with pytest.raises(BackendError, match="not a btrfs subvolume"):
        await backend.update_scope(name, QuotaLimits(limit_bytes=MiB))
    assert qgroups(volume)["0/5"][1] is None
    with pytest.raises(BackendError) as info:
        await backend.describe_scope(new_name())
    assert info.value.errno == errno.ENOENT


@pytest.mark.trio
async def test_missing_btrfs_command(backend: BtrfsBackend, volume: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no btrfs on it
    name = new_name()
    with pytest.raises(BackendError) as info:
        await backend.create_scope(name, QuotaLimits(limit_bytes=MiB))
    assert "btrfs" in str(info.value) and "not found" in str(info.value)
    assert info.value.errno == errno.ENOENT
    assert not os.path.lexists(volume / name)

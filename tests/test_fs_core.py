"""The FUSE operations and their rules driven in-process, without a mount (as s3ql tests its
operations): the handler guard, inode numbering, and the growth bounds admission uses."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
from loopfs import make_loop_fs

from fusegw.fs import numbers
from fusegw.fs.guard import HANDLERS
from fusegw.fs.operations import GatewayOperations
from fusegw.fs.xattrs import UsageXattrs
from fusegw.ledger import Ledger
from fusegw.ledger.growth import (
    TRACK_SIZE,
    entry_growth,
    extents_added,
    tree_growth,
    write_growth,
    xattr_growth,
)
from fusegw.state import StateDir


def make_ops(volume: Path, cls: type[GatewayOperations] = GatewayOperations
             ) -> GatewayOperations:
    volume.mkdir(exist_ok=True)
    state = StateDir(volume)
    state.open()
    ledger = Ledger(volume, state)
    root_fd = os.open(volume, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return cls(root_fd, ledger, UsageXattrs(ledger))


async def fuse_errno(call: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await call
    return info.value.errno


def test_every_pyfuse3_handler_is_guarded() -> None:
    """Each request handler pyfuse3 knows, overridden or inherited, is wrapped."""
    assert {"lookup", "write", "forget", "readdir", "create"} <= HANDLERS
    for name in HANDLERS:
        assert getattr(getattr(GatewayOperations, name), "__guarded__", False), name


@pytest.mark.trio
async def test_a_handler_added_later_is_guarded_and_its_bug_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A subclass's new handler is protected without any list: a KeyError in it is a bug,
    answered EIO and logged with its traceback, never a silent ESTALE."""

    class Broken(GatewayOperations):
        async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
            raise KeyError("a bug")

    ops = make_ops(tmp_path / "vol", Broken)
    with caplog.at_level(logging.ERROR, "fusegw.fs"):
        assert await fuse_errno(ops.statfs(None)) == errno.EIO  # type: ignore[arg-type]
    assert "handler statfs failed" in caplog.text and "KeyError" in caplog.text


@pytest.mark.trio
async def test_forget_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failure inside forget is logged and swallowed: an exception there ends the session."""
    ops = make_ops(tmp_path / "vol")

    def boom(ino: int, count: int) -> None:
        raise RuntimeError("broken table")

    ops.inodes.forget = boom  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, "fusegw.fs"):
        await ops.forget([(12345, 1)])
    assert "forget failed" in caplog.text


@pytest.mark.trio
async def test_unknown_inodes_and_handles_get_estale_and_ebadf(tmp_path: Path) -> None:
    ops = make_ops(tmp_path / "vol")
    assert await fuse_errno(ops.getattr(987654321, None)) == errno.ESTALE  # type: ignore[arg-type]
    assert await fuse_errno(ops.write(4242, 0, b"x")) == errno.EBADF
    assert await fuse_errno(ops.readdir(4242, 0, None)) == errno.EBADF  # type: ignore[arg-type]


@pytest.mark.trio
async def test_lookup_numbers_are_the_backing_inode(tmp_path: Path) -> None:
    """A lookup answers the backing st_ino as the node id; the hidden state directory and a
    missing name answer nothing (ENOENT / a cacheable negative entry)."""
    ops = make_ops(tmp_path / "vol")
    (tmp_path / "vol" / "a").mkdir()
    entry = await ops.lookup(pyfuse3.ROOT_INODE, b"a", None)  # type: ignore[arg-type]
    assert entry.st_ino == os.stat(tmp_path / "vol" / "a").st_ino
    assert (await ops.lookup(pyfuse3.ROOT_INODE, b"gone", None)).st_ino == 0  # type: ignore[arg-type]
    assert await fuse_errno(ops.lookup(pyfuse3.ROOT_INODE, b".fusegw", None)) == errno.ENOENT  # type: ignore[arg-type]


def stat_of(**fields: int) -> os.stat_result:
    """A stat result with the given fields (the rest zero)."""
    values = [0] * 10
    order = ["st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
             "st_atime", "st_mtime", "st_ctime"]
    for k, v in fields.items():
        if k in order:
            values[order.index(k)] = v
    extra = {"st_blksize": fields.get("st_blksize", 4096), "st_blocks": fields.get("st_blocks", 0)}
    return os.stat_result(values, extra)


def test_numbers_on_the_volume_device_are_st_ino_and_elsewhere_composed() -> None:
    root = stat_of(st_dev=10, st_ino=2)
    n = numbers.Numbering(root)
    assert n.natural(root, None) == 1
    assert n.natural(stat_of(st_dev=10, st_ino=777), None) == 777
    btrfs = (0x4D).to_bytes(4, "little") + (300).to_bytes(8, "little") \
        + (258).to_bytes(8, "little") + (7).to_bytes(4, "little")
    a = n.natural(stat_of(st_dev=11, st_ino=300), btrfs)
    assert a == 258 << numbers.INO_BITS | 300
    assert numbers.generation(btrfs) == 7
    ext4 = (1).to_bytes(4, "little") + (99).to_bytes(4, "little") + (5).to_bytes(4, "little")
    assert numbers.generation(ext4) == 5
    assert n.natural(stat_of(st_dev=11, st_ino=1 << 41), None) is None
    spare = n.spare({numbers.SPARE_BASE + 1})
    assert spare == numbers.SPARE_BASE + 2


def test_growth_bounds() -> None:
    """Admission's upper bounds: data blocks, directory blocks, xattr blocks, extent trees."""
    full = stat_of(st_size=8192, st_blocks=16)
    assert write_growth(full, 0, 8192) == 0  # overwrite of allocated blocks
    assert write_growth(full, 8192, 1) == 4096
    assert write_growth(stat_of(st_size=8192, st_blocks=8), 0, 8192) == 8192  # holes
    assert entry_growth(4096) == 3 * 4096
    assert xattr_growth(stat_of(), b"user.big", b"v" * 3000) == 4096
    assert xattr_growth(stat_of(), b"user.huge", b"v" * 10000) == 4 * 4096
    assert extents_added(full, 0, 100) == 0
    assert extents_added(full, 8192, 4096) == 0  # a small append continues the extent
    assert extents_added(stat_of(st_size=TRACK_SIZE, st_blocks=TRACK_SIZE // 512),
                         TRACK_SIZE, 4096) == 1
    assert extents_added(full, 65536, 512) == 2  # a hole made
    assert tree_growth(0, 4096) == 0
    assert tree_growth(2, 4096) == 2 * 4096
    assert tree_growth(341, 4096) == 3 * 4096


@pytest.fixture
def tiny_ext4(tmp_path: Path) -> Iterator[Path]:
    """An ext4 with 64 inodes on a loop device, so a freed inode number is soon reused."""
    with make_loop_fs(tmp_path / "ext4", "ext4", "16M", "-N", "64", "-m", "0") as mnt:
        yield mnt


def test_a_reused_inode_number_carries_the_node_on(tiny_ext4: Path) -> None:
    """When the backing filesystem gives a freed inode's number to a new file while the kernel
    still holds the old node (no descriptor pins it), the new file gets the same FUSE number
    (its natural one), the node's lookups add up, and it reaches the new file."""
    volume = tiny_ext4 / "vol"
    volume.mkdir()
    ops = make_ops(volume)
    table = ops.inodes
    table.max_open = 1
    names = []
    try:
        while True:  # use up the inodes
            names.append(f"f{len(names)}")
            (volume / names[-1]).write_bytes(b"old")
    except OSError as e:
        assert e.errno == errno.ENOSPC
        names.pop()
    victim = names[3]
    st = os.stat(volume / victim)
    node = table.adopt(table.root, victim.encode(), st)
    assert node.ino == st.st_ino and node._fd == -1  # a handle, no descriptor
    os.unlink(volume / victim)
    (volume / "new").write_bytes(b"new file")
    st_new = os.stat(volume / "new")
    assert st_new.st_ino == st.st_ino  # the only free inode
    again = table.adopt(table.root, b"new", st_new)
    assert again.ino == st.st_ino and again.lookups == 2 and again.natural
    assert table.get(st.st_ino) is again
    assert os.stat(again.fd).st_size == len(b"new file")
    table.forget(st.st_ino, 2)
    with pytest.raises(OSError) as info:
        table.get(st.st_ino)
    assert info.value.errno == errno.ESTALE

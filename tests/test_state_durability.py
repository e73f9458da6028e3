"""Durability of the state files (issue 9): one atomic-write helper, file and directory fsynced.

Every state file (`.fusegw/*.json`, `FORMAT`, `version.txt`, the XFS projid/projects files) is
written by `backends.atomic.write_atomic`: a temporary file beside it, fsync, rename, fsync of
the directory. The fsync and rename calls are recorded in-process (wrapping `os.fsync` and
`os.replace`) to show the directory is fsynced after the rename; a real full filesystem (a
small tmpfs) shows that a failed write leaves the old file and no temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import fill_until_refused

from fusegw.ids import QuotaScopeID
from fusegw.layout import prepare_volume
from fusegw.ledger import Ledger
from fusegw.state import StateDir
from fusegw.state.lease import LEASE_FILE, Lease

Event = tuple[str, int, bool]  # ("fsync", inode, is a directory) or ("rename", inode, False)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Every os.fsync (which inode, whether a directory) and os.replace/os.rename (the inode
    renamed into place), in order."""
    events: list[Event] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    def renamer(real: Callable[..., None]) -> Callable[..., None]:
        def rename(src: Any, dst: Any, **kw: Any) -> None:
            real(src, dst, **kw)
            events.append(("rename", os.lstat(dst).st_ino, False))
        return rename

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))
    return events


def assert_durable(events: list[Event], path: Path) -> None:
    """`path` was fsynced as a file, renamed into place, and then its directory fsynced."""
    ino, dir_ino = path.stat().st_ino, path.parent.stat().st_ino
    renames = [i for i, e in enumerate(events) if e == ("rename", ino, False)]
    assert renames, f"{path} was not renamed into place: {events}"
    at = renames[-1]
    assert ("fsync", ino, False) in events[:at], f"{path} not fsynced before the rename"
    assert ("fsync", dir_ino, True) in events[at + 1:], \
        f"{path.parent} not fsynced after the rename: {events}"


@pytest.fixture
def umask0() -> Iterator[None]:
    """The daemon runs with umask 0: the helper must name every mode itself."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real filesystem that fills up (ENOSPC) at once."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- the helper's durability ---------------------------------------------------------------------


def test_state_file_write_fsyncs_file_and_directory(tmp_path: Path, calls: list[Event],
                                                    umask0: None) -> None:
    """ledger.json, dirty.json, registry.json, lease.json... all go through StateDir.write."""
    state = StateDir(tmp_path)
    state.open()
    state.write("dirty.json", {"dirty": ["a"]})
    path = tmp_path / ".fusegw" / "dirty.json"
    assert_durable(calls, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["dirty"] == ["a"]


def test_version_txt_written_durably_with_mode_0644_under_umask_0(
        tmp_path: Path, calls: list[Event], umask0: None) -> None:
    prepare_volume(tmp_path)
    path = tmp_path / "version.txt"
    assert path.read_text() == "3\n"
    assert_durable(calls, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tiny_fs: Path) -> None:
    """ENOSPC in the middle of a write: the old content stays, nothing else is left behind."""
    state = StateDir(tiny_fs)
    state.open()
    state.write("ledger.json", {"scopes": {"old": 1}})
    before = (tiny_fs / ".fusegw" / "ledger.json").read_bytes()
    fill_until_refused(tiny_fs / "filler", errno.ENOSPC)
    names = sorted(os.listdir(tiny_fs / ".fusegw"))
    with pytest.raises(OSError) as raised:
        state.write("ledger.json", {"scopes": {"new": "x" * 200_000}})
    assert raised.value.errno == errno.ENOSPC
    assert (tiny_fs / ".fusegw" / "ledger.json").read_bytes() == before
    assert sorted(os.listdir(tiny_fs / ".fusegw")) == names


# -- what the gateway makes of failed or torn state files ----------------------------------------


def test_unparseable_dirty_json_marks_every_scope(tmp_path: Path) -> None:
    """A dirty.json that exists but cannot be parsed says nothing can be trusted: every scope
    is rebuilt, however good the snapshot looks."""
    state = StateDir(tmp_path)
    state.open()
    ledger = Ledger(tmp_path, state)
    qsids = [QuotaScopeID.parse(f"user:{n:08x}-0000-4000-8000-000000000000") for n in (1, 2)]
    for q in qsids:
        ledger.add_scope(q, 0, 0)
    state.write("ledger.json", {"scopes": {q.pathname: {"used_bytes": 4096, "used_inodes": 1}
                                           for q in qsids}})
    (tmp_path / ".fusegw" / "dirty.json").write_bytes(b'{"dirty": ["')  # torn
    assert sorted(s.pathname for s in ledger.load()) == sorted(q.pathname for q in qsids)


def test_lease_is_taken_and_renewed_in_place_on_a_full_filesystem(tiny_fs: Path) -> None:
    """The lease is rewritten in place (its block reused), so a start on a full disk takes it;
    a clean stop marks it released rather than removing it."""
    state = StateDir(tiny_fs)
    state.open()
    lease = Lease(state)
    lease.acquire()
    lease.release()
    path = tiny_fs / ".fusegw" / LEASE_FILE
    assert path.exists(), "release keeps the file, to be rewritten by the next start"
    ino = path.stat().st_ino
    fill_until_refused(tiny_fs / "filler", errno.ENOSPC)

    lease = Lease(state)
    lease.acquire()
    lease.renew()
    assert path.stat().st_ino == ino
    record = state.read(LEASE_FILE)
    assert record is not None and record["pid"] == os.getpid()
    lease.release()
    released = state.read(LEASE_FILE)
    assert released is not None and released["released"] is True
    assert released["renewed_at"] == 0  # older gateways read it as long expired

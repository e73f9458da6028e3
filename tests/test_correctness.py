"""Regression tests for the defects public test suites (pjdfstest, fsx, fsstress) and a torture
run found in the gateway (issue 9), each named after the bug, on a live mount."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from btrfs_fixtures import make_btrfs
from conftest import (
    Gateway,
    du_bytes,
    fill_until_refused,
    inodes_below,
    new_qsid,
    run_as,
    scope_hex,
    wait_for,
)
from test_posix import USER, VFolder, open_to_others, renameat2

MiB = 2**20
RENAME_WHITEOUT = 4


def expect_errno(code: int, fn: object, *args: object) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.errno == code, info.value


def describe(gw: Gateway, qsid: str) -> dict[str, int]:
    return gw.describe(qsid)


def new_vfolder(gw: Gateway, limit_bytes: int | None = None) -> tuple[str, VFolder]:
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=limit_bytes)
    mnt = gw.make_vfolder(qsid)
    return qsid, VFolder(gw, mnt, gw.source / mnt.relative_to(gw.mountpoint))


# -- 1. O_NOFOLLOW ---------------------------------------------------------------------------


def test_o_nofollow_open_of_a_regular_file_succeeds(gateway: Gateway) -> None:
    """open(O_NOFOLLOW) of a regular file reads and writes it (it failed with ELOOP); of a
    symlink it still fails with ELOOP."""
    _, vf = new_vfolder(gateway)
    f = vf.mnt / "f"
    f.write_bytes(b"data")
    fd = os.open(f, os.O_RDWR | os.O_NOFOLLOW)
    try:
        assert os.read(fd, 10) == b"data"
        os.write(fd, b"!")
    finally:
        os.close(fd)
    assert (vf.src / "f").read_bytes() == b"data!"
    (vf.mnt / "lnk").symlink_to("f")
    expect_errno(errno.ELOOP, os.open, vf.mnt / "lnk", os.O_RDONLY | os.O_NOFOLLOW)


def test_mv_between_vfolders_falls_back_to_copy(gateway: Gateway) -> None:
    """`mv` from one vfolder to another (rename answers EXDEV) copies and deletes: the tree
    arrives whole, the source is gone, and both vfolders' figures follow."""
    qsid, a = new_vfolder(gateway)
    b = VFolder(gateway, gateway.make_vfolder(qsid), Path())
    (a.mnt / "tree" / "sub").mkdir(parents=True)
    (a.mnt / "tree" / "sub" / "f").write_bytes(b"x" * 10_000)
    (a.mnt / "tree" / "lnk").symlink_to("sub/f")
    r = subprocess.run(["mv", str(a.mnt / "tree"), str(b.mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (a.mnt / "tree").exists()
    assert (b.mnt / "tree" / "sub" / "f").read_bytes() == b"x" * 10_000
    assert os.readlink(b.mnt / "tree" / "lnk") == "sub/f"
    assert describe(gateway, qsid)["used_bytes"] == du_bytes(gateway.source / scope_hex(qsid))


def test_cp_a_out_of_the_mount_keeps_everything(gateway: Gateway, tmp_path: Path) -> None:
    """`cp -a` from a vfolder to a native directory copies files, modes, times and symlinks."""
    _, vf = new_vfolder(gateway)
    (vf.mnt / "d").mkdir()
    (vf.mnt / "d" / "f").write_bytes(b"y" * 5000)
    os.chmod(vf.mnt / "d" / "f", 0o640)
    os.utime(vf.mnt / "d" / "f", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    (vf.mnt / "d" / "lnk").symlink_to("f")
    out = tmp_path / "out"
    r = subprocess.run(["cp", "-a", str(vf.mnt / "d"), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    st = os.stat(out / "f")
    assert (out / "f").read_bytes() == b"y" * 5000
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 1_600_000_000_000_000_000
    assert os.readlink(out / "lnk") == "f"


# -- 2. umask ---------------------------------------------------------------------------------


def test_umask_002_user_creates_group_writable_files(gateway: Gateway) -> None:
    """A user with umask 002 creates group-writable files, directories and fifos (the daemon's
    own umask no longer narrows them); umask 022 still gives 0644/0755; what the daemon writes
    itself keeps its own modes."""
    _, vf = new_vfolder(gateway)
    os.chown(vf.mnt, USER, USER)
    open_to_others(vf.mnt)
    r = run_as(USER, ["sh", "-c", "umask 002 && touch f && mkdir d && mkfifo p && "
                      "umask 022 && touch g && mkdir e"], cwd=vf.mnt)
    assert r.returncode == 0, r.stderr
    modes = {n: stat.S_IMODE(os.lstat(vf.mnt / n).st_mode) for n in "fdpge"}
    assert modes == {"f": 0o664, "d": 0o775, "p": 0o664, "g": 0o644, "e": 0o755}
    assert {n: stat.S_IMODE(os.lstat(vf.src / n).st_mode) for n in "fdpge"} == modes
    assert stat.S_IMODE(os.stat(gateway.source / "version.txt").st_mode) == 0o644
    for f in (gateway.source / ".fusegw").iterdir():
        assert not os.stat(f).st_mode & 0o077, f
    assert not os.stat(gateway.socket).st_mode & 0o007


# -- 3. stable st_ino ---------------------------------------------------------------------------


def inode_numbers(top: Path) -> dict[str, int]:
    """st_ino of every entry below top (links not followed), by relative path."""
    found: dict[str, int] = {}
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            p = Path(root, name)
            found[str(p.relative_to(top))] = os.lstat(p).st_ino
    return found


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def test_st_ino_is_the_backing_inode_and_stable_across_forget_and_restart(
        gateway: Gateway) -> None:
    """st_ino through the mount is the backing st_ino, readdir's d_ino agrees, a hard link
    shares it, and it does not change when another vfolder is created, after drop_caches
    (the kernel forgets the inodes) or across a gateway restart."""
    qsid, vf = new_vfolder(gateway)
    (vf.mnt / "sub").mkdir()
    for i in range(20):
        (vf.mnt / "sub" / f"f{i}").write_bytes(b"z")
    os.link(vf.mnt / "sub" / "f0", vf.mnt / "hard")
    before = inode_numbers(vf.mnt)
    assert before == inode_numbers(vf.src)
    assert before["hard"] == before["sub/f0"]
    with os.scandir(vf.mnt / "sub") as it:
        assert {e.name: e.inode() for e in it} == {
            k.split("/")[1]: v for k, v in before.items() if k.startswith("sub/")}
    gateway.make_vfolder(qsid)
    drop_caches()
    assert inode_numbers(vf.mnt) == before
    gateway.stop()
    gateway.start()
    assert inode_numbers(vf.mnt) == before


def test_btrfs_subvolumes_get_distinct_stable_inode_numbers(tmp_path: Path) -> None:
    """On btrfs every scope is a subvolume numbering its inodes from 256 again; through the
    mount no two live entries share an st_ino (hard links excepted), and the numbers survive
    drop_caches and a restart."""
    with make_btrfs(tmp_path / "btrfs") as source:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        gw = Gateway(source, mnt, tmp_path / "gw.sock", tmp_path / "gw.log", "bt",
                     ["--backend", "btrfs"], {})
        try:
            gw.start()
            for _ in range(2):
                qsid = new_qsid()
                gw.create_scope(qsid)
                v = gw.make_vfolder(qsid)
                (v / "a").write_bytes(b"a")
                (v / "b").write_bytes(b"b")
                os.link(v / "a", v / "a2")
            backing = inode_numbers(source)
            assert len(set(backing.values())) < len(backing) - 2  # btrfs repeats numbers
            seen = inode_numbers(mnt)
            distinct = {ino for path, ino in seen.items() if not path.endswith("/a2")}
            assert len(distinct) == len(seen) - 2
            drop_caches()
            assert inode_numbers(mnt) == seen
            gw.stop()
            gw.start()
            assert inode_numbers(mnt) == seen
        finally:
            gw.stop()


# -- 4. SUID/SGID ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", [
    "printf x >> f",  # O_WRONLY|O_APPEND: direct I/O
    "dd if=/dev/zero of=f bs=1 count=1 conv=notrunc status=none",  # O_WRONLY
    "exec 3<>f && printf y >&3",  # O_RDWR: the cached path
])
def test_suid_sgid_cleared_by_non_owner_write(gateway: Gateway, how: str) -> None:
    """A write by an unprivileged non-owner clears SUID and SGID (with group execute) on
    every write path, as on a local filesystem; SGID without group execute stays."""
    _, vf = new_vfolder(gateway)
    open_to_others(vf.mnt)
    for mode, expected in ((0o6777, 0o777), (0o6767, 0o2767)):
        f = vf.mnt / "f"
        f.write_bytes(b"0")
        os.chmod(f, mode)
        r = run_as(USER, ["sh", "-c", how], cwd=vf.mnt)
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(f).st_mode) == expected, (oct(mode), how)
        assert stat.S_IMODE(os.stat(vf.src / "f").st_mode) == expected
        f.unlink()


def test_suid_kept_when_root_writes(gateway: Gateway) -> None:
    """Root (CAP_FSETID) keeps the bits, as on a local filesystem."""
    _, vf = new_vfolder(gateway)
    f = vf.mnt / "f"
    f.write_bytes(b"0")
    os.chmod(f, 0o6755)
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6755


# -- 5. whiteouts ---------------------------------------------------------------------------


def test_whiteout_rename_is_counted(gateway: Gateway) -> None:
    """rename(RENAME_WHITEOUT) leaves a whiteout inode at the old name: the ledger counts it,
    so used_inodes and used_bytes match the disk and `quota check` finds no drift."""
    qsid, vf = new_vfolder(gateway, limit_bytes=100 * MiB)
    for i in range(5):
        (vf.mnt / f"f{i}").write_bytes(b"w" * 100)
        renameat2(vf.mnt / f"f{i}", vf.mnt / f"g{i}", RENAME_WHITEOUT)
    assert stat.S_ISCHR(os.lstat(vf.src / "f0").st_mode)
    scope = gateway.source / scope_hex(qsid)
    fig = describe(gateway, qsid)
    assert fig["used_inodes"] == inodes_below(scope)
    assert fig["used_bytes"] == du_bytes(scope)
    r = gateway.request("POST", "/quota-scope/check",
                        {"volume": gateway.volume, "qsid": qsid, "repair": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["consistent"] and body["ledger"] == body["disk"], body


# -- 8. growth the ledger must admit ------------------------------------------------------------


def settled_du(gw: Gateway, qsid: str) -> int:
    """du of the scope once everything is written back (ext4 allocates some blocks late)."""
    subprocess.run(["sync"], check=True)
    return du_bytes(gw.source / scope_hex(qsid))


def test_empty_files_in_a_full_scope_are_refused_for_their_directory_blocks(
        gateway: Gateway) -> None:
    """Creating thousands of empty files grows their directory: in a nearly full scope the
    creates get EDQUOT before the directory can pass the limit."""
    limit = 2 * MiB
    qsid, vf = new_vfolder(gateway, limit_bytes=limit)
    (vf.mnt / "fill").write_bytes(b"f" * (limit - 64 * 1024))
    refused = 0
    for i in range(5000):
        try:
            os.close(os.open(vf.mnt / f"empty-with-a-long-name-{i:05d}", os.O_CREAT | os.O_WRONLY))
        except OSError as e:
            assert e.errno == errno.EDQUOT
            refused += 1
    assert refused > 0
    assert settled_du(gateway, qsid) <= limit


def test_xattr_blocks_in_a_full_scope_are_refused(gateway: Gateway) -> None:
    """A 3,000-byte user.* attribute needs a block of its own on ext4: in a full scope it is
    refused with EDQUOT instead of passing the limit."""
    limit = 2 * MiB
    qsid, vf = new_vfolder(gateway, limit_bytes=limit)
    files = [vf.mnt / f"x{i}" for i in range(200)]
    for p in files:
        p.touch()
    fill_until_refused(vf.mnt / "fill", errno.EDQUOT)
    for p in files:
        expect_errno(errno.EDQUOT, os.setxattr, p, "user.big", b"v" * 3000)
    assert settled_du(gateway, qsid) <= limit
    os.unlink(vf.mnt / "fill")
    os.setxattr(files[0], "user.big", b"v" * 3000)  # with room it is stored
    assert os.getxattr(files[0], "user.big") == b"v" * 3000


def test_sparse_files_late_extent_blocks_never_pass_the_limit(gateway: Gateway) -> None:
    """Sparse files past four extents get an extent-tree block at writeback: writes are
    admitted with room for it, so after sync the scope is still within its limit."""
    limit = 2 * MiB
    qsid, vf = new_vfolder(gateway, limit_bytes=limit)
    done = False
    for n in range(400):
        fd = os.open(vf.mnt / f"sparse{n}", os.O_CREAT | os.O_WRONLY)
        try:
            for k in range(8):
                os.pwrite(fd, b"s" * 512, k * 65536)
        except OSError as e:
            assert e.errno == errno.EDQUOT
            done = True
        finally:
            os.close(fd)
        if done:
            break
    assert done
    assert settled_du(gateway, qsid) <= limit
    wait_for(lambda: describe(gateway, qsid)["used_bytes"] == settled_du(gateway, qsid),
             what="the ledger to settle on du")


WRITER = r"""
import errno, os, sys
kind, top, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = os.path.join(top, f"w{n}")
i = 0
try:
    while i < 4000:
        p = os.path.join(d, f"{kind}-entry-with-a-long-name-{i:05d}")
        if kind == "empty":
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY))
        elif kind == "xattr":
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY))
            os.setxattr(p, "user.big", b"v" * 3000)
        elif kind == "sparse":
            fd = os.open(p, os.O_CREAT | os.O_WRONLY)
            try:
                for k in range(8):
                    os.pwrite(fd, b"s" * 700, k * 40960)
            finally:
                os.close(fd)
        else:
            with open(p, "wb") as f:
                f.write(b"d" * 20000)
        i += 1
except OSError as e:
    if e.errno != errno.EDQUOT:
        raise
print(i)
"""


def test_sixteen_mixed_writers_never_take_du_past_the_limit(gateway: Gateway,
                                                            tmp_path: Path) -> None:
    """16 concurrent writers of four kinds (empty files, large xattrs, sparse files, data)
    fill a limited scope, three times over: after sync, `du -s -B1` of the scope is never
    above the limit, and the ledger meets du once quiet."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    limit = 3 * MiB
    for _ in range(3):
        qsid, vf = new_vfolder(gateway, limit_bytes=limit)
        kinds = ["empty", "xattr", "sparse", "data"] * 4
        for n in range(len(kinds)):
            (vf.mnt / f"w{n}").mkdir()
        procs = [subprocess.Popen(["python3", str(script), kind, str(vf.mnt), str(n)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for n, kind in enumerate(kinds)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        assert settled_du(gateway, qsid) <= limit
        wait_for(lambda q=qsid: describe(gateway, q)["used_bytes"] == settled_du(gateway, q),
                 what="the ledger to settle on du")


# -- entries outside vfolders -----------------------------------------------------------------


def test_only_the_layouts_directories_can_be_made_above_vfolder_roots(gateway: Gateway) -> None:
    """In a scope directory and the two fan-out levels only directories with the layout's
    names can be created (mkdir -p of a vfolder path works); files, symlinks, fifos, hard
    links and other names are refused with EPERM, as in the volume root."""
    qsid, vf = new_vfolder(gateway)
    scope = gateway.mountpoint / scope_hex(qsid)
    fid = uuid.uuid4().hex
    levels = [scope, scope / fid[0:2], scope / fid[0:2] / fid[2:4]]
    (vf.mnt / "f").write_bytes(b"f")
    for level in levels:
        level.mkdir(exist_ok=True)
        expect_errno(errno.EPERM, os.open, level / "file", os.O_CREAT | os.O_WRONLY)
        expect_errno(errno.EPERM, os.mkdir, level / "not-a-layout-name")
        expect_errno(errno.EPERM, os.symlink, "x", level / "lnk")
        expect_errno(errno.EPERM, os.mkfifo, level / "fifo")
        expect_errno(errno.EPERM, os.link, vf.mnt / "f", level / "hard")
    (levels[2] / fid[4:]).mkdir()
    (levels[2] / fid[4:] / "inside").write_bytes(b"ok")
    expect_errno(errno.EPERM, os.open, gateway.mountpoint / "file", os.O_CREAT | os.O_WRONLY)
    assert not any((gateway.source / scope_hex(qsid)).glob("*/*/file"))


# -- readdir --------------------------------------------------------------------------------


def test_readdir_lists_dot_and_dotdot_with_their_inode_numbers(gateway: Gateway) -> None:
    """`ls -a` shows `.` and `..`, with the directory's and its parent's st_ino; at the mount
    root `..` is the root itself (nothing outside the volume shows)."""
    _, vf = new_vfolder(gateway)
    (vf.mnt / "sub").mkdir()
    def listed(d: Path) -> dict[str, int]:
        out = subprocess.run(["ls", "-a1i", str(d)], capture_output=True, text=True,
                             check=True).stdout.split("\n")
        return {line.split()[1]: int(line.split()[0]) for line in out if line.strip()}

    sub = listed(vf.mnt / "sub")
    assert sub["."] == os.stat(vf.mnt / "sub").st_ino
    assert sub[".."] == os.stat(vf.mnt).st_ino
    root = listed(gateway.mountpoint)  # ls itself stats `..` of a mount's root
    assert root["."] == os.stat(gateway.mountpoint).st_ino == 1 and ".." in root
    names = subprocess.run(["ls", "-a1", str(vf.mnt)], capture_output=True, text=True,
                           check=True).stdout.split()
    assert names.count(".") == 1 and names.count("..") == 1 and "sub" in names

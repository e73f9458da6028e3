"""POSIX behaviour through a real fusegw mount: the gateway is a faithful passthrough.

Every test works on a live `fusegw mount` (the conftest fixtures) and checks what a program
sees through the mount point, and where it matters what landed on the backing volume.
Files live inside a vfolder unless the test is about the volume root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import Gateway, is_mounted, new_qsid, run_as, wait_for

MiB = 2**20
GiB = 2**30
USER = 1000  # an unprivileged uid that exists on the test host
USER_PYTHON = "/usr/bin/python3"  # readable by USER, unlike the venv's interpreter

libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


@contextlib.contextmanager
def raises_errno(code: int) -> Iterator[None]:
    """Assert that the block fails with OSError(code)."""
    with pytest.raises(OSError) as info:
        yield
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {info.value!r}"


def renameat2(old: Path, new: Path, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class VFolder:
    gw: Gateway
    mnt: Path  # the vfolder through the mount
    src: Path  # the same directory on the backing volume


@pytest.fixture
def vf(gateway: Gateway) -> VFolder:
    qsid = new_qsid()
    gateway.create_scope(qsid)
    mnt = gateway.make_vfolder(qsid)
    return VFolder(gateway, mnt, gateway.source / mnt.relative_to(gateway.mountpoint))


def open_to_others(path: Path) -> None:
    """Let other uids traverse to `path` (pytest's tmp directories are 0700): o+x on it and
    its ancestors below the system temp directory."""
    top = Path(tempfile.gettempdir()).resolve()
    for p in [path, *path.parents]:
        if p == top or p == Path("/"):
            break
        os.chmod(p, stat.S_IMODE(os.stat(p).st_mode) | stat.S_IXOTH)


def serving(gw: Gateway) -> bool:
    """The daemon lives, the mount answers and so does the control socket."""
    if not (gw.alive() and is_mounted(gw.mountpoint) and os.path.isdir(gw.mountpoint)):
        return False
    try:
        return bool(gw.request("GET", "/").json()["status"] == "ok")
    except httpx.HTTPError:
        return False


def wait_for_quietly(predicate: Callable[[], object], timeout: float) -> bool:
    """wait_for that answers False at the deadline instead of failing."""
    try:
        wait_for(predicate, timeout)
    except AssertionError:
        return False
    return True


def user_errno(path: Path, mode: str = "r") -> str:
    """Open `path` as USER: 'ok' or the errno name of the failure."""
    code = ("import errno,sys\n"
            "try:\n open(sys.argv[1], sys.argv[2]).close(); print('ok')\n"
            "except OSError as e:\n print(errno.errorcode[e.errno])\n")
    r = run_as(USER, [USER_PYTHON, "-c", code, str(path), mode])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# -- 1. regular files -------------------------------------------------------------------------


def test_create_write_read_overwrite_append(vf: VFolder) -> None:
    """A file written through the mount reads back, overwrites in place and appends at the end,
    and the backing file holds exactly the same bytes."""
    f = vf.mnt / "a.txt"
    f.write_bytes(b"hello world")
    assert f.read_bytes() == b"hello world"
    with open(f, "r+b") as h:  # overwrite in the middle, no truncation
        h.seek(6)
        h.write(b"WORLD")
    assert f.read_bytes() == b"hello WORLD"
    with open(f, "ab") as h:
        h.write(b"!!")
    assert f.read_bytes() == b"hello WORLD!!"
    f.write_bytes(b"new")  # O_TRUNC rewrite
    assert f.read_bytes() == b"new"
    assert os.stat(f).st_size == 3
    assert (vf.src / "a.txt").read_bytes() == b"new"


def test_large_file_checksum(vf: VFolder) -> None:
    """64 MiB written in 1 MiB chunks read back byte-exact (same SHA-256) through the mount
    and on the backing file."""
    f = vf.mnt / "big.bin"
    digest = hashlib.sha256()
    with open(f, "wb") as h:
        for i in range(64):
            chunk = hashlib.sha256(str(i).encode()).digest() * (MiB // 32)
            digest.update(chunk)
            h.write(chunk)
    assert os.stat(f).st_size == 64 * MiB

    def sha(path: Path) -> str:
        d = hashlib.sha256()
        with open(path, "rb") as h:
            while block := h.read(MiB):
                d.update(block)
        return d.hexdigest()

    assert sha(f) == digest.hexdigest()
    assert sha(vf.src / "big.bin") == digest.hexdigest()


def fuse_requests(gw: Gateway) -> dict[str, int]:
    return dict(gw.request("GET", "/").json()["fuse_requests"])


def test_write_only_writes_bypass_the_mount_cache_coherently(vf: VFolder) -> None:
    """Write-only opens use direct I/O: a reader holding cached pages (a descriptor and a
    mapping) sees each write at once, and the kernel sends no GETXATTR before the writes."""
    f = vf.mnt / "coherent.bin"
    f.write_bytes(b"A" * 8192)
    reader = os.open(f, os.O_RDONLY)
    try:
        assert os.pread(reader, 4, 0) == b"AAAA"  # now in the mount's page cache
        view = mmap.mmap(reader, 8192, prot=mmap.PROT_READ)
        before = fuse_requests(vf.gw)
        writer = os.open(f, os.O_WRONLY)
        for i in range(20):
            os.pwrite(writer, b"B" * 4 + bytes([i]), 0)
        os.close(writer)
        after = fuse_requests(vf.gw)
        assert os.pread(reader, 5, 0) == b"BBBB" + bytes([19])
        assert view[:5] == b"BBBB" + bytes([19])
        view.close()
    finally:
        os.close(reader)
    assert after.get("write", 0) - before.get("write", 0) == 20
    assert after.get("getxattr", 0) == before.get("getxattr", 0)


def test_read_write_opens_keep_shared_mappings(vf: VFolder) -> None:
    """Read-write opens stay cached, so MAP_SHARED works (databases such as LMDB or SQLite's
    WAL index need it) and what is stored through the mapping lands on the backing file."""
    f = vf.mnt / "mapped.bin"
    f.write_bytes(bytes(4096))
    fd = os.open(f, os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096, mmap.MAP_SHARED) as view:
            view[:6] = b"shared"
            view.flush()
    finally:
        os.close(fd)
    assert (vf.src / "mapped.bin").read_bytes()[:6] == b"shared"


def test_sparse_file_at_one_gib(vf: VFolder) -> None:
    """A write at offset 1 GiB makes a file of size 1 GiB + len, with a hole: few blocks
    allocated, zeros read from the hole, the data read back at the offset."""
    f = vf.mnt / "sparse.bin"
    with open(f, "wb") as h:
        h.seek(GiB)
        h.write(b"tail")
    st = os.stat(f)
    assert st.st_size == GiB + 4
    assert st.st_blocks * 512 <= 64 * 1024
    assert os.stat(vf.src / "sparse.bin").st_blocks == st.st_blocks
    with open(f, "rb") as h:
        assert os.pread(h.fileno(), 4096, 0) == bytes(4096)
        assert os.pread(h.fileno(), 4, GiB) == b"tail"


def test_many_files_in_one_directory(vf: VFolder) -> None:
    """3000 files created through the mount in one directory are all listed, each once, and
    each holds its own content."""
    d = vf.mnt / "many"
    d.mkdir()
    names = {f"f{i:05d}" for i in range(3000)}
    for name in names:
        (d / name).write_bytes(name.encode())
    listed = os.listdir(d)
    assert len(listed) == 3000
    assert set(listed) == names
    assert (d / "f01234").read_bytes() == b"f01234"
    assert set(os.listdir(vf.src / "many")) == names


def make_huge_dir(vf: VFolder, n: int = 20000) -> set[str]:
    """A directory `huge` of n empty files, made on the backing side (fast)."""
    src = vf.src / "huge"
    src.mkdir()
    names = {f"entry-{i:06d}" for i in range(n)}
    for name in names:
        os.close(os.open(src / name, os.O_CREAT | os.O_WRONLY, 0o644))
    return names


def test_listing_20000_entries_returns_all_names(vf: VFolder) -> None:
    """A directory of 20,000 entries (made on the backing side) is listed through the mount by
    os.listdir and os.scandir with exactly all names, none missing, none repeated."""
    names = make_huge_dir(vf)
    listed = os.listdir(vf.mnt / "huge")
    assert len(listed) == len(names)
    assert set(listed) == names
    with os.scandir(vf.mnt / "huge") as it:
        scanned = [(e.name, e.is_file(follow_symlinks=False)) for e in it]
    assert len(scanned) == len(names)
    assert {n for n, _ in scanned} == names
    assert all(is_file for _, is_file in scanned)


def test_listing_20000_entries_keeps_gateway_serving(vf: VFolder) -> None:
    """After a 20,000-entry listing (every entry handed to the kernel by readdirplus) the
    gateway still answers its control socket, opens the listed files and creates new ones:
    the listing does not exhaust its resources."""
    names = make_huge_dir(vf)
    os.listdir(vf.mnt / "huge")  # completeness is the test above; here only what follows
    assert serving(vf.gw)
    for name in sorted(names)[::4000]:
        assert (vf.mnt / "huge" / name).read_bytes() == b""
    (vf.mnt / "huge" / "new").write_bytes(b"new")
    assert (vf.mnt / "huge" / "new").read_bytes() == b"new"
    assert (vf.src / "huge" / "new").read_bytes() == b"new"


# -- 2. namespace -----------------------------------------------------------------------------


def test_mkdir_rmdir_and_rmdir_nonempty(vf: VFolder) -> None:
    """mkdir makes a directory (on the backing side too), rmdir of a non-empty one fails with
    ENOTEMPTY and keeps it, rmdir of an empty one removes it."""
    d = vf.mnt / "d"
    d.mkdir()
    assert d.is_dir() and (vf.src / "d").is_dir()
    (d / "f").write_bytes(b"x")
    with raises_errno(errno.ENOTEMPTY):
        os.rmdir(d)
    assert (d / "f").read_bytes() == b"x"
    os.unlink(d / "f")
    os.rmdir(d)
    assert not d.exists() and not (vf.src / "d").exists()


def test_new_entries_get_requested_mode(vf: VFolder) -> None:
    """A file and a directory created through the mount get the mode asked for, less the
    caller's umask, through the mount and on the backing volume."""
    old = os.umask(0o027)
    try:
        os.close(os.open(vf.mnt / "f", os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir(vf.mnt / "d", 0o775)
    finally:
        os.umask(old)
    for name, mode in (("f", 0o640), ("d", 0o750)):
        assert stat.S_IMODE(os.stat(vf.mnt / name).st_mode) == mode, name
        assert stat.S_IMODE(os.stat(vf.src / name).st_mode) == mode, name


def test_symlink_readlink_lstat(vf: VFolder) -> None:
    """A symlink made through the mount is a symlink (lstat), readlink gives its target, the
    kernel follows it to the target's content, and the backing side holds the same link."""
    (vf.mnt / "target").write_bytes(b"content")
    link = vf.mnt / "link"
    os.symlink("target", link)
    st = os.lstat(link)
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_size == len("target")
    assert os.readlink(link) == "target"
    assert link.read_bytes() == b"content"
    assert os.readlink(vf.src / "link") == "target"


def test_hard_link_shares_inode_and_content(vf: VFolder) -> None:
    """A hard link through the mount: both names have st_nlink 2 and the same st_ino, and a
    write through one name is read through the other."""
    a, b = vf.mnt / "a", vf.mnt / "b"
    a.write_bytes(b"one")
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_ino == sb.st_ino
    assert sa.st_nlink == sb.st_nlink == 2
    with open(a, "r+b") as h:
        h.write(b"TWO")
    assert b.read_bytes() == b"TWO"
    assert os.stat(vf.src / "a").st_ino == os.stat(vf.src / "b").st_ino
    os.unlink(a)
    assert os.stat(b).st_nlink == 1
    assert b.read_bytes() == b"TWO"


def test_rename_and_rename_over_existing(vf: VFolder) -> None:
    """rename moves a file inside a vfolder (also into a subdirectory), and a rename onto an
    existing name replaces it atomically."""
    (vf.mnt / "sub").mkdir()
    (vf.mnt / "a").write_bytes(b"A")
    os.rename(vf.mnt / "a", vf.mnt / "sub" / "a2")
    assert not (vf.mnt / "a").exists()
    assert (vf.mnt / "sub" / "a2").read_bytes() == b"A"
    (vf.mnt / "b").write_bytes(b"B")
    os.rename(vf.mnt / "sub" / "a2", vf.mnt / "b")
    assert (vf.mnt / "b").read_bytes() == b"A"
    assert not (vf.mnt / "sub" / "a2").exists()
    assert sorted(os.listdir(vf.src)) == ["b", "sub"]


def test_renameat2_noreplace(vf: VFolder) -> None:
    """renameat2(RENAME_NOREPLACE) onto an existing name fails with EEXIST and changes
    nothing; onto a free name it renames."""
    a, b, c = vf.mnt / "a", vf.mnt / "b", vf.mnt / "c"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with raises_errno(errno.EEXIST):
        renameat2(a, b, RENAME_NOREPLACE)
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"
    renameat2(a, c, RENAME_NOREPLACE)
    assert not a.exists() and c.read_bytes() == b"A"


def test_renameat2_exchange(vf: VFolder) -> None:
    """renameat2(RENAME_EXCHANGE) swaps two names: each reads the other's former content,
    also on the backing side, including a file swapped with a directory."""
    a, b = vf.mnt / "a", vf.mnt / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    renameat2(a, b, RENAME_EXCHANGE)
    assert a.read_bytes() == b"B" and b.read_bytes() == b"A"
    assert (vf.src / "a").read_bytes() == b"B"
    d = vf.mnt / "d"
    d.mkdir()
    renameat2(a, d, RENAME_EXCHANGE)
    assert a.is_dir() and d.read_bytes() == b"B"


# -- 3. attributes ----------------------------------------------------------------------------


def test_chmod(vf: VFolder) -> None:
    """chmod through the mount sets the mode seen through the mount and on the backing file."""
    f = vf.mnt / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o640)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(vf.src / "f").st_mode) == 0o640
    os.chmod(vf.mnt, 0o711)
    assert stat.S_IMODE(os.stat(vf.src).st_mode) == 0o711


def test_chown(vf: VFolder) -> None:
    """chown to 1234:1234 through the mount changes the owner seen through the mount and on
    the backing file; chown of the group only keeps the owner."""
    f = vf.mnt / "f"
    f.write_bytes(b"x")
    os.chown(f, 1234, 1234)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 1234)
    bst = os.stat(vf.src / "f")
    assert (bst.st_uid, bst.st_gid) == (1234, 1234)
    os.chown(f, -1, 4321)
    assert (os.stat(vf.src / "f").st_uid, os.stat(vf.src / "f").st_gid) == (1234, 4321)


def test_utime_with_nanoseconds(vf: VFolder) -> None:
    """os.utime with explicit ns times sets atime and mtime to the nanosecond, as stat shows
    through the mount and on the backing file; os.utime without times sets them to now."""
    f = vf.mnt / "f"
    f.write_bytes(b"x")
    atime, mtime = 1_500_000_000_123_456_789, 1_600_000_000_987_654_321
    os.utime(f, ns=(atime, mtime))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    bst = os.stat(vf.src / "f")
    assert (bst.st_atime_ns, bst.st_mtime_ns) == (atime, mtime)
    before = time.time_ns()
    os.utime(f)  # UTIME_NOW for both
    assert os.stat(f).st_mtime_ns >= before - 10**9
    assert os.stat(vf.src / "f").st_atime_ns >= before - 10**9


def test_truncate_smaller_and_larger(vf: VFolder) -> None:
    """os.truncate and os.ftruncate shrink a file (keeping its prefix) and extend it with
    zeros, through the mount and on the backing file."""
    f = vf.mnt / "f"
    f.write_bytes(b"0123456789")
    os.truncate(f, 4)
    assert f.read_bytes() == b"0123"
    os.truncate(f, 8)
    assert f.read_bytes() == b"0123" + bytes(4)
    with open(f, "r+b") as h:
        os.ftruncate(h.fileno(), 2)
        assert os.fstat(h.fileno()).st_size == 2
        os.ftruncate(h.fileno(), 6)
        assert os.fstat(h.fileno()).st_size == 6
    assert f.read_bytes() == b"01" + bytes(4)
    assert (vf.src / "f").read_bytes() == b"01" + bytes(4)


def test_fsync_and_fdatasync(vf: VFolder) -> None:
    """fsync and fdatasync of a written file, and fsync of a directory, succeed."""
    with open(vf.mnt / "f", "wb") as h:
        h.write(b"data")
        os.fsync(h.fileno())
        h.write(b"more")
        h.flush()
        os.fdatasync(h.fileno())
    dfd = os.open(vf.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert (vf.src / "f").read_bytes() == b"datamore"


def test_statvfs_matches_backing(vf: VFolder) -> None:
    """statvfs of the mount reports the backing filesystem: same f_bsize, f_frsize, f_blocks
    and f_namemax, and consistent free counts."""
    m, b = os.statvfs(vf.gw.mountpoint), os.statvfs(vf.gw.source)
    assert m.f_bsize == b.f_bsize > 0
    assert m.f_frsize == b.f_frsize
    assert m.f_blocks == b.f_blocks > 0
    assert m.f_namemax == b.f_namemax
    assert 0 <= m.f_bavail <= m.f_bfree <= m.f_blocks
    assert 0 <= m.f_ffree <= m.f_files
    assert os.statvfs(vf.mnt).f_bsize == b.f_bsize


def test_posix_fallocate(vf: VFolder) -> None:
    """posix_fallocate through the mount grows the file to offset+len (glibc falls back to
    writing when FUSE has no fallocate), the range reads as zeros, and the gateway keeps
    serving."""
    f = vf.mnt / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"head")
        os.posix_fallocate(fd, 0, MiB)
        assert os.fstat(fd).st_size == MiB
        assert os.pread(fd, 8, 0) == b"head" + bytes(4)
        assert os.pread(fd, 16, MiB - 16) == bytes(16)
    finally:
        os.close(fd)
    assert os.stat(vf.src / "f").st_size == MiB
    assert serving(vf.gw)
    (vf.mnt / "g").write_bytes(b"still")
    assert (vf.mnt / "g").read_bytes() == b"still"


# -- 4. user xattrs ---------------------------------------------------------------------------


def test_user_xattrs_pass_through(vf: VFolder) -> None:
    """user.test set through the mount lands on the backing file, is read back, is listed
    beside the user.fusegw.* names, and removexattr removes it on the backing file."""
    f = vf.mnt / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.test", b"value")
    assert os.getxattr(f, "user.test") == b"value"
    assert os.getxattr(vf.src / "f", "user.test") == b"value"
    names = os.listxattr(f)
    assert "user.test" in names
    assert {"user.fusegw.scope", "user.fusegw.used_bytes", "user.fusegw.vfolder"} <= set(names)
    os.removexattr(f, "user.test")
    assert "user.test" not in os.listxattr(f)
    with raises_errno(errno.ENODATA):
        os.getxattr(vf.src / "f", "user.test")
    with raises_errno(errno.ENODATA):
        os.getxattr(f, "user.test")


def test_setxattr_create_and_replace_flags(vf: VFolder) -> None:
    """XATTR_CREATE on an existing name fails with EEXIST and XATTR_REPLACE on a missing one
    with ENODATA, neither changing anything; XATTR_REPLACE on an existing name replaces."""
    f = vf.mnt / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.a", b"1", os.XATTR_CREATE)
    with raises_errno(errno.EEXIST):
        os.setxattr(f, "user.a", b"2", os.XATTR_CREATE)
    with raises_errno(errno.ENODATA):
        os.setxattr(f, "user.b", b"2", os.XATTR_REPLACE)
    assert os.getxattr(vf.src / "f", "user.a") == b"1"
    assert "user.b" not in os.listxattr(vf.src / "f")
    os.setxattr(f, "user.a", b"3", os.XATTR_REPLACE)
    assert os.getxattr(vf.src / "f", "user.a") == b"3"


def test_unknown_xattr_enodata_then_xattrs_still_work(vf: VFolder) -> None:
    """getxattr of an unknown name fails with ENODATA (also an unknown user.fusegw.* name),
    and afterwards xattrs keep working on the same mount."""
    f = vf.mnt / "f"
    f.write_bytes(b"x")
    with raises_errno(errno.ENODATA):
        os.getxattr(f, "user.nope")
    with raises_errno(errno.ENODATA):
        os.getxattr(f, "user.fusegw.nope")
    os.setxattr(f, "user.after", b"1")
    assert os.getxattr(f, "user.after") == b"1"
    assert os.getxattr(vf.src / "f", "user.after") == b"1"
    assert os.getxattr(f, "user.fusegw.scope").startswith(b"user:")


# -- 5. allow_other and ownership -------------------------------------------------------------


@pytest.fixture
def shared(vf: VFolder) -> VFolder:
    """A vfolder with a 0777 directory `shared` that uid 1000 can reach through the mount."""
    open_to_others(vf.gw.mountpoint.parent)
    (vf.mnt / "shared").mkdir()
    os.chmod(vf.mnt / "shared", 0o777)
    return VFolder(vf.gw, vf.mnt / "shared", vf.src / "shared")


def test_file_created_by_user_is_owned_by_user(shared: VFolder) -> None:
    """A file created through the mount by uid 1000 belongs to 1000:1000 on the backing side
    and through the mount, not to the daemon's root."""
    f = shared.mnt / "file"
    r = run_as(USER, ["sh", "-c", f"echo hi > {f}"])
    assert r.returncode == 0, r.stderr
    assert f.read_text() == "hi\n"
    for path in (f, shared.src / "file"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (USER, USER), path


def test_mkdir_and_symlink_by_user_are_owned_by_user(shared: VFolder) -> None:
    """A directory and a symlink made through the mount by uid 1000 belong to 1000:1000 on
    the backing side and through the mount."""
    r = run_as(USER, ["sh", "-c", f"mkdir {shared.mnt}/dir && ln -s dir {shared.mnt}/lnk"])
    assert r.returncode == 0, r.stderr
    for path in (shared.mnt / "dir", shared.src / "dir", shared.mnt / "lnk", shared.src / "lnk"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (USER, USER), path
    assert stat.S_ISLNK(os.lstat(shared.src / "lnk").st_mode)


def test_setgid_directory_gives_its_group(shared: VFolder) -> None:
    """In a setgid directory of group 4321, a file and a directory that uid 1000 creates
    through the mount get group 4321 (the new directory setgid too), owner 1000."""
    d = shared.mnt / "team"
    d.mkdir()
    os.chown(d, 0, 4321)
    os.chmod(d, 0o2777)
    r = run_as(USER, ["sh", "-c", f"echo x > {d}/f && mkdir {d}/sub"])
    assert r.returncode == 0, r.stderr
    for name in ("f", "sub"):
        st = os.stat(shared.src / "team" / name)
        assert (st.st_uid, st.st_gid) == (USER, 4321), name
    assert os.stat(shared.src / "team" / "sub").st_mode & stat.S_ISGID


def test_other_uid_reads_0644_but_not_0600(shared: VFolder) -> None:
    """allow_other + default_permissions: uid 1000 reads root's 0644 file through the mount,
    gets EACCES on root's 0600 file, and cannot write root's 0644 file."""
    public, private = shared.mnt / "public", shared.mnt / "private"
    public.write_bytes(b"open")
    os.chmod(public, 0o644)
    private.write_bytes(b"secret")
    os.chmod(private, 0o600)
    r = run_as(USER, ["cat", str(public)])
    assert r.returncode == 0 and r.stdout == "open", r.stderr
    assert user_errno(private) == "EACCES"
    assert user_errno(public, "a") == "EACCES"
    assert private.read_bytes() == b"secret"


# -- 6. the gateway's own state ---------------------------------------------------------------


def test_state_dir_invisible_at_root(gateway: Gateway) -> None:
    """.fusegw exists on the volume but is not listed at the mount root and stat gives
    ENOENT, also for paths below it."""
    assert (gateway.source / ".fusegw").is_dir()
    assert ".fusegw" not in os.listdir(gateway.mountpoint)
    with os.scandir(gateway.mountpoint) as it:
        assert ".fusegw" not in [e.name for e in it]
    with raises_errno(errno.ENOENT):
        os.stat(gateway.mountpoint / ".fusegw")
    with raises_errno(errno.ENOENT):
        os.listdir(gateway.mountpoint / ".fusegw")
    with raises_errno(errno.ENOENT):
        os.stat(gateway.mountpoint / ".fusegw" / "anything")


def test_volume_root_refuses_new_entries(gateway: Gateway) -> None:
    """mkdir, file create and symlink in the volume root through the mount fail with EPERM
    and leave nothing on the backing volume."""
    before = sorted(os.listdir(gateway.source))
    with raises_errno(errno.EPERM):
        os.mkdir(gateway.mountpoint / "newdir")
    with raises_errno(errno.EPERM):
        open(gateway.mountpoint / "newfile", "w").close()
    with raises_errno(errno.EPERM):
        os.symlink("version.txt", gateway.mountpoint / "newlink")
    with raises_errno(errno.EPERM):
        os.mkdir(gateway.mountpoint / ".fusegw")
    assert sorted(os.listdir(gateway.source)) == before


def test_symlink_to_state_dir_resolves_to_nothing(vf: VFolder) -> None:
    """A backing-side symlink inside a vfolder pointing at ../../../../.fusegw (the real state
    directory on the volume) resolves to nothing through the mount: ENOENT."""
    link = vf.src / "escape"
    os.symlink("../../../../.fusegw", link)
    assert link.resolve() == (vf.gw.source / ".fusegw").resolve()  # it does point there
    assert os.path.isdir(link)
    with raises_errno(errno.ENOENT):
        os.listdir(vf.mnt / "escape")
    with raises_errno(errno.ENOENT):
        os.stat(vf.mnt / "escape")
    assert os.readlink(vf.mnt / "escape") == "../../../../.fusegw"


# -- 7. symlinks are never followed by the daemon ---------------------------------------------


def test_symlink_operations_never_touch_the_target(vf: VFolder, tmp_path: Path) -> None:
    """On a symlink (inside a vfolder) to a file outside the volume: lchown and
    utime(follow_symlinks=False) change the link, not the target; setxattr on the link fails
    with EPERM and getxattr gives ENODATA without reading the target's xattr; the target's
    mode, owner, mtime and xattrs stay as they were."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"secret")
    os.chmod(secret, 0o600)
    os.setxattr(secret, "user.y", b"target-value")
    os.utime(secret, ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_000))
    before = os.stat(secret)
    os.symlink(str(secret), vf.src / "link")
    link = vf.mnt / "link"

    os.lchown(link, 1234, 1234)
    assert (os.lstat(link).st_uid, os.lstat(link).st_gid) == (1234, 1234)
    assert (os.lstat(vf.src / "link").st_uid, os.lstat(vf.src / "link").st_gid) == (1234, 1234)

    times = (1_300_000_000_111_111_111, 1_300_000_000_222_222_222)
    os.utime(link, ns=times, follow_symlinks=False)
    assert os.lstat(link).st_mtime_ns == times[1]
    assert os.lstat(vf.src / "link").st_mtime_ns == times[1]

    with raises_errno(errno.EPERM):
        os.setxattr(link, "user.x", b"1", follow_symlinks=False)
    with raises_errno(errno.ENODATA):
        os.getxattr(link, "user.y", follow_symlinks=False)
    assert "user.y" not in os.listxattr(link, follow_symlinks=False)

    after = os.stat(secret)
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_mtime_ns == before.st_mtime_ns
    assert os.listxattr(secret) == ["user.y"]
    assert os.getxattr(secret, "user.y") == b"target-value"
    assert secret.read_bytes() == b"secret"


# -- 8. startup errors ------------------------------------------------------------------------


def assert_refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 1 and one line on stderr that contains `words`."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_source_refused(make_gateway) -> None:
    """A SOURCE that does not exist: exit 1 with a one-line error naming it; nothing mounted."""
    gw = make_gateway("nosrc", start=False)
    gw.source.rmdir()
    assert_refused(gw.start(check=False), str(gw.source), "does not exist")
    assert not is_mounted(gw.mountpoint)


def test_missing_mountpoint_refused(make_gateway) -> None:
    """A MOUNTPOINT that does not exist: exit 1 with a one-line error naming it."""
    gw = make_gateway("nomnt", start=False)
    gw.mountpoint.rmdir()
    assert_refused(gw.start(check=False), str(gw.mountpoint), "does not exist")
    assert not gw.mountpoint.exists()


def test_busy_mountpoint_refused(make_gateway) -> None:
    """A second gateway onto an already mounted MOUNTPOINT (from another source) exits 1 with
    a one-line 'busy' error, and the first mount keeps serving."""
    first = make_gateway("first")
    second = make_gateway("second", start=False)
    own_mountpoint = second.mountpoint
    second.mountpoint = first.mountpoint
    try:
        assert_refused(second.start(check=False), str(first.mountpoint), "busy")
    finally:
        second.mountpoint = own_mountpoint
    assert serving(first)
    assert (first.mountpoint / "version.txt").read_text().strip() == "3"


def test_v2_volume_with_version_file_refused(make_gateway) -> None:
    """A volume whose version.txt says 2 is refused (exit 1) with one line naming
    `fusegw migrate`, and left untouched."""
    gw = make_gateway("v2", start=False)
    (gw.source / "version.txt").write_text("2\n")
    assert_refused(gw.start(check=False), "fusegw migrate")
    assert not is_mounted(gw.mountpoint)
    assert (gw.source / "version.txt").read_text() == "2\n"


def test_v2_volume_without_version_file_refused(make_gateway) -> None:
    """A volume with no version.txt but a flat v2 vfolder ab/cd/<28 hex> is refused (exit 1)
    with one line naming `fusegw migrate`; no version.txt is written."""
    gw = make_gateway("v2flat", start=False)
    fid = uuid.uuid4().hex
    (gw.source / fid[:2] / fid[2:4] / fid[4:]).mkdir(parents=True)
    assert_refused(gw.start(check=False), "fusegw migrate")
    assert not is_mounted(gw.mountpoint)
    assert not (gw.source / "version.txt").exists()


# -- 9. shutdown ------------------------------------------------------------------------------


def test_sigint_unmounts_cleanly(gateway: Gateway) -> None:
    """SIGINT to the daemon unmounts, the process exits and the control socket file is gone."""
    assert gateway.pid is not None and gateway.socket.exists()
    os.kill(gateway.pid, signal.SIGINT)
    wait_for(lambda: not is_mounted(gateway.mountpoint), what="unmount after SIGINT")
    wait_for(lambda: not gateway.alive(), what="daemon exit after SIGINT")
    wait_for(lambda: not gateway.socket.exists(), what="socket removal")
    assert "unmounted" in gateway.read_log()


def test_fusermount_unmount_ends_daemon(gateway: Gateway) -> None:
    """`fusermount3 -u` from outside unmounts and the daemon then exits on its own."""
    r = subprocess.run(["fusermount3", "-u", str(gateway.mountpoint)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert not is_mounted(gateway.mountpoint)
    wait_for(lambda: not gateway.alive(), what="daemon exit after fusermount3 -u")
    wait_for(lambda: not gateway.socket.exists(), what="socket removal")


# -- 10. inode bookkeeping --------------------------------------------------------------------


def test_forget_releases_inodes(vf: VFolder) -> None:
    """After 2000 files are created and stat-ed through the mount the gateway holds a node for
    each; once the kernel drops its inode cache (drop_caches), FORGET releases them and the
    count falls to a handful."""
    d = vf.mnt / "files"
    d.mkdir()
    fds = []  # held open until counted, so nobody else's drop_caches can forget them early
    try:
        for i in range(2000):
            p = d / f"f{i}"
            fds.append(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
            os.stat(p)

        def cached() -> int:
            return int(vf.gw.request("GET", "/").json()["inodes_cached"])

        assert cached() >= 2000
    finally:
        for fd in fds:
            os.close(fd)

    def drop_caches() -> None:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")

    drop_caches()
    # FORGET arrives asynchronously; drop again in case a dentry was still busy at first.
    if not wait_for_quietly(lambda: cached() < 50, 5):
        drop_caches()
    wait_for(lambda: cached() < 50, what="inodes_cached to drop after drop_caches")
    assert os.stat(d / "f1999").st_size == 0  # lookups work again after forget
    assert len(os.listdir(d)) == 2000

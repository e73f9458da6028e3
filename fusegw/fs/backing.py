"""The syscall sequences FUSE handlers run in worker threads (`fusegw.fs.offload`).

Each is one hop: what may wait on the disk, and the `fstat`s that measure it, done together
so the measurement sees the change and nothing else (the caller holds the inodes' change locks,
`fusegw.fs.locks`). They touch only descriptors and names handed to them, never the inode
table or the ledger, which belong to the event loop's thread.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Container

from fusegw.fs import syscalls

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
Made = tuple[int, os.stat_result, os.stat_result]
"""(O_PATH descriptor of the new entry, its stat, the parent's stat after)."""


def stat_at(dir_fd: int, name: bytes) -> os.stat_result | None:
    """lstat of dir_fd/name; None if there is no such entry."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def list_dir(dir_fd: int, hidden: Container[bytes]) -> list[tuple[bytes, os.stat_result]]:
    """The entries of a directory with their lstat (readdirplus sends both), `hidden` left
    out; an entry gone between listing and stat is skipped."""
    names = os.listdir(f"/proc/self/fd/{dir_fd}".encode())
    out = []
    for name in names:
        if name in hidden:
            continue
        try:
            out.append((name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)))
        except FileNotFoundError:
            continue
    return out


def make_entry(dir_fd: int, name: bytes, make: Callable[[int], None], owner: tuple[int, int],
               is_dir: bool) -> Made:
    """Create an entry that is not opened (node, directory, symlink), owned by `owner`."""
    make(dir_fd)
    try:
        os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        (os.rmdir if is_dir else os.unlink)(name, dir_fd=dir_fd)
        raise
    return _adoptable(dir_fd, name)


def create_file(dir_fd: int, name: bytes, flags: int, mode: int, owner: tuple[int, int]
                ) -> tuple[int, Made]:
    """Create and open a regular file: its open descriptor and what `make_entry` returns."""
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    try:
        if owner != (0, 0):
            os.fchown(fd, *owner)
        return fd, _adoptable(dir_fd, name)
    except BaseException:
        os.close(fd)
        raise


def _adoptable(dir_fd: int, name: bytes) -> Made:
    fd = os.open(name, O_PATH_FLAGS, dir_fd=dir_fd)
    try:
        return fd, os.fstat(fd), os.fstat(dir_fd)
    except BaseException:
        os.close(fd)
        raise


def link(proc: str, dir_fd: int, name: bytes) -> os.stat_result:
    """Hard-link the inode behind a /proc/self/fd path; the parent's stat after."""
    os.link(proc, name, dst_dir_fd=dir_fd, follow_symlinks=True)
    return os.fstat(dir_fd)


def remove(dir_fd: int, name: bytes, is_dir: bool) -> os.stat_result:
    """unlink or rmdir; the parent's stat after."""
    (os.rmdir if is_dir else os.unlink)(name, dir_fd=dir_fd)
    return os.fstat(dir_fd)


def rename(old_fd: int, old: bytes, new_fd: int, new: bytes, flags: int
           ) -> tuple[os.stat_result, os.stat_result]:
    """renameat2; both parents' stats after."""
    syscalls.renameat2(old_fd, old, new_fd, new, flags)
    return os.fstat(old_fd), os.fstat(new_fd)


def pwrite(fh: int, buf: bytes, off: int) -> tuple[int, os.stat_result]:
    """pwrite; bytes written and the file's stat after."""
    return os.pwrite(fh, buf, off), os.fstat(fh)


def pread(fh: int, size: int, off: int) -> bytes:
    """The key under which reads are timed (`Offload.pace`); reads run as `os.pread`."""
    return os.pread(fh, size, off)


def pread_into(fh: int, buf: memoryview, off: int) -> int:
    """Fill `buf` from offset `off` (short only at the end of the file); bytes read."""
    done = 0
    while done < len(buf):
        n = os.preadv(fh, [buf[done:]], off + done)
        if not n:
            break
        done += n
    return done


def fallocate(fh: int, mode: int, off: int, length: int) -> os.stat_result:
    syscalls.fallocate(fh, mode, off, length)
    return os.fstat(fh)


def truncate(fh: int | None, proc: str, size: int) -> tuple[None, os.stat_result]:
    """ftruncate an open file, or truncate the inode behind a /proc/self/fd path; the stat
    after."""
    if fh is not None:
        os.ftruncate(fh, size)
        return None, os.fstat(fh)
    os.truncate(proc, size)
    return None, os.stat(proc)


def open_file(proc: str, flags: int) -> tuple[int, os.stat_result]:
    fd = os.open(proc, flags)
    return fd, os.fstat(fd)


def set_xattr(proc: str, name: bytes, value: bytes | None) -> os.stat_result:
    """setxattr, or removexattr for None; the inode's stat after."""
    if value is None:
        os.removexattr(proc, name)
    else:
        os.setxattr(proc, name, value)
    return os.stat(proc)


def is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)

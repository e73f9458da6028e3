"""The few `*at` calls Python's os module cannot express: renameat2 and AT_EMPTY_PATH forms.

They let the gateway act on an inode through its O_PATH descriptor, symlinks included, without
ever resolving a path on the backing side.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_OMIT = (1 << 30) - 2

_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                           ctypes.c_int]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]


def _check(ret: int) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def renameat2(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> None:
    _check(_libc.renameat2(olddir, old, newdir, new, flags))


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """chown the inode behind an O_PATH descriptor (a symlink itself, not its target)."""
    _check(_libc.fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH))


def utimens_empty(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """Set times on the inode behind an O_PATH descriptor; None leaves that time alone."""
    times = (_Timespec * 2)()
    for i, ns in enumerate((atime_ns, mtime_ns)):
        if ns is None:
            times[i].tv_sec, times[i].tv_nsec = 0, UTIME_OMIT
        else:
            times[i].tv_sec, times[i].tv_nsec = divmod(ns, 1_000_000_000)
    _check(_libc.utimensat(fd, b"", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))


MAX_HANDLE_SZ = 128


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


_libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                                    ctypes.POINTER(ctypes.c_int), ctypes.c_int]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]


def name_to_handle(dirfd: int, name: bytes) -> tuple[bytes, int]:
    """The file handle of `name` under dirfd (of dirfd itself if name is empty), never
    following a symlink: handle type and bytes, which name the inode and its generation, and
    the id of the mount it lives on (a handle is only meaningful on that mount)."""
    fh = _FileHandle()
    fh.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    _check(_libc.name_to_handle_at(dirfd, name, ctypes.byref(fh), ctypes.byref(mount_id),
                                   0 if name else AT_EMPTY_PATH))
    kind = int(fh.handle_type).to_bytes(4, "little", signed=True)
    return kind + bytes(fh.f_handle[:fh.handle_bytes]), mount_id.value


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """Open the inode a handle names (ESTALE once it is gone); needs CAP_DAC_READ_SEARCH."""
    fh = _FileHandle()
    fh.handle_type = int.from_bytes(handle[:4], "little", signed=True)
    fh.handle_bytes = len(handle) - 4
    ctypes.memmove(fh.f_handle, handle[4:], len(handle) - 4)
    fd: int = _libc.open_by_handle_at(mount_fd, ctypes.byref(fh), flags)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode (os.posix_fallocate knows only mode 0)."""
    _check(_libc.fallocate(fd, mode, offset, length))

"""Relpaths confined to their vfolder, and opening them without ever following a symlink.

A relpath comes from the manager (in a token) or a query (`dst_dir`): it is refused if it is
absolute or has a `..`; then every component is opened relative to the one before with
O_NOFOLLOW, so a symlink planted anywhere on the way (even one swapped in after a check) is
refused instead of followed out of the vfolder.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from fusegw.client.errors import FileNotFound, PathEscape

DIR_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at the name must not hold a worker thread forever
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NAME_MAX = 255


def confine(value: Any, field: str, *, allow_root: bool) -> list[str]:
    """The components of a relpath, `.` and empty ones dropped; `..`, absolute paths, NULs
    and over-long names are 400s naming the field."""
    if value is None and allow_root:
        return []
    if not isinstance(value, str):
        raise PathEscape(f"{field} must be a string", data={field: "not a string"})
    if value.startswith("/") or "\0" in value:
        raise PathEscape(f"{field} must be a relative path", data={field: "not relative"})
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise PathEscape(f"{field} must stay inside the vfolder: '..' is refused",
                         data={field: "leaves the vfolder"})
    if any(len(part.encode()) > NAME_MAX for part in parts):
        raise PathEscape(f"{field} has a name over {NAME_MAX} bytes", data={field: "too long"})
    if not parts and not allow_root:
        raise PathEscape(f"{field} must name a file in the vfolder", data={field: "empty"})
    return parts


def open_dir_beneath(base: str, parts: list[str], field: str = "relpath") -> int:
    """An O_PATH descriptor of base/parts..., each step without following a symlink."""
    fd = _open(base, DIR_PATH_FLAGS, None, field)
    try:
        for name in parts:
            child = _open(name, DIR_PATH_FLAGS, fd, field)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_child(dir_fd: int, name: str, field: str = "relpath") -> int:
    """An O_PATH descriptor of the directory `name` in `dir_fd`, not followed if a symlink."""
    return _open(name, DIR_PATH_FLAGS, dir_fd, field)


def open_beneath(base: str, parts: list[str], field: str = "relpath") -> int:
    """base/parts opened for reading (a file or a directory), no symlink followed."""
    parent = open_dir_beneath(base, parts[:-1], field)
    try:
        return _open(parts[-1] if parts else ".", READ_FLAGS, parent, field)
    finally:
        os.close(parent)


def _open(name: str, flags: int, dir_fd: int | None, field: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise FileNotFound(f"no such file or directory: {name}") from None
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathEscape(f"{field}: {name} is a symlink or not a directory: refused",
                             data={field: "symlink or not a directory"}) from None
        raise

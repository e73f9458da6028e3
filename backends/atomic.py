"""The one way a small file on the volume (or in /etc) is replaced: atomically and durably.

`write_atomic` writes a temporary file beside the target, fsyncs it, renames it over the target
and fsyncs the directory. After a crash or power loss the target holds the old content or the
new one, never a mix, and once the call returns the new content survives: the file's fsync
makes its data durable, the directory's fsync makes the rename durable (without it a power
loss can bring the old name back, e.g. lose a dirty mark the gateway relied on).

It lives in `backends/` because backends use it too (the XFS projid/projects files) and the
dependencies point from `fusegw` to `backends`, never back.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["fsync_directory", "remove_durably", "write_atomic"]

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` by `data`, with permission bits `mode` whatever the process umask.

    The temporary name is random and created with O_EXCL|O_NOFOLLOW, so nothing planted
    beside the target (a symlink, a stale temporary) is followed or reused. On any failure
    (ENOSPC while writing, a failed fsync) the temporary file is removed and the target is left
    as it was; the OSError, with its errno, propagates.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, _TEMP_FLAGS, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask narrowed (or, with umask 0, did not) the create
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def remove_durably(path: Path) -> bool:
    """Unlink `path` and fsync its directory, so the removal survives a power loss; False if
    it was not there. Needs no free space, so it works on a full disk."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_directory(path.parent)
    return True


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, an unlink) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until everything is written: a write may store less than asked."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

"""Relpaths confined to their vfolder, with fusegw.files' own rules (the manager's file
routes): lexically (no `..`, not absolute, no NUL, bounded), then at resolution time with
openat2(RESOLVE_BENEATH) from the vfolder's root, so a symlink leading out is a 400."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from fusegw.files import (
    PATH_DIR,
    FileOperationFailed,
    MountFiles,
    PathEscape,
    closing,
    open_beneath,
    os_errors,
    relpath,
    shown,
)
from fusegw.ids import VFolderID

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def confine(value: Any, field: str, *, allow_root: bool) -> list[str]:
    """The components of a relpath (fusegw.files.relpath); absent is the root where that
    is allowed; the root itself is refused where a file must be named."""
    if value is None and allow_root:
        return []
    parts = list(relpath(value, field))
    if not parts and not allow_root:
        raise PathEscape(f"{field} must name a file in the vfolder", data={field: "empty"})
    return parts


def open_in_mount(mountpoint: Path, vfid: VFolderID, parts: list[str]) -> int:
    """A regular file or a directory of the vfolder, opened for reading through the mount.
    Its kind is checked on an O_PATH descriptor first (opening a FIFO would block). Blocks
    on the mount: worker threads only."""
    with MountFiles(mountpoint).root(vfid) as root, os_errors(shown(tuple(parts))):
        with closing(open_beneath(root, tuple(parts), os.O_PATH)) as probe:
            mode = os.fstat(probe).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise FileOperationFailed("The file is not a regular file.",
                                      data={"paths": [shown(tuple(parts))]})
        return open_beneath(root, tuple(parts), os.O_RDONLY | os.O_NONBLOCK)


def open_dir_in(base: Path, parts: list[str]) -> int:
    """An O_PATH descriptor of the directory base/parts, confined below `base` (the
    vfolder's root on the backing side, which is the daemon's own: no mount involved)."""
    with closing(os.open(base, PATH_DIR | os.O_NOFOLLOW)) as root, \
            os_errors(shown(tuple(parts))):
        return open_beneath(root, tuple(parts), PATH_DIR)

"""The volume layout (version 3) and the refusal of the flat version-2 layout.

`<volume>/<scope hex>/<fid[0:2]>/<fid[2:4]>/<fid[4:]>/…`. Depth counts from the volume root:
1 is a scope directory, 2 and 3 are the fan-out directories, 4 is a vfolder's root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from backends.atomic import write_atomic
from fusegw.errors import VolumeRefused
from fusegw.state.store import VolumeWriteError

LAYOUT_VERSION = 3
VERSION_FILE = "version.txt"
VERSION_MODE = 0o644
STATE_DIR = ".fusegw"

SCOPE_DEPTH = 1
VFOLDER_DEPTH = 4

_SCOPE_NAME = re.compile(r"[0-9a-f]{32}")
_FANOUT_NAME = re.compile(r"[0-9a-f]{2}")


def is_scope_name(name: str) -> bool:
    return _SCOPE_NAME.fullmatch(name) is not None


def vfolder_names(hex_: str) -> tuple[str, str, str]:
    """The three directories below its scope that hold the vfolder of folder hex `hex_`:
    the two fan-out levels and the vfolder's root."""
    return hex_[0:2], hex_[2:4], hex_[4:]


def vfolder_relpath(scope_name: str, hex_: str) -> str:
    """The vfolder's path below the volume root."""
    return "/".join((scope_name, *vfolder_names(hex_)))


def flat_relpath(hex_: str) -> str:
    """Where layout version 2 kept the vfolder: no scope level."""
    return "/".join(vfolder_names(hex_))


def vfolder_hex(fanout: str, leaf: str) -> str | None:
    """The folder hex spelt by the fan-out names above a vfolder's root (`fanout`, the two
    joined) and its root's name, if they spell one."""
    if len(fanout) != 4:
        return None
    h = fanout + leaf
    return h if _SCOPE_NAME.fullmatch(h) else None


def _has_v2_vfolders(root: Path) -> bool:
    with os.scandir(root) as entries:
        return any(
            e.is_dir(follow_symlinks=False) and _FANOUT_NAME.fullmatch(e.name) for e in entries
        )


def write_version(root: Path) -> None:
    """Write `version.txt` = 3 durably (file and directory fsynced), world-readable whatever
    the daemon's umask (it runs with 0): the storage proxy and tools read it."""
    write_atomic(root / VERSION_FILE, f"{LAYOUT_VERSION}\n".encode(), VERSION_MODE)


def prepare_volume(root: Path) -> None:
    """Check the layout version, writing `3` on a new volume; refuse a v2 volume.

    A volume that says 2, or says nothing but holds flat v2 vfolders, must be migrated first:
    serving it as v3 would present vfolders outside any quota scope.
    """
    version_path = root / VERSION_FILE
    try:
        text = version_path.read_text().strip()
    except FileNotFoundError:
        text = None
    if text is None:
        if _has_v2_vfolders(root):
            raise VolumeRefused(
                f"{root} holds flat version-2 vfolders and no version.txt; "
                "run `fusegw migrate` to move it to layout version 3"
            )
        try:
            write_version(root)
        except OSError as e:  # a new volume on a full disk: a clear refusal, not a traceback
            raise VolumeWriteError(str(version_path), e) from None
        return
    if text == "2":
        raise VolumeRefused(
            f"{root} uses layout version 2; run `fusegw migrate` to move it to version 3"
        )
    if text != str(LAYOUT_VERSION):
        raise VolumeRefused(f"{root}: unsupported layout version {text!r} in {VERSION_FILE}")


_LEVEL_NAMES = {
    SCOPE_DEPTH: _FANOUT_NAME,  # in a scope directory: <fid[0:2]>
    SCOPE_DEPTH + 1: _FANOUT_NAME,  # <fid[2:4]>
    SCOPE_DEPTH + 2: re.compile(r"[0-9a-f]{28}"),  # <fid[4:]>: a vfolder's root
}


def may_create(parent_depth: int, name: bytes, is_dir: bool) -> bool:
    """Whether an entry may be created under a directory at `parent_depth` (0 = the root).

    The root belongs to the gateway (scopes come through the control socket); inside a scope,
    the two fan-out levels and the vfolder roots are the layout's own: only directories with
    the layout's names. Below a vfolder's root anything goes.
    """
    if parent_depth == 0:
        return False
    pattern = _LEVEL_NAMES.get(parent_depth)
    if pattern is None:
        return True
    return is_dir and pattern.fullmatch(name.decode("ascii", "replace")) is not None

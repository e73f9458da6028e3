"""Finding what a version-2 volume holds: its flat vfolders, and what does not parse.

A v2 vfolder is a directory `<volume>/<2 hex>/<2 hex>/<28 hex>` (lowercase, as the storage
proxy writes them). Nothing is followed through a symlink. Besides the vfolders, anything in
the flat fan-out that is not one (a file, a symlink, a name that is not hex) and anything at
the volume root that belongs neither to the v2 nor to the v3 layout is a *leftover*: it is
reported, never guessed at. The v3 layout's own entries (scope directories, `version.txt`,
`.fusegw/`) and a filesystem's `lost+found` are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fusegw.errors import VolumeRefused
from fusegw.layout import STATE_DIR, VERSION_FILE, flat_relpath, is_scope_name

FAN = re.compile(r"[0-9a-f]{2}")
REST = re.compile(r"[0-9a-f]{28}")
IGNORED_AT_ROOT = frozenset({STATE_DIR, VERSION_FILE, "lost+found"})

NOT_IN_LAYOUT = "not part of the v2 layout"
NOT_A_DIRECTORY = "not a directory"
UNPARSABLE = "does not parse as <2 hex>/<2 hex>/<28 hex>"


@dataclass(frozen=True, slots=True)
class Found:
    """A directory entry the migration found: a v2 vfolder (`hex` set) or a leftover (`reason`
    set). `relpath` is below the volume root."""

    relpath: str
    hex: str | None = None
    reason: str | None = None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir(follow_symlinks=False)


def _entries(path: Path) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: os.fsencode(e.name))


def scan(volume: Path) -> Iterator[Found]:
    """Every v2 vfolder and every leftover, in a stable (byte-sorted) order."""
    for a in _entries(volume):
        if a.name in IGNORED_AT_ROOT or (is_scope_name(a.name) and _is_dir(a)):
            continue
        if not FAN.fullmatch(a.name):
            yield Found(a.name, reason=NOT_IN_LAYOUT)
            continue
        if not _is_dir(a):
            yield Found(a.name, reason=NOT_A_DIRECTORY)
            continue
        for b in _entries(volume / a.name):
            rel_b = f"{a.name}/{b.name}"
            if not FAN.fullmatch(b.name):
                yield Found(rel_b, reason=UNPARSABLE)
                continue
            if not _is_dir(b):
                yield Found(rel_b, reason=NOT_A_DIRECTORY)
                continue
            for c in _entries(volume / rel_b):
                rel_c = f"{rel_b}/{c.name}"
                if not REST.fullmatch(c.name):
                    yield Found(rel_c, reason=UNPARSABLE)
                elif not _is_dir(c):
                    yield Found(rel_c, reason=NOT_A_DIRECTORY)
                else:
                    hex_ = a.name + b.name + c.name
                    assert flat_relpath(hex_) == rel_c
                    yield Found(rel_c, hex=hex_)


def prune_fanout(volume: Path, relpath: str) -> None:
    """Remove the flat fan-out directories above `relpath` (a vfolder's old place) while they
    are empty."""
    parts = relpath.split("/")
    for depth in (2, 1):
        if len(parts) <= depth:
            continue
        try:
            os.rmdir(volume.joinpath(*parts[:depth]))
        except OSError:
            return


def prune_empty_fanouts(volume: Path) -> None:
    """Remove every empty flat fan-out directory (`ab/cd`, then `ab`) left on the volume."""
    for a in _entries(volume):
        if not (FAN.fullmatch(a.name) and _is_dir(a)):
            continue
        for b in _entries(volume / a.name):
            if FAN.fullmatch(b.name) and _is_dir(b):
                with contextlib.suppress(OSError):
                    os.rmdir(volume / a.name / b.name)
        with contextlib.suppress(OSError):
            os.rmdir(volume / a.name)


def check_root(volume: Path) -> None:
    """Refuse a directory that is no Backend.AI volume, before anything is planned: one whose
    `version.txt` names a layout other than 2 or 3, or, without `version.txt`, one that holds
    neither a flat fan-out directory nor a scope nor `.fusegw/` but other things (somebody's
    data, which `--quarantine` would otherwise sweep away)."""
    try:
        version: str | None = (volume / VERSION_FILE).read_text().strip()
    except FileNotFoundError:
        version = None
    if version is not None:
        if version not in ("2", "3"):
            raise VolumeRefused(f"{volume}: unsupported layout version {version!r} in "
                                f"{VERSION_FILE}")
        return
    entries = [e for e in _entries(volume) if e.name != "lost+found"]
    if not entries or any(
            e.name == STATE_DIR or (_is_dir(e) and (FAN.fullmatch(e.name)
                                                    or is_scope_name(e.name)))
            for e in entries):
        return
    raise VolumeRefused(f"{volume} does not look like a Backend.AI volume (no {VERSION_FILE}, "
                        f"no v2 vfolders, no quota scopes); not migrating it")

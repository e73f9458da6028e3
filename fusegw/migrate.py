"""Moving a flat version-2 volume to layout version 3.

Version 2 keeps vfolders at `<volume>/<fid[0:2]>/<fid[2:4]>/<fid[4:]>` with no quota scopes;
version 3 puts each under its scope: `<volume>/<scope hex>/<fid[0:2]>/<fid[2:4]>/<fid[4:]>`.
Which scope a vfolder belongs to is the cluster manager's knowledge, so it comes in as a map
(folder hex -> quota scope ID) and/or one default scope. Every vfolder must have a scope before
anything moves. Each move is a rename on the same filesystem (atomic, no data copied); an
interrupted migration is simply run again: moved vfolders are no longer in the flat layout, and
`version.txt` says 3 only once none is left.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fusegw.errors import InvalidParameters, VolumeRefused
from fusegw.ids import QuotaScopeID
from fusegw.layout import flat_relpath, vfolder_relpath, write_version
from fusegw.state import StateDir
from fusegw.state.lease import Lease
from fusegw.state.registry import Registry, ScopeRecord

_FAN = re.compile(r"[0-9a-f]{2}")
_REST = re.compile(r"[0-9a-f]{28}")


@dataclass(frozen=True)
class FlatVFolder:
    hex: str

    def path(self, volume: Path) -> Path:
        return volume / flat_relpath(self.hex)


def flat_vfolders(volume: Path) -> Iterator[FlatVFolder]:
    """The v2 vfolders still in the flat layout (never following symlinks)."""
    for a in sorted(os.listdir(volume)):
        if not _FAN.fullmatch(a) or not _is_dir(volume / a):
            continue
        for b in sorted(os.listdir(volume / a)):
            if not _FAN.fullmatch(b) or not _is_dir(volume / a / b):
                continue
            for rest in sorted(os.listdir(volume / a / b)):
                if _REST.fullmatch(rest) and _is_dir(volume / a / b / rest):
                    yield FlatVFolder(a + b + rest)


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def read_map(path: Path) -> dict[str, QuotaScopeID]:
    """Lines `<folder hex> <quota scope id>`; `#` comments and blank lines are ignored."""
    mapping: dict[str, QuotaScopeID] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2 or not re.fullmatch(r"[0-9a-f]{32}", fields[0].lower()):
            raise InvalidParameters(f"{path}:{number}: expected '<folder hex> <qsid>'")
        mapping[fields[0].lower()] = QuotaScopeID.parse(fields[1], f"{path}:{number}")
    return mapping


def plan(volume: Path, mapping: dict[str, QuotaScopeID],
         default: QuotaScopeID | None) -> list[tuple[FlatVFolder, QuotaScopeID]]:
    """Every flat vfolder with its scope; refuses (naming them) if any has none."""
    moves = []
    unmapped = []
    for vf in flat_vfolders(volume):
        qsid = mapping.get(vf.hex, default)
        if qsid is None:
            unmapped.append(vf.hex)
        else:
            moves.append((vf, qsid))
    if unmapped:
        shown = ", ".join(unmapped[:5]) + (" ..." if len(unmapped) > 5 else "")
        raise InvalidParameters(f"{len(unmapped)} vfolders have no quota scope ({shown}); "
                                "give them in --map or name a --default-scope")
    return moves


def migrate(volume: Path, moves: list[tuple[FlatVFolder, QuotaScopeID]],
            progress: Callable[[int, int], None] = lambda done, total: None) -> None:
    """Register the scopes, move the vfolders, prune the old fan-out, then write version 3."""
    state = StateDir(volume)
    state.open()
    lease = Lease(state)
    lease.acquire()  # refuses while a gateway serves the volume
    try:
        registry = Registry(state)
        registry.load()
        for _, qsid in moves:
            known = registry.scopes.get(qsid.pathname)
            if known is not None and known.qsid != qsid:
                raise VolumeRefused(f"{qsid} collides with the existing scope {known.qsid}")
            registry.scopes.setdefault(qsid.pathname, ScopeRecord(qsid))
        registry.save()
        for done, (vf, qsid) in enumerate(moves, start=1):
            target = volume / vfolder_relpath(qsid.pathname, vf.hex)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                raise VolumeRefused(f"{target} exists already; not overwriting it")
            os.rename(vf.path(volume), target)
            for old in (vf.path(volume).parent, vf.path(volume).parent.parent):
                try:
                    old.rmdir()
                except OSError:
                    break
            progress(done, len(moves))
        if any(True for _ in flat_vfolders(volume)):
            raise VolumeRefused("flat vfolders remain (created meanwhile?); run again")
        write_version(volume)
    finally:
        lease.release()

"""`fusegw migrate --report FILE.csv`: one row per vfolder and leftover.

The storage proxy's columns, `volume_id, folder_id, quota_scope_id, current_size, old_quota,
src_path, dst_path`, plus `status`:

- `planned` (no `--apply`), `moved` (renamed), `copied` / `reflinked` (across devices);
  a run that stopped: `failed: <error>` for the vfolder it stopped at, `not reached` after;
- `leftover: <reason>`: left in place; `quarantined: <reason>`: moved to `dst_path` below
  `.fusegw/unclaimed/`.

`folder_id` is the folder UUID (hyphenated) where the path spells one; `old_quota` is the
manager's `max_size` in MiB (empty: none); `current_size` is the allocated bytes, what
`du -s -B1` prints, filled with `--scan-size` (a walk of every vfolder), else empty. Paths
are absolute; bytes that are not UTF-8 are written as they are.
"""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

from fusegw.migration.apply import Outcome
from fusegw.migration.plan import Plan
from fusegw.migration.transfer import allocated_bytes

COLUMNS = ("volume_id", "folder_id", "quota_scope_id", "current_size", "old_quota",
           "src_path", "dst_path", "status")


DONE = frozenset({"moved", "copied", "reflinked"})


def _size(path: Path, scan: bool) -> str:
    if not scan:
        return ""
    try:
        return str(allocated_bytes(path))
    except FileNotFoundError:
        return ""


def rows(volume: Path, volume_id: str, plan: Plan, outcome: Outcome | None,
         scan_size: bool) -> list[list[str]]:
    v = volume.absolute()
    found: list[list[str]] = []
    for m in plan.moves:
        status = outcome.status.get(m.src, "not reached") if outcome else "planned"
        done = outcome is not None and status in DONE
        where = v / (m.dst if done else m.src)
        found.append([volume_id, str(uuid.UUID(m.hex)), str(m.qsid), _size(where, scan_size),
                      "" if m.old_quota is None else str(m.old_quota), str(v / m.src),
                      str(v / m.dst), status])
    for left in plan.leftovers:
        target = outcome.quarantined.get(left.relpath) if outcome else None
        status = f"{'quarantined' if target else 'leftover'}: {left.reason}"
        found.append([volume_id, str(uuid.UUID(left.hex)) if left.hex else "",
                      left.qsid or "", _size(v / (target or left.relpath), scan_size),
                      "" if left.old_quota is None else str(left.old_quota),
                      str(v / left.relpath), str(v / target) if target else "", status])
    return found


def write_report(path: Path, table: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(table)

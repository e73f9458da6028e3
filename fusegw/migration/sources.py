"""Where each vfolder's quota scope and old limit come from: the manager's database or a file.

A *source* maps folder hex (uuid.hex, lowercase) -> (quota scope ID text, max_size in MiB or
None), as `fusegw.migration.database.read_database` answers for the manager's `vfolders`
table. Files give the same:

- `--mapping FILE.csv`: the table's three columns `id, quota_scope_id, max_size` (a header
  row naming them may come first, in any order; `id` hyphenated or hex; `max_size` in MiB,
  empty or NULL for none);
- `--map FILE` (the earlier format, kept as an alias): lines `<folder hex> <quota scope id>`,
  `#` comments and blank lines ignored, no limits.

The scope IDs are checked by the plan, which reports a vfolder with an invalid one as a
leftover instead of refusing the whole run.
"""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

from fusegw.errors import InvalidParameters

SourceRows = dict[str, tuple[str, int | None]]
COLUMNS = ("id", "quota_scope_id", "max_size")
_NULLS = frozenset({"", "null", "none", "\\n"})


def _folder_hex(text: str, where: str) -> str:
    try:
        if not text or text.startswith(("{", "urn:")):
            raise ValueError(text)
        return uuid.UUID(text.strip()).hex
    except ValueError:
        raise InvalidParameters(f"{where}: {text!r} is not a folder UUID") from None


def _max_size(text: str, where: str) -> int | None:
    text = text.strip()
    if text.lower() in _NULLS:
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidParameters(f"{where}: max_size {text!r} is not a whole number of MiB") \
            from None
    if value < 0:
        raise InvalidParameters(f"{where}: max_size {value} is negative")
    return value or None  # 0 in the manager means no limit too


def read_mapping_csv(path: Path) -> SourceRows:
    """The rows of a `--mapping` CSV file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InvalidParameters(f"cannot read {path}: {e.strerror}") from None
    rows = [r for r in csv.reader(text.splitlines()) if any(f.strip() for f in r)]
    order = list(range(3))
    if rows and {f.strip().lower() for f in rows[0]} >= set(COLUMNS):
        header = [f.strip().lower() for f in rows[0]]
        order = [header.index(c) for c in COLUMNS]
        rows = rows[1:]
        first = 2
    else:
        first = 1
    found: SourceRows = {}
    for number, row in enumerate(rows, start=first):
        where = f"{path}:{number}"
        if len(row) <= max(order):
            raise InvalidParameters(f"{where}: expected the columns {', '.join(COLUMNS)}")
        hex_ = _folder_hex(row[order[0]], where)
        found[hex_] = (row[order[1]].strip(), _max_size(row[order[2]], where))
    return found


def read_legacy_map(path: Path) -> SourceRows:
    """The rows of a `--map` file (`<folder hex> <quota scope id>` lines)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidParameters(f"cannot read {path}: {e.strerror}") from None
    found: SourceRows = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise InvalidParameters(f"{path}:{number}: expected '<folder hex> <qsid>'")
        found[_folder_hex(fields[0], f"{path}:{number}")] = (fields[1], None)
    return found


def load(dsn: str | None, mapping: Path | None, legacy_map: Path | None,
         db_volume: str | None = None) -> SourceRows:
    """The rows of every source given, later ones winning (database, --mapping, --map)."""
    rows: SourceRows = {}
    if dsn:
        from fusegw.migration.database import read_database  # psycopg: only when asked

        rows.update(read_database(dsn, db_volume))
    if mapping is not None:
        rows.update(read_mapping_csv(mapping))
    if legacy_map is not None:
        rows.update(read_legacy_map(legacy_map))
    return rows

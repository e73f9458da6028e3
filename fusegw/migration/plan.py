"""The plan: each v2 vfolder with its quota scope and destination, and every leftover with why.

Nothing is guessed. A vfolder goes to `<scope hex>/<fid[0:2]>/<fid[2:4]>/<fid[4:]>` when the
source names its scope; it is a leftover, with the reason, when:

- the source does not know it (and no `--default-scope` is given), or names an invalid scope;
- its scope's UUID collides with another scope of the other type (`user:X` and `project:X`
  share the directory `X`), among the vfolders or with a scope already registered;
- its destination exists already (and is not a copy this migration's journal says it made).

Each new scope's limit is the largest old `max_size` (MiB) among its vfolders, used with
`--set-limits`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fusegw.errors import InvalidParameters
from fusegw.ids import QuotaScopeID
from fusegw.layout import vfolder_relpath
from fusegw.migration.discover import Found
from fusegw.migration.sources import SourceRows

MIB = 1 << 20

UNKNOWN = "unknown to the source (not in the database or mapping)"
INVALID_SCOPE = "invalid quota scope id"
DESTINATION_EXISTS = "destination exists"


@dataclass(frozen=True, slots=True)
class Move:
    hex: str
    qsid: QuotaScopeID
    src: str  # below the volume root
    dst: str
    old_quota: int | None  # MiB, as the manager's max_size
    resumed: bool = False  # a copy the journal says was under way


@dataclass(frozen=True, slots=True)
class Leftover:
    relpath: str
    reason: str
    hex: str | None = None
    qsid: str | None = None  # the scope the source named, if any
    old_quota: int | None = None


@dataclass(slots=True)
class ScopePlan:
    qsid: QuotaScopeID
    registered: bool  # already in the volume's registry: neither created nor limited
    old_quota: int | None = None  # MiB: the largest max_size of its vfolders

    @property
    def limit_bytes(self) -> int:
        return (self.old_quota or 0) * MIB


@dataclass(slots=True)
class Plan:
    moves: list[Move] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    scopes: dict[str, ScopePlan] = field(default_factory=dict)  # by pathname

    @property
    def new_scopes(self) -> list[ScopePlan]:
        return [s for s in self.scopes.values() if not s.registered]


def make_plan(volume: Path, found: Iterable[Found], rows: SourceRows,
              registered: Mapping[str, QuotaScopeID], default: QuotaScopeID | None = None,
              journal: Mapping[str, Mapping[str, str]] | None = None) -> Plan:
    """The plan for the entries `found` (discover.scan), with `rows` from the source,
    `registered` scopes by pathname and the journal's unfinished copies by folder hex."""
    journal = journal or {}
    plan = Plan()
    wanted: list[tuple[Found, QuotaScopeID, int | None]] = []
    for item in found:
        if item.hex is None:
            plan.leftovers.append(Leftover(item.relpath, item.reason or "unparsable"))
            continue
        row = rows.get(item.hex)
        if row is None and default is None:
            plan.leftovers.append(Leftover(item.relpath, UNKNOWN, item.hex))
            continue
        text, old_quota = row if row is not None else (str(default), None)
        try:
            qsid = QuotaScopeID.parse(text)
        except InvalidParameters:
            plan.leftovers.append(Leftover(item.relpath, f"{INVALID_SCOPE} {text!r}",
                                           item.hex, text, old_quota))
            continue
        wanted.append((item, qsid, old_quota))

    by_path: dict[str, set[QuotaScopeID]] = defaultdict(set)
    for _, qsid, _ in wanted:
        by_path[qsid.pathname].add(qsid)
    for item, qsid, old_quota in wanted:
        assert item.hex is not None
        known = registered.get(qsid.pathname)
        others = sorted(str(q) for q in by_path[qsid.pathname] if q != qsid)
        if known is not None and known != qsid:
            reason = f"scope {qsid} collides with the registered scope {known}"
        elif known is None and others:
            reason = f"scope {qsid} collides with {', '.join(others)} (same UUID)"
        else:
            reason = ""
        entry = journal.get(item.hex)
        dst = entry["dst"] if entry else vfolder_relpath(qsid.pathname, item.hex)
        if not reason and not entry and _lexists(volume / dst):
            reason = DESTINATION_EXISTS
        if reason:
            plan.leftovers.append(Leftover(item.relpath, reason, item.hex, str(qsid),
                                           old_quota))
            continue
        plan.moves.append(Move(item.hex, qsid, item.relpath, dst, old_quota, bool(entry)))
        scope = plan.scopes.get(qsid.pathname)
        if scope is None:
            scope = plan.scopes[qsid.pathname] = ScopePlan(qsid, known is not None)
        if old_quota and (scope.old_quota or 0) < old_quota:
            scope.old_quota = old_quota
    return plan


def _lexists(path: Path) -> bool:
    try:
        path.lstat()
    except FileNotFoundError:
        return False
    return True

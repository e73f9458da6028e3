"""`fusegw migrate --script FILE`: the plan as a POSIX shell script, for operators to review.

The script does what `--apply` does, in the same order, for the `vfs` and `btrfs` backends:
`set -e`; creates each new scope (a directory, or `btrfs subvolume create`, with
`btrfs qgroup limit` for `--set-limits`); writes the scope registry under `.fusegw/` (the
volume's registry as it is now, plus the new scopes); moves each vfolder with `mv` (creating
its parents first, refusing an existing destination), the leftovers too with `--quarantine`;
removes the emptied fan-out; and writes `version.txt` at the volume root last, only when the
plan leaves nothing behind. Every path is quoted (shlex.quote), whatever bytes its name holds.
A vfolder already moved is skipped, so a script that stopped can be run again; but where `mv`
falls back to copying (EXDEV) it is not journaled: an interrupted copy is finished by
`--apply`, which is the crash-safe way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from shlex import quote

from fusegw.errors import InvalidParameters
from fusegw.layout import STATE_DIR, VERSION_FILE
from fusegw.migration.apply import UNCLAIMED
from fusegw.migration.plan import Plan
from fusegw.state.registry import REGISTRY_FILE, ScopeRecord
from fusegw.state.store import STATE_FORMAT

SCRIPT_BACKENDS = ("vfs", "btrfs")

_PRELUDE = """\
set -e
umask 022

# move SRC DST: rename (or, across devices, mv's copy); skipped when already done
move() {
    if [ ! -e "$1" ] && [ ! -L "$1" ] && { [ -e "$2" ] || [ -L "$2" ]; }; then
        return 0
    fi
    if [ -e "$2" ] || [ -L "$2" ]; then
        printf 'fusegw migrate: %s exists; not overwriting it\\n' "$2" >&2
        exit 1
    fi
    mv -- "$1" "$2"
}

# prune DIR: remove an emptied fan-out directory
prune() {
    rmdir -- "$1" 2>/dev/null || true
}
"""


def _registry_json(records: dict[str, ScopeRecord]) -> str:
    body = {"scopes": {p: {"qsid": str(r.qsid), "limit_bytes": r.limit_bytes,
                           "limit_inodes": r.limit_inodes}
                       for p, r in sorted(records.items())},
            "format": STATE_FORMAT}
    return json.dumps(body, sort_keys=True)


def render(volume: Path, plan: Plan, registered: dict[str, ScopeRecord], backend: str,
           set_limits: bool = False, quarantine: bool = False) -> str:
    if backend not in SCRIPT_BACKENDS:
        raise InvalidParameters(f"--script knows the backends {', '.join(SCRIPT_BACKENDS)}; "
                                f"for {backend} use --apply")
    v = volume.absolute()
    out = [f"#!/bin/sh\n# fusegw migrate {_comment(str(v))} ({backend}), "
           f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
           f"# {len(plan.moves)} vfolders into {len(plan.scopes)} scopes "
           f"({len(plan.new_scopes)} new), {len(plan.leftovers)} leftovers\n", _PRELUDE]

    records = dict(registered)
    if plan.new_scopes:
        out.append("\n# the new quota scopes\n")
        limited = set_limits and any(s.limit_bytes for s in plan.new_scopes)
        if backend == "btrfs" and limited:
            out.append(f"btrfs quota enable {quote(str(v))}\n")
        for scope in plan.new_scopes:
            path = quote(str(v / scope.qsid.pathname))
            limit = scope.limit_bytes if set_limits else 0
            if backend == "btrfs":
                out.append(f"[ -d {path} ] || btrfs subvolume create {path} >/dev/null\n")
                if limit:
                    out.append(f"btrfs qgroup limit {limit} {path}\n")
            else:
                out.append(f"[ -d {path} ] || mkdir -m 0755 -- {path}\n")
            records[scope.qsid.pathname] = ScopeRecord(scope.qsid, limit, 0)
        state = v / STATE_DIR
        tmp = quote(str(state / f".{REGISTRY_FILE}.script.tmp"))
        out.append(
            "\n# the scope registry\n"
            f"mkdir -p -m 0700 -- {quote(str(state))}\n"
            f"[ -e {quote(str(state / 'FORMAT'))} ] || "
            f"(umask 077; printf '{STATE_FORMAT}\\n' > {quote(str(state / 'FORMAT'))})\n"
            f"(umask 077; printf '%s' {quote(_registry_json(records))} > {tmp})\n"
            f"mv -f -- {tmp} {quote(str(state / REGISTRY_FILE))}\n")

    fanouts: list[str] = []
    if plan.moves:
        out.append("\n# the vfolders\n")
    made: set[str] = set()
    for move in plan.moves:
        parent = str((v / move.dst).parent)
        if parent not in made:
            out.append(f"mkdir -p -- {quote(parent)}\n")
            made.add(parent)
        out.append(f"move {quote(str(v / move.src))} {quote(str(v / move.dst))}\n")
        fanouts.append(move.src)

    if quarantine and plan.leftovers:
        out.append(f"\n# the leftovers, kept in {STATE_DIR}/{UNCLAIMED}/\n")
        taken: set[str] = set()
        for left in plan.leftovers:
            target = _unclaimed_target(v, left.relpath, taken)
            out.append(f"mkdir -p -m 0700 -- {quote(str((v / target).parent))}\n")
            out.append(f"move {quote(str(v / left.relpath))} {quote(str(v / target))}\n")
            fanouts.append(left.relpath)
    elif plan.leftovers:
        out.append(f"\n# {len(plan.leftovers)} leftovers stay in place:\n")
        for left in plan.leftovers:
            out.append(f"#   {_comment(left.relpath)}: {_comment(left.reason)}\n")

    dirs = sorted({"/".join(p.split("/")[:d]) for p in fanouts for d in (2, 1)
                   if len(p.split("/")) > d}, key=lambda d: (-d.count("/"), d))
    if dirs:
        out.append("\n# the emptied fan-out\n")
        out.extend(f"prune {quote(str(v / d))}\n" for d in dirs)

    if quarantine or not plan.leftovers:
        tmp = quote(str(v / f".{VERSION_FILE}.script.tmp"))
        out.append("\n# layout version 3, last\n"
                   f"printf '3\\n' > {tmp}\nchmod 0644 {tmp}\n"
                   f"mv -f -- {tmp} {quote(str(v / VERSION_FILE))}\n")
    else:
        out.append("\n# version.txt is not written: leftovers remain\nexit 6\n")
    return "".join(out)


def _comment(text: str) -> str:
    """`text` made safe for a comment line: no newline or other control byte survives."""
    return repr(text.encode("utf-8", "surrogateescape"))[2:-1]


def _unclaimed_target(volume: Path, relpath: str, taken: set[str]) -> str:
    base = f"{STATE_DIR}/{UNCLAIMED}/{relpath}"
    target, n = base, 0
    while target in taken or (volume / target).exists() or (volume / target).is_symlink():
        n += 1
        target = f"{base}.{n}"
    taken.add(target)
    return target


def write_script(path: Path, text: str) -> None:
    """Write the script (mode 0755), names' bytes kept as they are."""
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
    path.chmod(0o755)

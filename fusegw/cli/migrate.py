"""`fusegw migrate VOLUME_PATH`: move a flat version-2 volume to layout version 3.

Plan first: without `--apply` or `--script` it prints the plan and writes nothing. Exit
status: 0 every vfolder moved (or would move), 6 leftovers remain (listed, with their reasons,
left in place), 2 bad usage or source, 4 refused (a gateway serves the volume, another
migration runs), 1 any other failure (a run can be repeated: it finishes where it stopped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from shlex import quote
from typing import Any

from fusegw.cli.client import EXIT_ERROR, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from fusegw.errors import GatewayError, InvalidParameters, VolumeRefused

EXIT_LEFTOVERS = 6


def register(sub: Any) -> None:
    p = sub.add_parser(
        "migrate", help="move a flat v2 volume to layout version 3",
        description="Move every vfolder of a flat version-2 volume under its quota scope "
                    "(layout version 3), learning the scopes from the manager's database "
                    "(--dsn) or a mapping file. Without --apply or --script: print the plan, "
                    "write nothing. Exit status 6: leftovers remain.")
    p.add_argument("source", metavar="VOLUME_PATH", help="the volume directory")
    src = p.add_argument_group("where the quota scopes come from")
    src.add_argument("--dsn", help="the manager's PostgreSQL database, postgresql://...")
    src.add_argument("--db-volume", metavar="HOST",
                     help="with --dsn: only the vfolders of this host (proxy:volume or volume)")
    src.add_argument("--mapping", type=Path, metavar="FILE.csv",
                     help="CSV with the columns id, quota_scope_id, max_size (MiB, empty: none)")
    src.add_argument("--map", type=Path, metavar="FILE",
                     help="(older format) lines '<folder hex> <quota scope id>'")
    src.add_argument("--default-scope", metavar="QSID",
                     help="quota scope for vfolders the source does not know")
    act = p.add_argument_group("what to do")
    act.add_argument("--apply", action="store_true", help="perform the plan")
    act.add_argument("--script", type=Path, metavar="FILE",
                     help="write the plan as a POSIX shell script (vfs, btrfs)")
    act.add_argument("--dry-run", action="store_true",
                     help="print the plan only (the default; kept for compatibility)")
    act.add_argument("--config", type=Path, metavar="FILE",
                     help="the node's configuration: --volume NAME's table gives the backend "
                          "and its options (an appliance's endpoint and credentials)")
    act.add_argument("--volume", metavar="NAME", help="with --config: the volume's table")
    act.add_argument("--backend", default=None,
                     help="the volume's quota backend, which creates the scopes (default vfs)")
    act.add_argument("--set-limits", action="store_true",
                     help="give each new scope the largest old max_size of its vfolders")
    act.add_argument("--quarantine", action="store_true",
                     help="move leftovers into <volume>/.fusegw/unclaimed/ instead of leaving "
                          "them in place")
    act.add_argument("--force-while-served", action="store_true",
                     help="migrate although a gateway serves the volume")
    out = p.add_argument_group("report")
    out.add_argument("--report", type=Path, metavar="FILE.csv", help="write a CSV report")
    out.add_argument("--scan-size", action="store_true",
                     help="fill the report's current_size (walks every vfolder)")
    out.add_argument("--volume-id", help="the report's volume_id (default: the directory name)")
    p.set_defaults(func=run)


def _shown(text: str) -> str:
    """A path for one line of output: quoted where needed, control bytes and bytes that are
    not UTF-8 escaped (\\n, \\xff)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return quote("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


def run(args: argparse.Namespace) -> int:
    volume = Path(args.source)
    if not volume.is_dir():
        print(f"fusegw: source {volume} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run and (args.apply or args.script):
        print("fusegw: --dry-run goes with neither --apply nor --script", file=sys.stderr)
        return EXIT_USAGE
    if args.dsn and (args.mapping or args.map):
        print("fusegw: give --dsn or a mapping file, not both", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, volume)
    except InvalidParameters as e:
        print(f"fusegw: {e.detail}", file=sys.stderr)
        return EXIT_USAGE
    except VolumeRefused as e:
        print(f"fusegw: {e.detail}", file=sys.stderr)
        return EXIT_REFUSED
    except (GatewayError, OSError, Exception) as e:
        detail = getattr(e, "detail", None) or str(e)
        print(f"fusegw: migration stopped: {detail}; run it again to finish", file=sys.stderr)
        return EXIT_ERROR


def _run(args: argparse.Namespace, volume: Path) -> int:
    from backends.registry import get_backend
    from fusegw.ids import QuotaScopeID
    from fusegw.migration import discover, sources
    from fusegw.migration.apply import Migration, Outcome
    from fusegw.migration.plan import make_plan
    from fusegw.migration.report import rows, write_report
    from fusegw.migration.script import render, write_script

    discover.check_root(volume)
    default = QuotaScopeID.parse(args.default_scope, "--default-scope") \
        if args.default_scope else None
    table = sources.load(args.dsn, args.mapping, args.map, args.db_volume)
    name, options = _backend_settings(args)
    try:
        backend = get_backend(name, volume, options)
    except ValueError as e:
        raise InvalidParameters(str(e)) from None
    volume_id = args.volume_id or volume.resolve().name
    migration = Migration(volume, backend, set_limits=args.set_limits,
                          quarantine=args.quarantine,
                          force_while_served=args.force_while_served)
    outcome: Outcome | None = None
    if args.apply:
        migration.open()
        with migration.exclusive():
            plan = make_plan(volume, discover.scan(volume), table,
                             {p: r.qsid for p, r in migration.registry.scopes.items()},
                             default, migration.journal.copies)
            try:
                outcome = migration.run(plan)
            finally:
                if args.report:
                    write_report(args.report, rows(volume, volume_id, plan, migration.outcome,
                                                   args.scan_size))
        remaining = len(plan.leftovers) - len(outcome.quarantined)
        state = "layout version 3" if outcome.complete else "not complete: version.txt not written"
        print(f"{volume}: {len(plan.moves)} vfolders moved into {len(plan.scopes)} scopes "
              f"({len(plan.new_scopes)} new), {len(outcome.quarantined)} leftovers "
              f"quarantined, {remaining} left in place; {state}", file=sys.stderr)
        _list_leftovers(plan.leftovers if remaining else [])
        return EXIT_OK if outcome.complete and not remaining else EXIT_LEFTOVERS

    migration.registry.load()
    migration.journal.load()
    plan = make_plan(volume, discover.scan(volume), table,
                     {p: r.qsid for p, r in migration.registry.scopes.items()}, default,
                     migration.journal.copies)
    if args.script:
        write_script(args.script, render(volume, plan, migration.registry.scopes, backend.name,
                                         args.set_limits, args.quarantine))
    else:
        for m in plan.moves:
            print(f"move {_shown(m.src)} -> {_shown(m.dst)} ({m.qsid})")
        for s in plan.new_scopes:
            limit = f", limit {s.limit_bytes} bytes" if args.set_limits and s.limit_bytes else ""
            print(f"scope {s.qsid} (new{limit})")
    if args.report:
        write_report(args.report, rows(volume, volume_id, plan, None, args.scan_size))
    print(f"{len(plan.moves)} vfolders would move into {len(plan.scopes)} scopes "
          f"({len(plan.new_scopes)} new); {len(plan.leftovers)} leftovers"
          + (" (to quarantine)" if args.quarantine and plan.leftovers else "")
          + (f"; script written to {args.script}" if args.script else ""))
    _list_leftovers(plan.leftovers, args.quarantine)
    return EXIT_LEFTOVERS if plan.leftovers and not args.quarantine else EXIT_OK


def _list_leftovers(leftovers: list[Any], quarantine: bool = False) -> None:
    for left in leftovers:
        print(f"leftover {_shown(left.relpath)}: {left.reason}", file=sys.stderr)
    if leftovers and quarantine:
        print(f"{len(leftovers)} leftovers to be moved into .fusegw/unclaimed/", file=sys.stderr)
    elif leftovers:
        print(f"{len(leftovers)} leftovers (exit status {EXIT_LEFTOVERS}); --quarantine moves "
              "them into .fusegw/unclaimed/", file=sys.stderr)


def _backend_settings(args: argparse.Namespace) -> tuple[str, dict[str, object]]:
    """The backend that creates the scopes and its options: `--backend`, else the
    configuration's `[volume.NAME]` table (`--config FILE --volume NAME`), else vfs."""
    if args.config is None:
        return args.backend or "vfs", {}
    from fusegw.config import GATEWAY_OPTION_KEYS, ConfigError, load_config

    if not args.volume:
        raise InvalidParameters("--config needs --volume NAME: the volume's table")
    try:
        node = load_config(args.config, volume=args.volume)
    except ConfigError as e:
        raise InvalidParameters(e.one_line()) from None
    table = node.volume.get(args.volume)
    if table is None:
        raise InvalidParameters(f"{args.config} has no [volume.{args.volume}]")
    options = {k: v for k, v in table.options.items() if k not in GATEWAY_OPTION_KEYS}
    return args.backend or table.backend, options

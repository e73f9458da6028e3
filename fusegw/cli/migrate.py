"""`fusegw migrate SOURCE`: move a flat version-2 volume to layout version 3."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fusegw.cli.client import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from fusegw.errors import GatewayError, InvalidParameters
from fusegw.ids import QuotaScopeID


def register(sub: Any) -> None:
    p = sub.add_parser(
        "migrate", help="move a flat v2 volume to layout version 3",
        description="Move every vfolder of a flat version-2 volume under its quota scope "
                    "(layout version 3). The volume must not be served meanwhile. Each move is "
                    "a rename; an interrupted migration is run again.")
    p.add_argument("source", help="the volume directory")
    p.add_argument("--map", type=Path, help="file of lines '<folder hex> <quota scope id>'")
    p.add_argument("--default-scope", help="quota scope for vfolders not in --map")
    p.add_argument("--dry-run", action="store_true", help="show the plan, move nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusegw.migrate import migrate, plan, read_map

    volume = Path(args.source)
    if not volume.is_dir():
        print(f"fusegw: source {volume} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    try:
        mapping = read_map(args.map) if args.map else {}
        default = QuotaScopeID.parse(args.default_scope, "--default-scope") \
            if args.default_scope else None
        moves = plan(volume, mapping, default)
        if args.dry_run:
            for vf, qsid in moves:
                print(f"{vf.hex} -> {qsid}")
            print(f"{len(moves)} vfolders would move")
            return EXIT_OK

        def progress(done: int, total: int) -> None:
            if done == total or done % 100 == 0:
                print(f"\rmoved {done}/{total} vfolders", end="", file=sys.stderr, flush=True)

        migrate(volume, moves, progress)
    except InvalidParameters as e:
        print(f"fusegw: {e.detail}", file=sys.stderr)
        return EXIT_USAGE
    except (GatewayError, OSError) as e:
        print(f"fusegw: {getattr(e, 'detail', e)}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"\n{volume}: {len(moves)} vfolders moved, layout version 3", file=sys.stderr)
    return EXIT_OK

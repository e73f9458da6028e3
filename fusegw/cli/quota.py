"""`fusegw quota list|get|create|set|unset|delete|check`."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

from fusegw.cli.client import Client, table
from fusegw.cli.common import client_options, count_arg, runner, size_arg
from fusegw.cli.sizes import format_size


def _limit(n: int | None) -> str:
    return "unlimited" if n is None else format_size(n)


def _limit_count(n: int | None) -> str:
    return "unlimited" if n is None else str(n)


def _row(s: dict[str, Any]) -> list[str]:
    return [s["qsid"], format_size(s["used_bytes"]), _limit(s["limit_bytes"]),
            str(s["used_inodes"]), _limit_count(s["limit_inodes"])]


HEADER = ["QUOTA SCOPE", "USED", "LIMIT", "INODES", "INODE LIMIT"]


def _options(args: argparse.Namespace) -> dict[str, int]:
    options = {}
    if args.limit is not None:
        options["limit_bytes"] = args.limit
    if args.limit_inodes is not None:
        options["limit_inodes"] = args.limit_inodes
    return options


def do_list(c: Client, args: argparse.Namespace) -> Any:
    return c.call("GET", "/quota-scopes", {"volume": c.volume})["quota_scopes"]


def do_get(c: Client, args: argparse.Namespace) -> Any:
    return dict(c.call("GET", "/quota-scope", {"volume": c.volume, "qsid": args.qsid}),
                qsid=args.qsid)


def do_create(c: Client, args: argparse.Namespace) -> Any:
    c.call("POST", "/quota-scope", {"volume": c.volume, "qsid": args.qsid,
                                    "options": _options(args) or None})


def do_set(c: Client, args: argparse.Namespace) -> Any:
    options = _options(args)
    if not options:
        raise ValueError("give --limit and/or --limit-inodes")
    c.call("PATCH", "/quota-scope", {"volume": c.volume, "qsid": args.qsid, "options": options})


def do_unset(c: Client, args: argparse.Namespace) -> Any:
    c.call("DELETE", "/quota-scope/quota", {"volume": c.volume, "qsid": args.qsid})


def do_delete(c: Client, args: argparse.Namespace) -> Any:
    c.call("DELETE", "/quota-scope", {"volume": c.volume, "qsid": args.qsid})


def do_check(c: Client, args: argparse.Namespace) -> Any:
    qsids = args.qsid or [s["qsid"] for s in do_list(c, args)]
    return [_check_one(c, q, args.repair, quiet=args.json) for q in qsids]


def _check_one(c: Client, qsid: str, repair: bool, quiet: bool) -> Any:
    """Run one check; while it runs, show the scan's progress from the gateway's status."""
    volume = c.volume
    done = threading.Event()
    if not quiet and sys.stderr.isatty():
        threading.Thread(target=_progress, args=(c.socket, qsid, done), daemon=True).start()
    try:
        return c.call("POST", "/quota-scope/check",
                      {"volume": volume, "qsid": qsid, "repair": repair})
    finally:
        done.set()


def _progress(socket: str, qsid: str, done: threading.Event) -> None:
    poller = Client(socket, None)
    started = time.monotonic()
    while not done.wait(0.5):
        try:
            files = poller.call("GET", "/").get("scans", {}).get(qsid)
        except Exception:
            return
        if files is not None:
            print(f"\r{qsid}: {files} files scanned, {time.monotonic() - started:.0f}s",
                  end="", file=sys.stderr, flush=True)
    print("\r", end="", file=sys.stderr)


def human_check(reports: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = []
    for r in reports:
        state = "ok" if r["consistent"] else ("repaired" if r["repaired"] else "DRIFT")
        rows.append([r["qsid"], state, format_size(r["ledger"]["used_bytes"]),
                     format_size(r["disk"]["used_bytes"]), str(r["ledger"]["used_inodes"]),
                     str(r["disk"]["used_inodes"]), str(len(r["vfolders_drifted"]))])
    return table(rows, ["QUOTA SCOPE", "STATE", "LEDGER", "DISK", "LEDGER INODES",
                        "DISK INODES", "VFOLDERS DRIFTED"])


def register(sub: Any) -> None:
    common = client_options()
    quota = sub.add_parser("quota", help="quota scopes: list, get, create, set, unset, delete, "
                           "check", description="Manage the quota scopes of a volume.")
    qsub = quota.add_subparsers(dest="action", required=True, metavar="ACTION")

    def cmd(name: str, help_: str, action: Any, human: Any = None, qsid: str = "one",
            limits: bool = False) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = qsub.add_parser(name, help=help_, description=help_,
                                                     parents=[common])
        if qsid == "one":
            p.add_argument("qsid", help="quota scope ID, e.g. user:<uuid> or project:<uuid>")
        elif qsid == "many":
            p.add_argument("qsid", nargs="*", help="quota scope IDs (default: all)")
        if limits:
            p.add_argument("--limit", type=size_arg, help="byte limit, e.g. 10G, 1.5T; 0 lifts")
            p.add_argument("--limit-inodes", type=count_arg, help="inode limit; 0 lifts")
        p.set_defaults(func=runner(action, human))
        return p

    cmd("list", "list quota scopes with usage and limits", do_list,
        lambda r, a: table([_row(s) for s in r], HEADER), qsid="none")
    cmd("get", "show one quota scope's usage and limits", do_get,
        lambda r, a: table([_row(r)], HEADER))
    cmd("create", "create a quota scope", do_create, lambda r, a: f"created {a.qsid}",
        limits=True)
    cmd("set", "set limits (creates the scope if missing)", do_set,
        lambda r, a: f"updated {a.qsid}", limits=True)
    cmd("unset", "lift the limits, keep the scope", do_unset, lambda r, a: f"unset {a.qsid}")
    cmd("delete", "delete an empty quota scope", do_delete, lambda r, a: f"deleted {a.qsid}")
    check = cmd("check", "compare the ledger with the disk", do_check, human_check, qsid="many")
    check.add_argument("--repair", action="store_true", help="correct the ledger from the disk")

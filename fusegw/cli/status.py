"""`fusegw status`: what the gateway behind a socket is doing."""

from __future__ import annotations

import argparse
from typing import Any

from fusegw.cli.client import Client
from fusegw.cli.common import client_options, runner


def do_status(c: Client, args: argparse.Namespace) -> Any:
    return c.call("GET", "/")


def human(s: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"volume      {s['volume']} ({s['backend']}), pid {s['pid']}",
             f"source      {s['source']}",
             f"mountpoint  {s['mountpoint']}",
             f"scopes      {s['scopes']}, inodes cached {s['inodes_cached']}"]
    if s.get("rebuilding"):
        lines.append(f"rebuilding  {', '.join(s['rebuilding'])} "
                     f"({s.get('waiting_for_rebuild', 0)} requests waiting)")
    for r in s.get("rebuilds", []):
        lines.append(f"rebuilt     {r['qsid']}: {r['files']} files in {r['seconds']}s")
    return "\n".join(lines)


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="show the gateway's state", parents=[client_options()],
                       description="Show the state of the gateway behind the control socket.")
    p.set_defaults(func=runner(do_status, human))

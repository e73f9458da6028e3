"""`fusegw status`: what the gateway, or the node's mountd, behind a socket is doing.

Pointed at a gateway's socket it shows that gateway; at the node's (mountd's) socket it shows
every volume of the node, its state, and the recent gateway deaths with their causes: the list
the cluster agent acts on (sessions that bind-mounted a vfolder from a mount that died keep
that dead mount until restarted).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from fusegw.cli.client import Client, table
from fusegw.cli.common import client_options, runner

RECENT_DEATHS = 5  # per volume, in the human form (--json has all mountd keeps)


def do_status(c: Client, args: argparse.Namespace) -> Any:
    status = c.call("GET", "/")
    if is_node(status) and args.volume:
        status["volumes"] = [v for v in status["volumes"] if v.get("name") == args.volume]
    return status


def is_node(s: dict[str, Any]) -> bool:
    """The node endpoint answers with a list of volumes; a gateway with its own volume."""
    return isinstance(s.get("volumes"), list)


def human(s: dict[str, Any], args: argparse.Namespace) -> str:
    return node_human(s) if is_node(s) else gateway_human(s)


def gateway_human(s: dict[str, Any]) -> str:
    lines = [f"volume      {s['volume']} ({s['backend']}), pid {s['pid']}",
             f"source      {s['source']}",
             f"mountpoint  {s['mountpoint']}",
             f"scopes      {s['scopes']}, inodes cached {s['inodes_cached']}"]
    if "uptime_seconds" in s:
        lines.append(f"uptime      {duration(s['uptime_seconds'])}, version {s['version']}")
    if "accounting" in s:
        lines.append(f"accounting  {s['accounting']}")
    if s.get("rebuilding"):
        lines.append(f"rebuilding  {', '.join(s['rebuilding'])} "
                     f"({s.get('waiting_for_rebuild', 0)} requests waiting)")
    for r in s.get("rebuilds", []):
        lines.append(f"rebuilt     {r['qsid']}: {r['files']} files in {r['seconds']}s")
    return "\n".join(lines)


def node_human(s: dict[str, Any]) -> str:
    head = (f"node        mountd pid {s.get('pid')}, up {duration(s.get('uptime_seconds'))}, "
            f"{s.get('state', '?')}")
    rows = [[v["name"], v["state"], str(v.get("pid") or "-"), v.get("backend") or "-",
             duration(v.get("uptime_seconds")), v.get("accounting") or "-",
             str(v.get("restarts", 0)), v.get("mountpoint") or "-"]
            for v in s["volumes"]]
    lines = [head, "", table(rows, ["VOLUME", "STATE", "PID", "BACKEND", "UP", "ACCOUNTING",
                                    "RESTARTS", "MOUNTPOINT"])]
    for v in s["volumes"]:
        if v.get("problem"):
            lines.append(f"{v['name']}: {v['problem']}")
    deaths = [(v["name"], d) for v in s["volumes"] for d in v.get("deaths", [])[:RECENT_DEATHS]]
    if deaths:
        lines += ["", "recent deaths (newest first per volume):"]
        lines += [death_line(name, d) for name, d in deaths]
    return "\n".join(lines)


def death_line(volume: str, d: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["time"]))
    down = (f"down {d['downtime_seconds']:.1f}s" if d.get("downtime_seconds") is not None
            else "still down")
    pids = f"pid {d.get('old_pid') or '-'} -> {d.get('new_pid') or '-'}"
    return f"  {when}  {volume}  {down}  {pids}  {d['cause']}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="show the gateway's or the node's state",
                       parents=[client_options()],
                       description="Show the state of the gateway behind the control socket, "
                       "or of every volume and their recent restarts on the node's socket.")
    p.set_defaults(func=runner(do_status, human))

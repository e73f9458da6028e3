"""`fusegw check-config [--config FILE] [--json]`: what the node will run, or every mistake.

An operator points it at the node's file (`/etc/fusegw/fusegw.toml`, or the storage proxy's
`storage-proxy.toml` as it is) before starting mountd: the output is what mountd and
`fusegw mount --config` will do with it, and each problem is one line naming the file, the
table, the key and what is wrong. Exit status 0 when the file is good, 2 when it is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusegw.cli.client import EXIT_OK, EXIT_USAGE, table
from fusegw.settings import StartupError, group_id

if TYPE_CHECKING:  # pydantic and the backends (trio) load only when this command runs
    from fusegw.config import NodeConfig

DEFAULT_CONFIG = "/etc/fusegw/fusegw.toml"


def register(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate the node's configuration file",
                       description="Validate the node's TOML (fusegw's own or a storage "
                       "proxy's storage-proxy.toml) and print what the node will run, or "
                       "every problem; exit status 2 on problems.")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"the file (default {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusegw.config import ConfigError, load_config

    path = Path(args.config)
    try:
        node = load_config(path)
    except ConfigError as e:
        if args.json:
            print(json.dumps({"config": str(path), "ok": False, "errors": e.problems},
                             indent=2))
        else:
            for problem in e.problems:
                print(f"fusegw: {path}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    summary = describe(path, node)
    print(json.dumps(summary, indent=2) if args.json else human(summary))
    return EXIT_OK


def describe(path: Path, node: NodeConfig) -> dict[str, Any]:
    """What the node will run, without secrets (a token is only said to be set)."""
    control = node.control
    return {
        "config": str(path),
        "ok": True,
        "volumes": [{"name": name, "backend": table.backend, "path": str(table.path),
                     "mountpoint": str(node.mountpoint(name)),
                     "control_socket": str(node.control_socket(name)),
                     "fsprefix": str(table.fsprefix),
                     "options": sorted(table.options)}
                    for name, table in sorted(node.volume.items())],
        "node_endpoint": {"socket": str(control.socket), "tcp_listen": control.tcp_listen,
                          "auth_token_set": control.auth_token is not None},
        "admin_group": _group(control.admin_group),
        "mountd": node.mountd.model_dump(mode="json"),
        "notes": node.notes(),
    }


def _group(name: str | None) -> dict[str, Any] | None:
    if not name:
        return None
    try:
        gid = int(name) if name.isdigit() else group_id(name)
    except StartupError:  # removed since the file was read: named, never a traceback
        gid = None
    return {"name": name, "gid": gid}


def human(s: dict[str, Any]) -> str:
    rows = [[v["name"], v["backend"], v["path"], v["mountpoint"], v["control_socket"]]
            for v in s["volumes"]]
    endpoint = s["node_endpoint"]
    tcp = "off"
    if endpoint["tcp_listen"]:
        token = "token set" if endpoint["auth_token_set"] else "no token in the file"
        tcp = f"{endpoint['tcp_listen']} ({token})"
    group = s["admin_group"]
    mountd = s["mountd"]
    lines = [f"{s['config']}: valid",
             table(rows, ["VOLUME", "BACKEND", "PATH", "MOUNTPOINT", "CONTROL SOCKET"])
             if rows else "no volumes",
             f"node endpoint  {endpoint['socket']}, TCP {tcp}",
             "admin group    " + (f"{group['name']} (gid {group['gid']})" if group
                                  else "none: root only"),
             f"mountd         mount root {mountd['mount_root']}, logs {mountd['log_dir']}, "
             f"health every {mountd['health_interval']:g}s (timeout "
             f"{mountd['health_timeout']:g}s), restarts back off up to "
             f"{mountd['restart_backoff_max']:g}s"]
    lines += [f"note: {note}" for note in s["notes"]]
    return "\n".join(lines)

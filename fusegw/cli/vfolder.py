"""`fusegw vfolder create|delete|usage|mount`."""

from __future__ import annotations

import argparse
from typing import Any

from fusegw.cli.client import Client, table
from fusegw.cli.common import client_options, runner, size_arg
from fusegw.cli.sizes import format_size


def do_create(c: Client, args: argparse.Namespace) -> Any:
    options = None
    if args.initial_limit is not None:
        options = {"initial_max_size_for_quota_scope": args.initial_limit}
    c.call("POST", "/folder/create", {"volume": c.volume, "vfid": args.vfid, "options": options})


def do_delete(c: Client, args: argparse.Namespace) -> Any:
    c.call("POST", "/folder/delete", {"volume": c.volume, "vfid": args.vfid})


def do_usage(c: Client, args: argparse.Namespace) -> Any:
    return dict(c.call("GET", "/folder/usage", {"volume": c.volume, "vfid": args.vfid}),
                vfid=args.vfid)


def do_mount(c: Client, args: argparse.Namespace) -> Any:
    return c.call("GET", "/folder/mount", {"volume": c.volume, "vfid": args.vfid})


def register(sub: Any) -> None:
    common = client_options()
    vf = sub.add_parser("vfolder", help="vfolders: create, delete, usage, mount",
                        description="Manage the vfolders of a volume.")
    vsub = vf.add_subparsers(dest="action", required=True, metavar="ACTION")

    def cmd(name: str, help_: str, action: Any, human: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = vsub.add_parser(name, help=help_, description=help_,
                                                     parents=[common])
        p.add_argument("vfid", help="vfolder ID: <quota scope id>/<folder uuid hex>")
        p.set_defaults(func=runner(action, human))
        return p

    create = cmd("create", "create a vfolder (and its quota scope if missing)", do_create,
                 lambda r, a: f"created {a.vfid}")
    create.add_argument("--initial-limit", type=size_arg,
                        help="limit for the quota scope if it has to be created, e.g. 10G")
    cmd("delete", "delete a vfolder and everything in it", do_delete,
        lambda r, a: f"deleted {a.vfid}")
    cmd("usage", "a vfolder's usage (from the ledger)", do_usage,
        lambda r, a: table([[r["vfid"], format_size(r["used_bytes"]), str(r["file_count"])]],
                           ["VFOLDER", "USED", "FILES"]))
    cmd("mount", "the vfolder's path under the mount point", do_mount, lambda r, a: r["path"])

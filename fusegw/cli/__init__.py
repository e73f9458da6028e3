"""`fusegw`: the command line. `fusegw SOURCE MOUNTPOINT -o OPTS` (mount.fuse3's form) is mount."""

from __future__ import annotations

import argparse
import os
import sys

from fusegw.cli import checkconfig, migrate, mount, quota, status, vfolder

COMMANDS = ("mount", "quota", "vfolder", "status", "migrate", "check-config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusegw", description="FUSE quota gateway for the shared storage of AI clusters.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (mount, quota, vfolder, status, migrate, checkconfig):
        module.register(sub)
    return parser


SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""mount.fuse3 runs us with no PATH at all (fstab, `env -i mount`): the backends' commands
(`xfs_quota` in /usr/sbin, `btrfs`, `fusermount3`) must still be found."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PATH", SYSTEM_PATH)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and not args_list[0].startswith("-") and args_list[0] not in COMMANDS:
        args_list.insert(0, "mount")  # fstab: mount.fuse3 runs `fusegw SOURCE MOUNTPOINT -o ...`
    args = build_parser().parse_args(args_list)
    try:
        result: int = args.func(args)
    except BrokenPipeError:  # `fusegw quota list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result

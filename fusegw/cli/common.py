"""Arguments and output shared by the admin commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from fusegw.cli.client import EXIT_OK, EXIT_USAGE, Client, CLIError, fail
from fusegw.cli.sizes import parse_size

Action = Callable[[Client, argparse.Namespace], Any]


def client_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--socket", help="control socket (default: $FUSEGW_SOCKET, "
                        "/run/fusegw/<volume>.sock, or the only socket in /run/fusegw)")
    parent.add_argument("--volume", help="volume name (default: the socket's only volume)")
    parent.add_argument("--json", action="store_true", help="machine-readable output")
    return parent


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def count_arg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(text)


def runner(action: Action, human: Callable[[Any, argparse.Namespace], str] | None = None
           ) -> Callable[[argparse.Namespace], int]:
    """Run an action against the socket; print --json or the human form; map errors to exits."""

    def run(args: argparse.Namespace) -> int:
        try:
            client = Client(args.socket, args.volume)
            result = action(client, args)
        except CLIError as e:
            return fail(e)
        except ValueError as e:
            return fail(CLIError(str(e), EXIT_USAGE))
        if args.json:
            print(json.dumps(result if result is not None else {"ok": True}, indent=2))
        elif human is not None:
            text = human(result, args)
            if text:
                print(text)
        return EXIT_OK

    return run

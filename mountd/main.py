"""`fusegw-mountd --config FILE`: run and heal every gateway of this node, serve its endpoint.

Exit status: 0 after SIGTERM or SIGINT (every volume unmounted), 2 for a configuration that
cannot be used (each problem on its own line), 1 for any other refusal to start (one line).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import trio

from fusegw import logs
from fusegw.config import DEFAULT_CONFIG, ConfigError, NodeConfig, load_config
from mountd.gateway import Launcher, supports_clear_dead
from mountd.node import MountdError, Node

EXIT_OK, EXIT_REFUSED, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusegw-mountd",
        description="Run one fusegw gateway per configured volume, replace any that dies or "
                    "hangs, and serve the node's control endpoint. SIGHUP re-reads the file, "
                    "SIGTERM unmounts everything.")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help=f"the node's TOML configuration (default {DEFAULT_CONFIG})")
    p.add_argument("--log-file", help="mountd's own log (default: stderr, the journal under "
                   "systemd); each gateway logs to [mountd] log_dir/NAME.log")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default), WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logs.setup(args.log_level, args.log_file)
    except (ValueError, OSError) as e:
        print(f"fusegw-mountd: cannot log: {e}", file=sys.stderr)
        return EXIT_REFUSED
    for noisy in ("httpx", "httpcore"):  # a line per health check otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config_path = Path(os.path.abspath(args.config))
    try:
        config = load_config(config_path)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"fusegw-mountd: {line}", file=sys.stderr)
        return EXIT_CONFIG
    os.umask(0o022)  # mountd's own files: the sockets' modes are set explicitly
    try:
        return trio.run(_run, config_path, config)
    except BaseException as e:
        refusal = _refusal(e)
        if refusal is None:
            raise
        print(f"fusegw-mountd: {_one_line(refusal)}", file=sys.stderr)
        return EXIT_REFUSED


def _refusal(error: BaseException) -> BaseException | None:
    """A refusal to start (MountdError; an OSError such as the node socket or TCP address in
    use), also when trio hands it over wrapped in an exception group."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, (MountdError, OSError)) else None


def _one_line(error: BaseException) -> str:
    """An OSError as its message and file, without Python's `[Errno N]` prefix."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)


async def _run(config_path: Path, config: NodeConfig) -> int:
    runtime = config.control.socket.parent / "mountd"
    launcher = Launcher(runtime, config.mountd.log_dir, await supports_clear_dead())
    return await Node(config_path, config, launcher).run()


if __name__ == "__main__":
    raise SystemExit(main())

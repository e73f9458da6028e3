"""Serve one vendor emulator: `python tests/emulators/run.py VENDOR --port P --root DIR
[--certfile F --keyfile K]` (hypercorn, trio worker; TLS when given a certificate)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("vendor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    here = Path(__file__).parent
    sys.path[:0] = [str(here), str(here.parent)]  # `common` and `emulators.common` both import
    module = importlib.import_module(args.vendor.replace("-", "_"))
    app = module.make_app(args.root)
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.certfile, config.keyfile = args.certfile, args.keyfile
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    trio.run(serve, app, config)


if __name__ == "__main__":
    main()

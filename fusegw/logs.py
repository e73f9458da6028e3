"""Structured, quiet-by-default logging: `time level logger message` with key=value messages."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "INFO", path: str | None = None) -> None:
    handler: logging.Handler = (logging.FileHandler(path) if path
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)
    # httpcore's DEBUG trace prints response headers: an appliance's session token with them
    logging.getLogger("httpcore").setLevel(logging.WARNING)

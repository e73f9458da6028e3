"""`fusegw-mountd --config FILE`: the node supervisor (being built; see issue 10)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("fusegw-mountd: not built yet", file=sys.stderr)
    return 1

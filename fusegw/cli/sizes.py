"""Sizes as operators write them: `10G`, `512M`, `1.5T`, binary units; `0`/`none` = unlimited."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

UNITS = "KMGTPE"
_SIZE = re.compile(r"(?i)\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtpe]?)(?:i?b)?\s*")
MAX = 2**63 - 1


def parse_size(text: str) -> int:
    """`1.5T` -> 1649267441664. Raises ValueError for anything else, or a fraction of a byte."""
    if text.strip().lower() in ("none", "unlimited"):
        return 0
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 10G, 512M, 1.5T, 4096)")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        raise ValueError(f"not a size: {text!r}") from None
    unit = m.group(2).upper()
    value = number * (1024 ** (UNITS.index(unit) + 1) if unit else 1)
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    if value > MAX:
        raise ValueError(f"{text!r} is too large")
    return int(value)


def format_size(n: int | None) -> str:
    """1649267441664 -> `1.5T`; None -> `-`."""
    if n is None:
        return "-"
    value = float(n)
    unit = ""
    for u in UNITS:
        if value < 1024:
            break
        value /= 1024
        unit = u
    text = f"{value:.1f}".rstrip("0").rstrip(".") if unit else str(n)
    return text + unit

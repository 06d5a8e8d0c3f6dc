"""Amounts of bytes written in a policy: 1048576, "1 MiB", "5 MB", "2.5MB/s"."""

from __future__ import annotations

import re

UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
AMOUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value: object) -> int:
    """Bytes from an integer or a number with a unit (B, kB, MB, GB, TB, KiB, MiB, GiB,
    TiB); raises ValueError saying what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an amount of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is below 0")
        return value
    if not isinstance(value, str):
        raise ValueError(f'{value!r} is not an amount of bytes (like 1048576 or "1 MiB")')
    match = AMOUNT.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in UNITS):
        raise ValueError(
            f"{value!r} is not an amount of bytes (a number with B, kB, MB, GB, KiB, MiB, GiB)"
        )
    return int(float(match.group(1)) * UNITS[unit or "b"])


def parse_rate(value: object) -> int:
    """Bytes per second from "2 MB/s" (or an integer of bytes per second)."""
    if isinstance(value, str):
        text = value.strip()
        if not text.lower().endswith("/s"):
            raise ValueError(f'{value!r} is not a rate (like "2 MB/s")')
        value = text[:-2]
    return parse_bytes(value)

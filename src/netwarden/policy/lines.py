"""Where things are in a TOML file: tomllib gives values, this gives line numbers."""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")


class LineFinder:
    def __init__(self, text: str) -> None:
        self._blocks: list[tuple[str, int, int]] = []  # (header name, start, end line)
        lines = text.splitlines()
        self._lines = lines
        current, start = "", 1
        for number, line in enumerate(lines, start=1):
            match = _HEADER.match(line)
            if match:
                self._blocks.append((current, start, number - 1))
                current, start = match.group(2), number
        self._blocks.append((current, start, len(lines)))

    def _block(self, name: str, occurrence: int = 0) -> tuple[int, int] | None:
        found = [(s, e) for n, s, e in self._blocks if n == name]
        return found[occurrence] if occurrence < len(found) else None

    def header(self, name: str, occurrence: int = 0) -> int:
        block = self._block(name, occurrence)
        return block[0] if block else 0

    def key(self, name: str, key: str, occurrence: int = 0) -> int:
        """Line of `key = ...` inside table NAME (the top level when NAME is '')."""
        block = self._block(name, occurrence)
        if block is None:
            return 0
        start, end = block
        for number in range(start, end + 1):
            match = _KEY.match(self._lines[number - 1])
            if match and match.group(1).strip("\"'") == key:
                return number
        return block[0]

"""The [inspect.scan] table and the [[inspect.dlp]] rules of a policy file:

[inspect.scan]
scanners = ["eicar", "clamd"]      # eicar: the built-in test signature; clamd: ClamAV
clamd = "/run/clamav/clamd.ctl"    # clamd's unix socket, or host:port
bodies = ["upload", "download"]    # which HTTP bodies are scanned
streams = false                    # raw TCP streams (not HTTP) too
action = "block"                   # block | log
on_error = "block"                 # clamd down or failing: block (closed) | log (open)
hold_back = "1 MiB"                # the end of a body kept until scanned
max_size = "25 MiB"                # bytes of one body scanned; beyond, passed unscanned

[[inspect.dlp]]
name = "cards"
match = "card"                     # card | private_key | cloud_key
regex = "PROJECT-[0-9]{4}"         # or a regular expression of your own
action = "block"                   # block | log
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from netwarden.inspect.clamd import DEFAULT_SOCKET, parse_address
from netwarden.inspect.dlp import BUILTIN, DlpRule, Pattern, user_pattern
from netwarden.inspect.scanning import Direction, ScanAction
from netwarden.policy.inspect_model import SCANNERS, ScanPolicy
from netwarden.policy.lines import LineFinder
from netwarden.policy.quantities import parse_bytes

SCAN_KEYS = {
    "scanners",
    "clamd",
    "bodies",
    "streams",
    "action",
    "on_error",
    "hold_back",
    "max_size",
}
DLP_KEYS = {"name", "match", "regex", "action"}

Problem = Callable[[int, str], None]


class ScanSection:
    def __init__(self, lines: LineFinder, problem: Problem) -> None:
        self.lines, self.problem = lines, problem

    def scan(self, raw: Any) -> ScanPolicy:
        header = self.lines.header("inspect.scan")

        def at(key: str) -> int:
            return self.lines.key("inspect.scan", key) or header

        if not isinstance(raw, dict):
            self.problem(header, "[inspect.scan] must be a table")
            return ScanPolicy()
        for key in raw:
            if key not in SCAN_KEYS:
                self.problem(at(key), f"unknown key {key!r} in [inspect.scan]")
        scanners = self._names(raw, "scanners", SCANNERS, at("scanners"), "scanner")
        if not scanners:
            self.problem(header, '[inspect.scan] names no scanner (scanners = ["eicar"])')
        clamd: str | tuple[str, int] = DEFAULT_SOCKET
        if "clamd" in raw:
            try:
                clamd = parse_address(str(raw["clamd"]))
            except ValueError as exc:
                self.problem(at("clamd"), f"clamd: {exc}")
        bodies = self._names(raw, "bodies", tuple(Direction), at("bodies"), "body direction")
        streams = raw.get("streams", False)
        if not isinstance(streams, bool):
            self.problem(at("streams"), "streams must be true or false")
            streams = False
        defaults = ScanPolicy()
        return ScanPolicy(
            scanners=scanners,
            clamd=clamd,
            bodies=frozenset(Direction(b) for b in bodies) if "bodies" in raw else defaults.bodies,
            streams=streams,
            action=self._action(raw, "action", at),
            on_error=self._action(raw, "on_error", at),
            hold_back=self._size(raw, "hold_back", defaults.hold_back, at, minimum=0),
            max_size=self._size(raw, "max_size", defaults.max_size, at, minimum=1),
            line=header,
        )

    def dlp(self, raw: Any, line: int) -> tuple[DlpRule, ...]:
        if not isinstance(raw, list):
            self.problem(line, "DLP rules are written as [[inspect.dlp]] tables")
            return ()
        rules = (self._dlp_rule(index, body) for index, body in enumerate(raw))
        return tuple(rule for rule in rules if rule is not None)

    def _dlp_rule(self, index: int, raw: Any) -> DlpRule | None:
        header = self.lines.header("inspect.dlp", index)

        def at(key: str) -> int:
            return self.lines.key("inspect.dlp", key, index) or header

        if not isinstance(raw, dict):
            self.problem(header, "an [[inspect.dlp]] rule must be a table")
            return None
        for key in raw:
            if key not in DLP_KEYS:
                self.problem(at(key), f"unknown key {key!r} in [[inspect.dlp]]")
        name = raw.get("name", f"dlp-{index + 1}")
        if not isinstance(name, str) or not name:
            self.problem(at("name"), "name must be a non-empty string")
            name = f"dlp-{index + 1}"
        pattern = self._pattern(raw, at, header)
        if pattern is None:
            return None
        return DlpRule(name, header, pattern, self._action(raw, "action", at))

    def _pattern(
        self, raw: dict[str, Any], at: Callable[[str], int], header: int
    ) -> Pattern | None:
        if ("match" in raw) == ("regex" in raw):
            self.problem(header, "a DLP rule has either match (a built-in pattern) or regex")
            return None
        if "match" in raw:
            builtin = BUILTIN.get(str(raw["match"]))
            if builtin is None:
                known = ", ".join(BUILTIN)
                self.problem(at("match"), f"match must be one of {known}, not {raw['match']!r}")
            return builtin
        regex = raw["regex"]
        if not isinstance(regex, str) or not regex:
            self.problem(at("regex"), "regex must be a non-empty string")
            return None
        try:
            pattern = user_pattern(regex)
        except re.error as exc:
            self.problem(at("regex"), f"regex does not compile: {exc}")
            return None
        if pattern.regex.match(b""):
            self.problem(at("regex"), "regex matches nothing at all (the empty string)")
            return None
        return pattern

    def _names(
        self, raw: dict[str, Any], key: str, allowed: tuple[str, ...], line: int, what: str
    ) -> tuple[str, ...]:
        value = raw.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problem(line, f"{key} must be a list of names")
            return ()
        names = []
        for entry in value:
            if entry in allowed:
                names.append(str(entry))
            else:
                self.problem(
                    line, f"unknown {what} {entry!r} (known: {', '.join(map(str, allowed))})"
                )
        return tuple(names)

    def _action(self, raw: dict[str, Any], key: str, at: Callable[[str], int]) -> ScanAction:
        try:
            return ScanAction(raw.get(key, "block"))
        except ValueError:
            self.problem(at(key), f"{key} must be block or log, not {raw.get(key)!r}")
            return ScanAction.BLOCK

    def _size(
        self,
        raw: dict[str, Any],
        key: str,
        default: int,
        at: Callable[[str], int],
        minimum: int,
    ) -> int:
        if key not in raw:
            return default
        try:
            size = parse_bytes(raw[key])
        except ValueError as exc:
            self.problem(at(key), f"{key}: {exc}")
            return default
        if size < minimum:
            self.problem(at(key), f"{key} must be at least {minimum} bytes")
            return default
        return size

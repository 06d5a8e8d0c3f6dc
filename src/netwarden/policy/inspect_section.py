"""The [inspect] section of a policy file, and its [[inspect.http]] rules:

[inspect]
intercept_tls = true               # decrypt TLS with netwarden's CA (netwarden ca init)
passthrough = ["*.bank.example", "10.0.0.0/8"]   # never intercepted
upstream_ca = "/etc/ssl/private-ca.pem"          # also trusted for upstream servers

[[inspect.http]]
action = "block"                   # allow | block | rewrite
host = ["*.ads.example", "tracker.example"]
method = ["POST"]
path_prefix = ["/collect"]
path_regex = "\\.exe$"
content_type = ["application/x-msdownload"]   # of the response
respond = "page"                   # page (403 naming the rule) | reset

Scanning and DLP ([inspect.scan], [[inspect.dlp]]): see scan_section.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netwarden.policy.inspect_model import (
    BlockResponse,
    HttpAction,
    HttpRule,
    InspectPolicy,
    ScanPolicy,
)
from netwarden.policy.lines import LineFinder
from netwarden.policy.prefixes import Network
from netwarden.policy.scan_section import ScanSection

INSPECT_KEYS = {
    "intercept_tls",
    "passthrough",
    "upstream_ca",
    "pinning_memory",
    "identify_timeout",
    "http",
    "scan",
    "dlp",
}
HTTP_KEYS = {
    "name",
    "action",
    "host",
    "method",
    "path_prefix",
    "path_regex",
    "content_type",
    "respond",
    "set_request_headers",
    "remove_request_headers",
    "set_response_headers",
    "remove_response_headers",
}
HOST_PATTERN = re.compile(r"^(\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?)$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MEDIA = re.compile(r"^[a-z0-9.+-]+/([a-z0-9.+-]+|\*)$", re.IGNORECASE)

Problem = Callable[[int, str], None]


class InspectSection:
    def __init__(self, lines: LineFinder, problem: Problem, base: Path) -> None:
        self.lines, self.problem, self.base = lines, problem, base

    def load(self, raw: Any) -> InspectPolicy:
        def at(key: str) -> int:
            return self.lines.key("inspect", key)

        if not isinstance(raw, dict):
            self.problem(self.lines.key("", "inspect"), "[inspect] must be a table")
            return InspectPolicy()
        for key in raw:
            if key not in INSPECT_KEYS:
                self.problem(at(key), f"unknown key {key!r} in [inspect]")
        intercept = raw.get("intercept_tls", False)
        if not isinstance(intercept, bool):
            self.problem(at("intercept_tls"), "intercept_tls must be true or false")
            intercept = False
        hosts, networks = self._passthrough(raw.get("passthrough", []), at("passthrough"))
        upstream_ca = raw.get("upstream_ca", "")
        if upstream_ca:
            path = Path(upstream_ca) if isinstance(upstream_ca, str) else None
            if path is not None and not path.is_absolute():
                path = self.base / path
            if path is None or not path.is_file():
                self.problem(
                    at("upstream_ca"), f"upstream_ca {upstream_ca!r} is not a readable file"
                )
            upstream_ca = str(path)
        raw_rules = raw.get("http", [])
        if not isinstance(raw_rules, list):
            self.problem(at("http"), "HTTP rules are written as [[inspect.http]] tables")
            raw_rules = []
        rules = [self._http_rule(index, body) for index, body in enumerate(raw_rules)]
        scans = ScanSection(self.lines, self.problem)
        return InspectPolicy(
            scan=scans.scan(raw["scan"]) if "scan" in raw else ScanPolicy(),
            dlp=scans.dlp(raw.get("dlp", []), at("dlp")),
            intercept_tls=intercept,
            http=tuple(rule for rule in rules if rule is not None),
            passthrough_hosts=hosts,
            passthrough_networks=networks,
            upstream_ca=str(upstream_ca or ""),
            pinning_memory=self._seconds(raw, "pinning_memory", 3600.0, at),
            identify_timeout=self._seconds(raw, "identify_timeout", 0.5, at),
        )

    def _seconds(
        self, raw: dict[str, Any], key: str, default: float, at: Callable[[str], int]
    ) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.problem(at(key), f"{key} must be a number of seconds above 0, not {value!r}")
            return default
        return float(value)

    def _passthrough(self, raw: Any, line: int) -> tuple[tuple[str, ...], tuple[Network, ...]]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(line, "passthrough is a list of hosts and networks")
            return (), ()
        hosts: list[str] = []
        networks: list[Network] = []
        for entry in raw:
            if not isinstance(entry, str):
                self.problem(line, f"passthrough entry {entry!r} is not a host or network")
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if HOST_PATTERN.match(entry):
                hosts.append(entry.lower().rstrip("."))
            else:
                self.problem(
                    line, f"passthrough entry {entry!r} is not a host, *.domain or network"
                )
        return tuple(hosts), tuple(networks)

    def _strings(
        self, raw: dict[str, Any], key: str, line: int, pattern: re.Pattern[str], what: str
    ) -> tuple[str, ...]:
        value = raw.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(line, f"{key} must be a string or a list of strings")
            return ()
        for entry in value:
            if not pattern.match(entry):
                self.problem(line, f"{key} {entry!r} is not {what}")
        return tuple(value)

    def _headers(self, raw: dict[str, Any], key: str, line: int) -> tuple[tuple[str, str], ...]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.problem(line, f'{key} is a table of header = "value"')
            return ()
        out = []
        for name, text in value.items():
            if (
                not HEADER_NAME.match(name)
                or not isinstance(text, str)
                or any(c in text for c in "\r\n\0")
            ):
                self.problem(line, f"{key}: {name!r} = {text!r} is not a header and its value")
                continue
            out.append((name, text))
        return tuple(out)

    def _header_names(self, raw: dict[str, Any], key: str, line: int) -> tuple[str, ...]:
        names = self._strings(raw, key, line, HEADER_NAME, "a header name")
        return tuple(name.lower() for name in names)

    def _http_rule(self, index: int, raw: Any) -> HttpRule | None:
        header = self.lines.header("inspect.http", index)

        def at(key: str) -> int:
            return self.lines.key("inspect.http", key, index) or header

        if not isinstance(raw, dict):
            self.problem(header, "an [[inspect.http]] rule must be a table")
            return None
        for key in raw:
            if key not in HTTP_KEYS:
                self.problem(at(key), f"unknown key {key!r} in [[inspect.http]]")
        name = raw.get("name", f"http-{index + 1}")
        if not isinstance(name, str) or not name:
            self.problem(at("name"), "name must be a non-empty string")
            name = f"http-{index + 1}"
        try:
            action = HttpAction(str(raw.get("action")))
        except ValueError:
            self.problem(
                at("action"),
                f"action must be one of allow, block, rewrite, not {raw.get('action')!r}",
            )
            return None
        try:
            respond = BlockResponse(raw.get("respond", "page"))
        except ValueError:
            self.problem(
                at("respond"), f"respond must be page or reset, not {raw.get('respond')!r}"
            )
            respond = BlockResponse.PAGE
        regex = None
        if "path_regex" in raw:
            try:
                regex = re.compile(str(raw["path_regex"]))
            except re.error as exc:
                self.problem(at("path_regex"), f"path_regex does not compile: {exc}")
        if "content_type" in raw and action is not HttpAction.BLOCK:
            self.problem(
                at("content_type"),
                "content_type is for block rules (a response is blocked by its type)",
            )
        if "respond" in raw and action is not HttpAction.BLOCK:
            self.problem(at("respond"), "respond is for block rules")
        prefixes = self._strings(
            raw, "path_prefix", at("path_prefix"), re.compile(r"^/"), "a path starting with /"
        )
        return HttpRule(
            name=name,
            line=header,
            action=action,
            hosts=tuple(
                h.lower().rstrip(".")
                for h in self._strings(
                    raw, "host", at("host"), HOST_PATTERN, "a host, *.domain or *"
                )
            ),
            methods=tuple(
                m.upper()
                for m in self._strings(
                    raw, "method", at("method"), re.compile(r"^[A-Za-z]{1,20}$"), "a method"
                )
            ),
            path_prefixes=prefixes,
            path_regex=regex,
            content_types=tuple(
                c.lower()
                for c in self._strings(
                    raw, "content_type", at("content_type"), MEDIA, "a media type (type/sub)"
                )
            ),
            respond=respond,
            set_request_headers=self._headers(
                raw, "set_request_headers", at("set_request_headers")
            ),
            remove_request_headers=self._header_names(
                raw, "remove_request_headers", at("remove_request_headers")
            ),
            set_response_headers=self._headers(
                raw, "set_response_headers", at("set_response_headers")
            ),
            remove_response_headers=self._header_names(
                raw, "remove_response_headers", at("remove_response_headers")
            ),
        )

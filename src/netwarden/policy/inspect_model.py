"""The policy's [inspect] section as values: what the inspecting proxy looks at, what
it intercepts, and its HTTP rules."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from netwarden.inspect.clamd import DEFAULT_SOCKET
from netwarden.inspect.dlp import DlpRule
from netwarden.inspect.scanning import Direction, ScanAction
from netwarden.policy.prefixes import Network


class HttpAction(enum.StrEnum):
    ALLOW = "allow"  # let the request through; later rules are not asked
    BLOCK = "block"  # answer it with the block page (or a reset); never sent upstream
    REWRITE = "rewrite"  # change headers, then ask the next rules


class BlockResponse(enum.StrEnum):
    PAGE = "page"  # 403 with a short HTML page naming the rule
    RESET = "reset"  # the connection is reset


def host_matches(pattern: str, host: str) -> bool:
    """'*' any host; '*.example.com' its subdomains (not example.com itself);
    'example.com' exactly. Case-insensitive, a trailing dot ignored."""
    host = host.lower().rstrip(".")
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


@dataclass(frozen=True, slots=True)
class HttpRule:
    name: str
    line: int
    action: HttpAction
    hosts: tuple[str, ...] = ()  # empty: any
    methods: tuple[str, ...] = ()
    path_prefixes: tuple[str, ...] = ()
    path_regex: re.Pattern[str] | None = None
    content_types: tuple[str, ...] = ()  # of the response: decided when it arrives
    respond: BlockResponse = BlockResponse.PAGE
    set_request_headers: tuple[tuple[str, str], ...] = ()
    remove_request_headers: tuple[str, ...] = ()
    set_response_headers: tuple[tuple[str, str], ...] = ()
    remove_response_headers: tuple[str, ...] = ()

    def matches_request(self, method: str, host: str, path: str) -> bool:
        if self.hosts and not any(host_matches(p, host) for p in self.hosts):
            return False
        if self.methods and method.upper() not in self.methods:
            return False
        if self.path_prefixes and not any(path.startswith(p) for p in self.path_prefixes):
            return False
        return self.path_regex is None or self.path_regex.search(path) is not None

    def matches_content_type(self, content_type: str) -> bool:
        if not self.content_types:
            return True
        media = content_type.split(";", 1)[0].strip().lower()
        return any(
            media == c or (c.endswith("/*") and media.startswith(c[:-1]))
            for c in self.content_types
        )


SCANNERS = ("eicar", "clamd")


@dataclass(frozen=True, slots=True)
class ScanPolicy:
    """[inspect.scan]: which scanners look at which bodies, and what a finding does."""

    scanners: tuple[str, ...] = ()
    clamd: str | tuple[str, int] = DEFAULT_SOCKET
    bodies: frozenset[Direction] = frozenset(Direction)
    streams: bool = False  # raw TCP streams (not HTTP) too
    action: ScanAction = ScanAction.BLOCK
    on_error: ScanAction = ScanAction.BLOCK  # clamd unreachable or failing
    hold_back: int = 1 << 20
    max_size: int = 25 << 20  # bytes of one body scanned (clamd's StreamMaxLength)
    line: int = 0


@dataclass(frozen=True, slots=True)
class InspectPolicy:
    intercept_tls: bool = False
    http: tuple[HttpRule, ...] = ()
    passthrough_hosts: tuple[str, ...] = ()  # never intercepted (wildcards)
    passthrough_networks: tuple[Network, ...] = ()
    upstream_ca: str = ""  # extra CA file trusted for upstream servers, with the system's
    pinning_memory: float = 3600.0  # seconds a host refused by a client stays passed through
    identify_timeout: float = 0.5  # how long a quiet client is waited for (server speaks first)
    scan: ScanPolicy = ScanPolicy()
    dlp: tuple[DlpRule, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.intercept_tls or bool(self.http) or self.scans

    @property
    def scans(self) -> bool:
        return bool(self.scan.scanners or self.dlp)

    def passes_through(self, host: str, address: str) -> bool:
        import ipaddress

        if host and any(host_matches(p, host) for p in self.passthrough_hosts):
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.passthrough_networks)

"""Filters over flows shared by the terminal UI, --once and --watch."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from netwarden.model import Flow, Transport
from netwarden.model.flow import parse_network, within

TRANSPORTS = tuple(str(t) for t in Transport)


def _transport_matches(transport: str, wanted: str) -> bool:
    """proto:icmp takes ICMPv6 too."""
    wanted = wanted.lower()
    return transport == wanted or (wanted == "icmp" and transport == "icmp6")


@dataclass(frozen=True, slots=True)
class FlowFilter:
    process: str | None = None  # substring of name or exe, or an exact pid
    port: int | None = None  # local or remote
    state: str | None = None  # e.g. ESTABLISHED, LISTEN (case-insensitive)
    address: str | None = None  # substring of local or remote address
    transport: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # addr:10.0.0.0/8
    app: str | None = None  # substring of what the proxy identified: app:tls, app:example.com

    def matches(self, flow: Flow) -> bool:
        if self.process:
            proc = flow.process
            if proc is None:
                return False
            if self.process.isdigit():
                if proc.pid != int(self.process):
                    return False
            elif self.process not in proc.name and self.process not in proc.exe:
                return False
        key = flow.key
        if self.port is not None and self.port not in (key.local.port, key.remote.port):
            return False
        if self.state and flow.state.upper() != self.state.upper():
            return False
        if self.address and not (
            self.address in key.local.address or self.address in key.remote.address
        ):
            return False
        if self.network is not None and not (
            within(key.local.address, self.network) or within(key.remote.address, self.network)
        ):
            return False
        if self.app and self.app.lower() not in flow.app.lower():
            return False
        return not self.transport or _transport_matches(str(key.transport), self.transport)

    @classmethod
    def parse(cls, text: str) -> FlowFilter:
        """'proc:curl port:443 state:established addr:10.0 app:tls tcp' (or proto:icmp,
        proto:raw, proto:packet) or a bare word (process)."""
        values: dict[str, str] = {}
        for word in text.split():
            name, sep, value = word.partition(":")
            if not sep:
                if word.lower() in TRANSPORTS:
                    values["transport"] = word.lower()
                elif word.isdigit():
                    values["port"] = word
                else:
                    values["process"] = word
            elif name in ("proc", "process", "pid"):
                values["process"] = value
            elif name in ("port", "state", "transport", "app"):
                values[name] = value
            elif name == "proto":
                values["transport"] = value
            elif name in ("addr", "address", "host"):
                values["address"] = value
            else:
                raise ValueError(
                    f"unknown filter {name!r}: use proc:, port:, state:, addr:, app:, proto:"
                )
        transport = values.get("transport")
        if transport is not None and transport.lower() not in TRANSPORTS:
            raise ValueError(f"proto: is one of {', '.join(TRANSPORTS)}, not {transport!r}")
        port = values.get("port")
        if port is not None and not (port.isdigit() and int(port) <= 65535):
            raise ValueError(f"port must be a number from 0 to 65535, not {port!r}")
        address, network = values.get("address"), None
        if address is not None and ("/" in address or address.startswith("[")):
            try:
                network = parse_network(address)
            except ValueError:
                raise ValueError(f"addr: {address!r} is not an address or network") from None
            address = None
        return cls(
            process=values.get("process"),
            port=int(port) if port is not None else None,
            state=values.get("state"),
            address=address,
            transport=values.get("transport"),
            network=network,
            app=values.get("app"),
        )

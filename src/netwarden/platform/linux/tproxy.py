"""TPROXY: connections handed to a local listener without address rewriting.

Packets chosen by a tproxy rule get a mark in TPROXY_MARK/TPROXY_MASK (forwarded ones
TPROXY_MARK itself, this host's own TPROXY_MARK + 1 + the rule's index); a
policy-routing rule sends marked packets to ROUTING_TABLE, whose only route delivers
everything locally. netwarden owns that rule and table (in the namespace it runs in)
and removes them with its policy.
"""

from __future__ import annotations

import subprocess

TPROXY_MARK = 0x4E500100
TPROXY_MASK = 0xFFFFFF00
ROUTING_TABLE = 3100
FWMARK = f"{TPROXY_MARK:#x}/{TPROXY_MASK:#x}"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def setup_routing() -> None:
    teardown_routing()
    for family in ("-4", "-6"):
        everything = "0.0.0.0/0" if family == "-4" else "::/0"
        for args in (
            (family, "rule", "add", "fwmark", FWMARK, "lookup", str(ROUTING_TABLE)),
            (family, "route", "add", "local", everything, "dev", "lo", "table",
             str(ROUTING_TABLE)),
        ):  # fmt: skip
            result = _ip(*args)
            if result.returncode != 0:
                raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def teardown_routing() -> None:
    """Remove netwarden's TPROXY routing rule and table; nothing else is touched."""
    for family in ("-4", "-6"):
        while _ip(family, "rule", "del", "fwmark", FWMARK, "lookup",
                  str(ROUTING_TABLE)).returncode == 0:  # fmt: skip
            pass
        _ip(family, "route", "flush", "table", str(ROUTING_TABLE))

"""What the faces ask of the operating system, through the one backend the engine
picked: privileges, capabilities, the firewall, application scopes."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from functools import cache

from netwarden.platform.base import (
    Backend,
    Capability,
    Firewall,
    PlatformError,
    QuickRedirect,
    RuleCounters,
    ShapeClass,
    Shaper,
)
from netwarden.platform.select import current, is_privileged

__all__ = [
    "Capability",
    "Firewall",
    "PlatformError",
    "QuickRedirect",
    "RuleCounters",
    "ShapeClass",
    "Shaper",
    "backend",
    "capabilities",
    "clean_dead_monitors",
    "clear_connect_queue",
    "clear_shaping",
    "firewall",
    "is_privileged",
    "monitor_table",
    "original_destination",
    "process_alive",
    "run_scoped",
]


@cache
def backend() -> Backend:
    return current()


def firewall() -> Firewall:
    return backend().firewall()


def capabilities() -> list[Capability]:
    return backend().capabilities()


def run_scoped(scope: str, argv: Sequence[str]) -> int:
    return backend().run_scoped(scope, argv)


def process_alive(pid: int) -> bool:
    return backend().process_alive(pid)


def clear_connect_queue() -> bool:
    """Remove what queues first packets for the CONNECT layer (a crashed daemon's)."""
    return backend().clear_connect_queue()


def clear_shaping() -> bool:
    """Remove netwarden's rate limits (a crashed daemon's)."""
    return backend().clear_shaping()


def clean_dead_monitors() -> list[str]:
    """Remove what monitors that died left behind here."""
    return backend().clean_dead_monitors()


def monitor_table(pid: int) -> str:
    """What a monitor of process `pid` may leave behind if it crashes ("" if nothing)."""
    return backend().monitor_table(pid)


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where an accepted, redirected TCP connection was originally going.

    For any local listener that netwarden redirects connections to: call it on the
    accepted socket. See docs/redirect.md.
    """
    return backend().original_destination(sock)

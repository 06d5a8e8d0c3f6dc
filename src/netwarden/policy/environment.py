"""What a policy's names refer to on this machine: users, groups, services, scopes.

The loader asks these questions through :class:`Environment`, so it stays pure and
tests can answer them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SCOPE_PARENT = "netwarden.slice"


@dataclass(frozen=True)
class Environment:
    uid_of: Callable[[str], int | None]
    gid_of: Callable[[str], int | None]
    service_cgroup: Callable[[str], str | None]  # unit -> path under the cgroup v2 root
    scope_cgroup: Callable[[str], str]  # scope name -> path under the cgroup v2 root


def scope_path(name: str) -> str:
    return f"{SCOPE_PARENT}/{name}"


def fake_environment(
    users: dict[str, int] | None = None,
    groups: dict[str, int] | None = None,
    services: dict[str, str] | None = None,
) -> Environment:
    """An environment that knows only what it is given (for tests and `policy test`)."""
    users, groups, services = users or {}, groups or {}, services or {}
    return Environment(users.get, groups.get, services.get, scope_path)

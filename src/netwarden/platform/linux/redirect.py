"""`netwarden redirect`: chosen outgoing TCP connections go to a local listener instead
(the brief's ALE_CONNECT_REDIRECT), as [[redirect]] rules of a policy compiled and
rendered exactly as a policy file's, in a table of its own that `netwarden down`
removes.

Sockets carrying the proxy mark are never redirected: a local proxy marks its upstream
connections (SO_MARK) so they leave for the real destination instead of looping back.
"""

from __future__ import annotations

from typing import Any

from netwarden.platform.base import PlatformError, QuickRedirect
from netwarden.platform.linux import nftables
from netwarden.platform.linux.nft_policy import redirect_chains
from netwarden.policy.compiler import compile_policy
from netwarden.policy.model import (
    Action,
    Addresses,
    Direction,
    Policy,
    Protocol,
    RedirectTarget,
    Rule,
    Settings,
)

TABLE = "netwarden_redirect"
PROXY_MARK = 0x4E500001
JSON = dict[str, Any]


def as_policy(redirects: list[QuickRedirect], mark: int = PROXY_MARK) -> Policy:
    """The one-liner's redirects as the [[redirect]] rules of a policy."""
    rules = tuple(
        Rule(
            index=index,
            name=f"redirect-{index + 1}",
            action=Action.REDIRECT,
            direction=Direction.FORWARD if redirect.forwarded else Direction.OUT,
            protocol=Protocol.TCP,
            destination=Addresses(
                tuple(n for n in redirect.destinations if n.version == redirect.family)
            ),
            destination_ports=redirect.ports,
            uid=redirect.uid,
            target=RedirectTarget(redirect.target[1], redirect.target[0]),
        )
        for index, redirect in enumerate(redirects)
    )
    return Policy(
        rules=(),
        defaults=dict.fromkeys(Direction, Action.ALLOW),
        sets={},
        settings=Settings(table=TABLE, proxy_mark=mark),
        redirects=rules,
    )


def render(redirects: list[QuickRedirect], mark: int = PROXY_MARK) -> list[JSON]:
    compiled = compile_policy(as_policy(redirects, mark))
    counters: list[JSON] = [
        {"add": {"counter": {"family": "inet", "table": TABLE, "name": name}}}
        for name in compiled.counters
        if name.startswith("rule_")
    ]
    return counters + redirect_chains(compiled)


def apply(redirects: list[QuickRedirect], mark: int = PROXY_MARK) -> None:
    try:
        nftables.replace_table("inet", TABLE, render(redirects, mark))
    except nftables.NftError as exc:
        raise PlatformError(str(exc)) from exc


def remove() -> bool:
    try:
        return nftables.delete_table("inet", TABLE)
    except nftables.NftError as exc:
        raise PlatformError(str(exc)) from exc

"""Connect redirection on nftables: chosen outgoing TCP connections go to a local
listener instead (the brief's ALE_CONNECT_REDIRECT), in a table netwarden owns.

Sockets carrying the proxy mark are never redirected: a local proxy marks its upstream
connections (SO_MARK) so they leave for the real destination instead of looping back.
"""

from __future__ import annotations

from typing import Any

from netwarden.platform.base import PlatformError, QuickRedirect
from netwarden.platform.linux import nftables

TABLE = "netwarden_redirect"
PROXY_MARK = 0x4E500001
JSON = dict[str, Any]


def _match(left: JSON, right: Any) -> JSON:
    return {"match": {"op": "==", "left": left, "right": right}}


def _rule(redirect: QuickRedirect) -> list[JSON]:
    address, port = redirect.target
    family = "ipv4" if redirect.family == 4 else "ipv6"
    payload = "ip" if redirect.family == 4 else "ip6"
    expr: list[JSON] = [
        _match({"meta": {"key": "nfproto"}}, family),
        _match({"meta": {"key": "l4proto"}}, "tcp"),
    ]
    destinations = [n for n in redirect.destinations if n.version == redirect.family]
    if destinations:
        values = [{"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}
                  for n in destinations]  # fmt: skip
        expr.append(_match({"payload": {"protocol": payload, "field": "daddr"}},
                           values[0] if len(values) == 1 else {"set": values}))  # fmt: skip
    if redirect.ports:
        ports = [r.low if r.low == r.high else {"range": [r.low, r.high]} for r in redirect.ports]
        expr.append(_match({"payload": {"protocol": "tcp", "field": "dport"}},
                           ports[0] if len(ports) == 1 else {"set": ports}))  # fmt: skip
    if redirect.uid is not None:
        expr.append(_match({"meta": {"key": "skuid"}}, redirect.uid))
    expr.append({"counter": None})
    if address.is_loopback or redirect.forwarded:
        expr.append({"redirect": {"port": port}})
    else:
        expr.append({"dnat": {"family": payload, "addr": str(address), "port": port}})
    return expr


def render(redirects: list[QuickRedirect], mark: int = PROXY_MARK) -> list[JSON]:
    where = {"family": "inet", "table": TABLE}
    commands: list[JSON] = [
        {"add": {"chain": {**where, "name": "out", "type": "nat", "hook": "output",
                           "prio": -100, "policy": "accept"}}},
        {"add": {"rule": {**where, "chain": "out", "comment": "the proxy's own connections",
                          "expr": [_match({"meta": {"key": "mark"}}, mark), {"return": None}]}}},
    ]  # fmt: skip
    if any(r.forwarded for r in redirects):
        # A forwarded connection is redirected on arrival to the receiving interface's
        # own address: the listener must accept there (0.0.0.0:PORT, [::]:PORT).
        commands.append({"add": {"chain": {**where, "name": "pre", "type": "nat",
                                           "hook": "prerouting", "prio": -100,
                                           "policy": "accept"}}})  # fmt: skip
    for redirect in redirects:
        chain = "pre" if redirect.forwarded else "out"
        commands.append({"add": {"rule": {**where, "chain": chain, "expr": _rule(redirect)}}})
    return commands


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

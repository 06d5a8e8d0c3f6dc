"""`netwarden redirect` and `netwarden down`: connect redirection to a local listener."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from netwarden.model.flow import IPAddress, parse_host_port


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"netwarden: {message}", err=True)
    raise typer.Exit(code)


def redirect(
    to: Annotated[
        list[str],
        typer.Option(help="Local listener ADDRESS:PORT; IPv6 as [::1]:PORT. Repeat for both."),
    ],
    dport: Annotated[
        list[str], typer.Option(help="Destination port or LOW-HIGH range; repeatable.")
    ],
    dest: Annotated[
        list[str] | None, typer.Option(help="Only to this address or network; repeatable.")
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="Only connections of this user (name or uid).")
    ] = None,
    gateway: Annotated[
        bool,
        typer.Option(
            "--gateway",
            help="Redirect connections routed through this host instead of its own; they "
            "arrive at the receiving interface's address, so listen on 0.0.0.0/[::].",
        ),
    ] = False,
) -> None:
    """Send chosen outgoing TCP connections to a local listener instead.

    The listener learns where each connection was going with
    netwarden.engine.host.original_destination(sock) (see docs/redirect.md).
    Connections from sockets marked 0x4e500001 (a proxy's own upstream connections)
    are never redirected. `netwarden down` removes the redirection. Needs root.

    Example: every outgoing connection to port 80 reaches a local server.\n
      netwarden redirect --dport 80 --to 127.0.0.1:55555 --to [::1]:55555
    """
    from netwarden.engine.host import PlatformError, QuickRedirect
    from netwarden.engine.host import firewall as host_firewall
    from netwarden.policy.model import PortRange

    try:
        firewall = host_firewall()
    except PlatformError as exc:
        _fail(f"netwarden: {exc}", 1)
        return

    targets: list[tuple[IPAddress, int]] = []
    for text in to:
        try:
            address, port = parse_host_port(text)
        except ValueError as exc:
            _fail(f"--to {exc}")
            return
        if port is None:
            _fail(f"--to {text!r} needs a port")
            return
        if any(other.version == address.version for other, _port in targets):
            _fail(
                f"--to {text!r}: one listener per address family (IPv4 and [IPv6]); "
                "the first would take every connection"
            )
        targets.append((address, port))
    ports = []
    for text in dport:
        low, _, high = text.partition("-")
        if not (low.isdigit() and (not high or high.isdigit())) or not (
            1 <= int(low) <= int(high or low) <= 65535
        ):
            _fail(f"--dport {text!r} is not a port (1-65535) or a range LOW-HIGH")
        ports.append(PortRange(int(low), int(high or low)))
    networks = []
    for text in dest or []:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            _fail(f"--dest {text!r} is not an IP address or network")
    uid = None
    if user is not None:
        uid = int(user) if user.isdigit() else firewall.environment().uid_of(user)
        if uid is None:
            _fail(f"--user: unknown user {user!r}")
    if gateway and uid is not None:
        _fail("--user applies to this host's own connections, not with --gateway")
    rules = [QuickRedirect(target, tuple(ports), tuple(networks), uid, gateway)
             for target in targets]  # fmt: skip
    try:
        firewall.apply_quick_redirects(rules)
    except PlatformError as exc:
        _fail(f"redirection not set up, nothing changed: {exc}", 1)
    for rule in rules:
        address, port = rule.target
        shown = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        typer.echo(f"redirecting IPv{rule.family} TCP to port(s) "
                   f"{', '.join(str(p) for p in ports)} -> {shown}")  # fmt: skip


def down() -> None:
    """Stop `netwarden up` running here and remove everything it and `netwarden redirect`
    set up (a crashed daemon's leftovers too). A policy applied with `netwarden policy
    apply` alone stays; `netwarden policy off` removes it."""
    import os
    import signal
    import time

    from netwarden.daemon import state
    from netwarden.engine.host import (
        PlatformError,
        clean_dead_monitors,
        clear_connect_queue,
        clear_shaping,
    )
    from netwarden.engine.host import firewall as host_firewall

    said = []
    running = state.read()
    try:
        firewall = host_firewall()
        if running is not None and state.alive(running.pid):
            os.kill(running.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while state.alive(running.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            said.append(f"stopped netwarden up (pid {running.pid})")
        if running is not None and state.read() is not None:  # it did not clean up
            firewall.remove(running.table)
            if running.monitor_table:
                firewall.remove(running.monitor_table)
            state.clear()
            said.append(f"removed table inet {running.table} left by pid {running.pid}")
        if firewall.remove_quick_redirects():
            said.append("redirection removed")
        if clear_connect_queue():
            said.append("removed the CONNECT layer's queue rules")
        if clear_shaping():
            said.append("removed the rate limits left by a daemon that died")
        for table in clean_dead_monitors():
            said.append(f"removed table inet {table} of a monitor that died")
    except PlatformError as exc:
        _fail(str(exc), 1)
    typer.echo("; ".join(said) if said else "nothing was up")

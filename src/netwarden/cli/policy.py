"""`netwarden policy`: check, apply, show, test and remove the filtering policy."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from netwarden.jsontext import dumps
from netwarden.wording import count

if TYPE_CHECKING:
    from netwarden.engine.host import Firewall
    from netwarden.policy.model import Policy

app = typer.Typer(
    help="Filters that pass, block, reject or log traffic, from a TOML policy file.\n\n"
    "The policy lives in one nftables table that netwarden owns; nothing else is touched. "
    "See `netwarden policy check --help` for the file format.",
    no_args_is_help=True,
)

TableOption = Annotated[str, typer.Option("--table", help="netwarden's nftables table.")]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _firewall() -> Firewall:
    from netwarden.engine.host import PlatformError, firewall

    try:
        return firewall()
    except PlatformError as exc:
        _fail(f"netwarden: {exc}", 1)
        raise  # unreachable: _fail exits


def _refuse_while_up(table: str, doing: str) -> None:
    """The daemon owns its table while it runs: changing it underneath would leave the
    daemon enforcing something it no longer knows."""
    from netwarden.daemon import state

    running = state.read()
    if running is not None and running.table == table and state.alive(running.pid):
        _fail(
            f"netwarden: netwarden up (pid {running.pid}) enforces table inet {table} "
            f"from {running.policy}; it was not {doing}. Stop it with `netwarden down`, "
            "or restart it with the new policy",
            1,
        )


def _load(path: Path) -> Policy:
    from netwarden.policy.errors import PolicyError
    from netwarden.policy.loader import load

    try:
        return load(path, _firewall().environment())
    except PolicyError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


@app.command()
def check(
    path: Annotated[Path, typer.Argument(help="Policy file (TOML).", metavar="FILE")],
) -> None:
    """Validate a policy file; print every problem with file:line (exit code 2).

    The format, in short (docs/policy.md has it all):\n
      \\[settings]      table, priority, proxy_port, proxy_mark, mark_base, socks5, http_proxy,
      connect_queue, connect_mask, fail_mode\n
      \\[defaults]      out = "allow"   in = "block"   forward = "allow"\n
      \\[sets.NAME]     addresses = ["192.0.2.0/24"]   file = "list.txt"\n
      \\[\\[rule]]        name, action (allow|block|reject|log|ask), direction (out|in|forward),
      protocol (tcp|udp|icmp|any), from, to (addresses or @sets), from_port, port,
      interface; out only: user, group, scope, service; by program (with `netwarden
      up`): exe, process, sha256, parent_exe, cmdline; in force at times only (with
      `netwarden up`): days (["mon-fri"]), hours ("08:00-17:30"), timezone\n
      \\[\\[redirect]]    name, to ("proxy" or ADDRESS:PORT), direction (out|forward),
      destination, port, user, group, scope, service, mark, method (nat|tproxy),
      target_mark

      \\[inspect]       intercept_tls, passthrough, upstream_ca, pinning_memory,
      identify_timeout; \\[\\[inspect.http]] name, action (allow|block|rewrite), host,
      method, path_prefix, path_regex, content_type, respond (page|reset), set_/remove_
      request_/response_headers (docs/inspect.md); \\[inspect.scan] scanners (eicar,
      clamd), clamd, bodies, streams, action (block|log), on_error, hold_back, max_size;
      \\[\\[inspect.dlp]] name, match (card|private_key|cloud_key) or regex, action
    """
    policy = _load(path)
    counts = {d.value: sum(1 for r in policy.rules if r.direction == d) for d in policy.defaults}
    defaults = ", ".join(f"{d} {a}" for d, a in policy.defaults.items())
    typer.echo(
        f"{path}: valid: {count(len(policy.rules), 'rule')} "
        f"({', '.join(f'{n} {d}' for d, n in counts.items())}), "
        f"{count(len(policy.redirects), 'redirect')}, {count(len(policy.sets), 'set')}"
        + (f", {len(policy.program_rules)} by program" if policy.program_rules else "")
        + (f", {len(policy.scheduled)} with days/hours" if policy.scheduled else "")
        + (f", {count(len(policy.quotas), 'quota')}" if policy.quotas else "")
        + (f", {count(len(policy.shapes), 'rate limit')}" if policy.shapes else "")
        + "; "
        f"defaults: {defaults}" + _inspect_summary(policy)
    )


def _inspect_summary(policy: Policy) -> str:
    inspect = policy.inspect
    if not (inspect.enabled or inspect.passthrough_hosts or inspect.passthrough_networks):
        return ""
    parts = [count(len(inspect.http), "HTTP rule")]
    if inspect.intercept_tls:
        passing = len(inspect.passthrough_hosts) + len(inspect.passthrough_networks)
        parts.append(
            f"TLS intercepted ({passing} passed through)" if passing else "TLS intercepted"
        )
    if inspect.scan.scanners:
        parts.append("scanning with " + ", ".join(inspect.scan.scanners))
    if inspect.dlp:
        parts.append(count(len(inspect.dlp), "DLP pattern"))
    return "; inspect: " + ", ".join(parts)


@app.command()
def apply(
    path: Annotated[Path, typer.Argument(help="Policy file (TOML).", metavar="FILE")],
) -> None:
    """Validate, then replace the live policy in one atomic step.

    A policy with any problem changes nothing; if the kernel refuses it, the previous
    policy stays in force.
    """
    from netwarden.engine.enforce import apply_policy
    from netwarden.engine.host import PlatformError

    policy = _load(path)
    if policy.program_rules:
        names = ", ".join(repr(rule.name) for rule in policy.program_rules)
        _fail(
            f"netwarden: {path}: rule(s) {names} name a program; such rules are decided "
            "as each connection starts, by `netwarden up --policy FILE`",
            2,
        )
    if policy.scheduled:
        names = ", ".join(repr(rule.name) for rule in policy.scheduled)
        _fail(
            f"netwarden: {path}: rule(s) {names} have days or hours; `netwarden up --policy "
            "FILE` puts them in force and out of it as the clock goes",
            2,
        )
    _refuse_while_up(policy.settings.table, "replaced")
    try:
        _compiled, rules = apply_policy(policy, _firewall())
    except PlatformError as exc:
        _fail(f"netwarden: policy not applied, nothing changed: {exc}", 1)
    typer.echo(f"applied {path}: {count(len(policy.rules), 'rule')} "
               f"({count(rules, 'kernel rule')}) "
               f"in table inet {policy.settings.table}")  # fmt: skip


@app.command()
def show(
    table: TableOption = "netwarden",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The live policy's rules with their packet and byte counters."""
    from netwarden.engine.host import PlatformError

    firewall = _firewall()
    try:
        counters, live = firewall.show(table)
    except PlatformError as exc:
        _fail(f"netwarden: {exc}", 1)
    if not live:
        _fail(f"no policy is applied (no table inet {table})", 1)
    from netwarden.engine import applied

    record = applied.read(table) or {}
    rows = applied.rule_rows(counters, record)
    if as_json:
        sys.stdout.write(
            dumps(
                {
                    "table": table,
                    "source": record.get("source"),
                    "applied": record.get("applied"),
                    "by": record.get("by"),
                    "rules": rows,
                }
            )
            + "\n"
        )
        return
    if record:
        when = datetime.fromtimestamp(record["applied"]).isoformat(timespec="seconds")
        typer.echo(
            f"table inet {table}: {record['source'] or '(no file)'}, applied {when} "
            f"by {record['by']}\n"
        )
    else:
        typer.echo(f"table inet {table} (applied before netwarden kept a record of it)\n")
    width = max((len(str(r["rule"])) for r in rows), default=4)
    typer.echo(
        f"{'COUNTER':16}  {'RULE':{width}}  {'ACTION':8} {'DIR':7} {'PACKETS':>10}  "
        f"{'BYTES':>12}  MATCHES"
    )
    for r in rows:
        typer.echo(
            f"{r['counter']:16}  {r['rule']:{width}}  {r['action']:8} {r['direction']:7} "
            f"{r['packets']:>10}  {r['bytes']:>12}  {r['matches']}"
        )
    marks = firewall.marked_owners()
    if marks:
        typer.echo("\nsockets marked for scope and service rules (cgroup: mark):")
        for owner, mark in sorted(marks.items()):
            typer.echo(f"  {owner}: {mark:#x}")


@app.command("test")
def decide_flow(
    path: Annotated[Path, typer.Argument(help="Policy file (TOML).", metavar="FILE")],
    flow: Annotated[
        str, typer.Option(help="e.g. 'tcp out 10.0.0.5:40000 -> 192.0.2.7:443 uid=1000'.")
    ],
    at: Annotated[
        str | None,
        typer.Option(
            help="Decide as at this time (ISO, like 2026-12-01T08:30, local time unless it "
            "says +01:00); rules with days/hours apply only then. Default: now."
        ),
    ] = None,
) -> None:
    """Say which rule decides a flow and why, without root and without the kernel."""
    import datetime

    from netwarden.policy.matcher import FlowSyntaxError, decide, parse_flow
    from netwarden.policy.schedule import now

    moment = now()
    if at is not None:
        try:
            given = datetime.datetime.fromisoformat(at)
        except ValueError:
            _fail(f"--at: {at!r} is not a time like 2026-12-01T08:30")
            return
        moment = (given if given.tzinfo else given.astimezone()).timestamp()
    loaded = _load(path)
    policy = loaded.in_force(moment)
    for rule in loaded.scheduled:
        if rule not in policy.rules and rule.when is not None:
            typer.echo(f"not in force then: rule {rule.name!r} ({rule.when.describe()})")
    try:
        query = parse_flow(flow, _firewall().environment())
    except FlowSyntaxError as exc:
        _fail(f"--flow: {exc}")
        return
    decision = decide(policy, query)
    if decision.redirect is not None:
        rule = decision.redirect
        typer.echo(f"redirect: rule {rule.name!r} ({path}:{rule.line}) sends it to "
                   f"{rule.target}; then, for the redirected connection:")  # fmt: skip
    for rule in decision.logged:
        typer.echo(f"log: rule {rule.name!r} ({path}:{rule.line}) logs this flow")
    typer.echo(f"{decision.action}: {decision.reason}")


@app.command()
def off(table: TableOption = "netwarden") -> None:
    """Remove netwarden's policy table, and nothing else."""
    from netwarden.engine.enforce import remove_policy
    from netwarden.engine.host import PlatformError

    _refuse_while_up(table, "removed")
    try:
        removed = remove_policy(table, _firewall())
    except PlatformError as exc:
        _fail(f"netwarden: {exc}", 1)
        return
    typer.echo(f"removed table inet {table}" if removed else f"no table inet {table} to remove")

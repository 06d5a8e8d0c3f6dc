"""`netwarden` command line."""

from __future__ import annotations

import enum
import gc
import inspect
import json
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from netwarden import __version__
from netwarden.jsontext import dumps_lines

GC_YOUNGEST_THRESHOLD = 10_000  # allocations between collections (Python's default: 700)

if TYPE_CHECKING:
    from netwarden.daemon.metrics_server import MetricsServer
    from netwarden.daemon.up import CalloutOptions, WebOptions
    from netwarden.engine.bus import Subscriber
    from netwarden.engine.core import Engine
    from netwarden.engine.host import Capability
    from netwarden.monitor.filters import FlowFilter
    from netwarden.monitor.history import HistoryStore

app = typer.Typer(
    help="Monitor and control network traffic per process.\n\n"
    "Start with `netwarden doctor` to see what this machine supports, then "
    "`netwarden monitor` for the live connection table.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


HistoryPath = Annotated[
    Path | None, typer.Option("--history", help="History database (closed flows).")
]
NoHistory = Annotated[bool, typer.Option("--no-history", help="Do not record history.")]
RetentionDays = Annotated[float, typer.Option(help="Keep closed flows this many days.", min=0)]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"netwarden: {message}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"netwarden {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Monitor and control network traffic per process."""


def _parse_time(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1] in units:
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        fail(f"{option} takes an ISO time (2026-11-26T10:00) or an age such as 15m, 2h, 7d")


@app.command()
def monitor(
    netns: Annotated[
        str | None, typer.Option(help="Watch this network namespace (/run/netns/NAME).")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Print the table once and exit.")] = False,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="With --once: table or json.")
    ] = OutputFormat.table,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", help="Stream NDJSON events: opened, updated, closed (with totals)."
        ),
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.1)] = 1.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (--watch, live view).")
    ] = None,
    filter_text: Annotated[
        str,
        typer.Option(
            "--filter",
            help="Only matching flows, e.g. 'proc:curl port:443 state:listen' or 'proto:raw'.",
        ),
    ] = "",
    history_path: HistoryPath = None,
    no_history: NoHistory = False,
    retention_days: RetentionDays = 30.0,
) -> None:
    """Show every TCP and UDP connection with its process, bytes and rates.

    Without options it opens the live table (sort with the column keys, filter with /).
    Closed connections are recorded in the history database; see `netwarden history`.

    Examples:\n
      netwarden monitor\n
      netwarden monitor --once --format json\n
      netwarden monitor --watch --filter proc:curl\n
      netwarden monitor --netns lab1 --once
    """
    from netwarden.monitor.filters import FlowFilter

    try:
        flow_filter = FlowFilter.parse(filter_text)
    except ValueError as exc:
        fail(str(exc))
    if once and watch:
        fail("--once and --watch exclude each other")
    if not once and not watch and not sys.stdout.isatty():
        fail("the live view needs a terminal: use --once or --watch when piping")
    if once:
        from netwarden.cli.once import CommandError, monitor_once

        try:
            monitor_once(netns, output is OutputFormat.json, flow_filter)
        except CommandError as exc:
            fail(str(exc))
        return
    _monitor_live(
        netns, watch, interval, duration, flow_filter,
        None if no_history else history_path, no_history, retention_days,
    )  # fmt: skip


def _open_engine(stack: ExitStack, netns: str | None, **options: Any) -> Engine:
    from netwarden.engine.core import Engine, EngineError

    try:
        return stack.enter_context(Engine.open(netns, **options))
    except EngineError as exc:
        fail(str(exc))


def _open_history(path: Path | None, disabled: bool, retention_days: float) -> HistoryStore | None:
    from netwarden.engine.host import is_privileged
    from netwarden.monitor.history import HistoryError, HistoryStore, default_path

    if disabled:
        return None
    try:
        return HistoryStore(path or default_path(is_privileged()), retention_days)
    except HistoryError as exc:
        fail(f"{exc} (use --history PATH or --no-history)")


def _settle_garbage_collector() -> None:
    """A long-running monitor makes and drops a few objects per flow: what was loaded
    at start (modules, the CLI) is set aside from the collector's scans, and the
    youngest generation is collected less often (its cycles are rare here)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, *gc.get_threshold()[1:])


def _monitor_live(
    netns: str | None,
    watch: bool,
    interval: float,
    duration: float | None,
    flow_filter: FlowFilter,
    history_path: Path | None,
    no_history: bool,
    retention_days: float,
) -> None:
    from netwarden.model import FlowEvent

    stop = threading.Event()
    _settle_garbage_collector()
    with ExitStack() as stack:
        history = _open_history(history_path, no_history, retention_days)
        if history is not None:
            stack.callback(history.close)
        engine = _open_engine(stack, netns, history=history, interval=interval)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        if sys.platform != "win32":
            signal.signal(signal.SIGHUP, lambda *_: stop.set())
        if watch:
            for line in engine.missing:
                typer.echo(f"note: {line}", err=True)
            typer.echo(f"netwarden: watching {netns or 'this host'}", err=True)

            def write(events: Sequence[object]) -> None:
                documents = [
                    e.to_json()
                    for e in events
                    if isinstance(e, FlowEvent) and flow_filter.matches(e.flow)
                ]
                if documents:
                    sys.stdout.buffer.write(dumps_lines(documents))
                    sys.stdout.buffer.flush()

            engine.bus.subscribe(write)
            try:
                engine.run(stop, duration)
            except KeyboardInterrupt:
                stop.set()
            except BrokenPipeError:
                stop.set()
            return
        from netwarden.tui.app import MonitorApp

        tui = MonitorApp(engine, stop, flow_filter, duration)

        def quit_tui(*_: object) -> None:
            stop.set()
            tui.exit()

        signal.signal(signal.SIGTERM, quit_tui)
        if sys.platform != "win32":
            signal.signal(signal.SIGHUP, quit_tui)
        tui.run()


@app.command()
def history(
    process: Annotated[
        str | None, typer.Option(help="Process name, executable path or pid.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="ISO time or age (15m, 2h, 7d).")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time or age.")] = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Remote or local address or network: 192.0.2.7, 10.0.0.0/8, [fd00::1], fd00::/64."
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Remote or local port.", min=0, max=65535)
    ] = None,
    limit: Annotated[
        int, typer.Option(help="At most this many flows, newest first.", min=1)
    ] = 1000,
    output: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.table,
    db: Annotated[
        Path | None,
        typer.Option(
            help="History database; default /var/lib/netwarden/history.sqlite as "
            "root, else ~/.local/state/netwarden/history.sqlite."
        ),
    ] = None,
    detections: Annotated[
        bool,
        typer.Option(
            "--detections",
            help="List what the content scanners found (viruses, DLP matches) instead "
            "of connections; with --since and --limit.",
        ),
    ] = False,
) -> None:
    """Query closed connections recorded by `netwarden monitor` and `netwarden up`.

    Examples:\n
      netwarden history --process curl --since 1h\n
      netwarden history --host 192.0.2.7 --port 443 --format json\n
      netwarden history --host 10.0.0.0/8\n
      netwarden history --detections --since 1d
    """
    from netwarden.cli.render import table
    from netwarden.engine.host import is_privileged
    from netwarden.model.flow import parse_network
    from netwarden.monitor.history import HistoryError, HistoryQuery, HistoryStore, default_path

    if host is not None:
        try:
            parse_network(host)
        except ValueError as exc:
            fail(f"--host: {exc}")
    path = db or default_path(is_privileged())
    if not path.exists():
        fail(f"no history at {path}: run `netwarden monitor` first, or pass --db")
    query = HistoryQuery(
        process=process, since=_parse_time(since, "--since"), until=_parse_time(until, "--until"),
        host=host, port=port, limit=limit,
    )  # fmt: skip
    if detections:
        _detections(path, query.since, limit, output)
        return
    try:
        store = HistoryStore(path)
        flows = store.query(query)
        store.close()
    except HistoryError as exc:
        fail(str(exc))
    if output is OutputFormat.json:
        sys.stdout.write(json.dumps([f.to_json() for f in flows]) + "\n")
    else:
        sys.stdout.write(table(flows, with_time=True) + "\n")


def _detections(path: Path, since: float | None, limit: int, output: OutputFormat) -> None:
    from netwarden.cli.render import detection_table
    from netwarden.monitor.history import HistoryError, HistoryStore

    try:
        store = HistoryStore(path)
        found = store.detections(since, limit)
        store.close()
    except (HistoryError, sqlite3.Error) as exc:
        fail(str(exc))
    if output is OutputFormat.json:
        sys.stdout.write(json.dumps(found) + "\n")
    elif found:
        sys.stdout.write(detection_table(found) + "\n")
    else:
        sys.stdout.write("no detections recorded\n")


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Say which kernel mechanisms work here and which netwarden features they enable."""
    from netwarden.engine.host import PlatformError

    try:
        capabilities = _capabilities()
    except PlatformError as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps([_capability_json(c) for c in capabilities]) + "\n")
        return
    for cap in capabilities:
        mark = "ok  " if cap.available else "MISSING"
        typer.echo(f"[{mark:7}] {cap.name}: {cap.detail}")
        typer.echo(f"          {'enables' if cap.available else 'without it, no'}: {cap.enables}")


def _capabilities() -> list[Capability]:
    from netwarden.engine.host import capabilities as read_capabilities

    capabilities = read_capabilities()
    capabilities.append(_connect_layer(capabilities))
    capabilities.append(_interception())
    capabilities.append(_clamd())
    return capabilities


def _capability_json(c: Capability) -> dict[str, Any]:
    return {"name": c.name, "available": c.available, "detail": c.detail, "enables": c.enables}


def _doctor_json() -> list[dict[str, Any]]:
    """What `netwarden doctor --json` prints (for the control API)."""
    return [_capability_json(c) for c in _capabilities()]


def _interception() -> Capability:
    """TLS interception: whether netwarden's CA exists (and is usable) here."""
    from netwarden.engine.host import Capability as Cap
    from netwarden.tls.ca import CaError, ca_directory, load

    enables = "TLS interception by the inspecting proxy (intercept_tls, docs/inspect.md)"
    try:
        ca = load(ca_directory())
    except CaError as exc:
        return Cap("netwarden CA", False, str(exc), enables)
    detail = f"{ca.certificate_path} (SHA-256 {ca.fingerprint()[:23]}...)"
    return Cap("netwarden CA", True, detail, enables)


def _clamd() -> Capability:
    """Whether ClamAV's daemon answers where a policy names it by default."""
    from netwarden.engine.host import Capability as Cap
    from netwarden.inspect.clamd import DEFAULT_SOCKET, ping

    enables = 'virus scanning by clamd (scanners = ["clamd"], docs/scanning.md)'
    try:
        version = ping(DEFAULT_SOCKET)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return Cap("clamd", False, f"no answer on {DEFAULT_SOCKET}: {reason}", enables)
    return Cap("clamd", True, f"{version} on {DEFAULT_SOCKET}", enables)


def _connect_layer(probed: list[Capability]) -> Capability:
    """The CONNECT layer: how this kernel queues first packets, and what a running
    daemon uses (its queue and fail mode)."""
    from netwarden.daemon import state
    from netwarden.engine.host import Capability as Cap

    found = {c.name: c for c in probed}
    nft, iptables = found.get("nft queue"), found.get("iptables NFQUEUE")
    if nft is not None and nft.available:
        mechanism = "nft queue"
    elif iptables is not None and iptables.available:
        mechanism = "iptables-nft NFQUEUE (this kernel has no nft queue statement)"
    else:
        mechanism = ""
    running = state.read()
    status = state.read_callouts() if running and state.alive(running.pid) else None
    if running is not None and status is not None and status.get("queue"):
        detail = (
            f"in use by netwarden up (pid {running.pid}): {status['queue']}, "
            f"fail-{status['fail_mode']}, {len(status.get('callouts', []))} callout(s), "
            f"{status.get('decided', 0)} connections decided"
        )
    elif mechanism:
        detail = f"available through {mechanism}; not in use (netwarden up runs it when "
        detail += "rules name a program or callouts classify; fail-open unless set)"
    elif iptables is not None and iptables.detail.startswith("cannot tell"):
        detail = "cannot tell without root whether this kernel can queue packets"
    else:
        detail = "no way to queue packets here (neither nft queue nor the NFQUEUE target)"
    return Cap(
        "CONNECT layer",
        bool(mechanism),
        detail,
        "rules by program and callouts deciding each new connection",
    )


@app.command(context_settings={"ignore_unknown_options": True})
def run(
    scope: Annotated[str, typer.Option(help="The scope's name, as policy rules name it.")],
    command: Annotated[
        list[str], typer.Argument(help="The command, after --.", metavar="COMMAND...")
    ],
) -> None:
    """Run a command in an application scope that policy rules can name.

    Every socket the command (and its children) creates is tagged with the scope, so
    a rule with scope = "NAME" decides its traffic. Needs root.

    Example:\n
      netwarden run --scope browser -- firefox
    """
    import re

    from netwarden.engine.host import PlatformError, run_scoped

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", scope):
        fail(f"{scope!r} is not a scope name (letters, digits, _ . -)")
    try:
        code = run_scoped(scope, command)
    except PlatformError as exc:
        fail(str(exc), 1)
    raise typer.Exit(code if code >= 0 else 128 - code)


@app.command()
def up(
    policy: Annotated[Path, typer.Option(help="The policy file to enforce.")],
    callouts: Annotated[
        list[str] | None,
        typer.Option(
            "--callouts",
            help="Callouts from a Python file (its `callouts` list) or an installed entry "
            "point (group netwarden.callouts); repeatable.",
        ),
    ] = None,
    fail_mode: Annotated[
        str | None,
        typer.Option(
            help="When a callout fails or no daemon runs: open (permit) or closed "
            "(block). Default: the policy's fail_mode setting, else open."
        ),
    ] = None,
    budget_ms: Annotated[
        float, typer.Option("--callout-budget-ms", help="Time a callout may take.", min=0.1)
    ] = 50.0,
    decisions: Annotated[
        bool,
        typer.Option("--decisions", help="Print each CONNECT decision as an NDJSON line."),
    ] = False,
    history_path: HistoryPath = None,
    no_history: NoHistory = False,
    retention_days: RetentionDays = 30.0,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            metavar="HOST:PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (no token: keep it "
            "on loopback, e.g. 127.0.0.1:9464).",
        ),
    ] = None,
    web: Annotated[
        bool,
        typer.Option(
            "--web",
            help="Serve the dashboard and control API on --web-address (loopback, with the "
            "token; the API is always on netwarden's unix socket too).",
        ),
    ] = False,
    web_address: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Where --web listens (loopback only).")
    ] = "127.0.0.1:8470",
) -> None:
    """Run netwarden: enforce the policy, decide new connections by its program rules
    and the callouts given, run the proxy its redirects name, and record every
    connection in the history; until SIGTERM or `netwarden down`, which remove
    everything it set up. A daemon that crashed is cleaned up by the next `up`.

    Examples:\n
      netwarden up --policy /etc/netwarden/policy.toml\n
      netwarden up --policy policy.toml --callouts examples/callouts/block_by_exe.py
    """
    import json as json_module
    import logging

    from netwarden.cli.policy import _load
    from netwarden.daemon.up import run as run_daemon
    from netwarden.engine.host import PlatformError, is_privileged
    from netwarden.proxy.transparent import FlowReport

    logging.basicConfig(level=logging.INFO, format="netwarden: %(message)s")
    logging.getLogger("pydivert").setLevel(logging.WARNING)
    if not is_privileged():
        fail("netwarden up needs root: it changes nftables and routing", 1)
    loaded = _load(policy)
    options = _callout_options(callouts or [], fail_mode, budget_ms / 1000)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if sys.platform != "win32":
        signal.signal(signal.SIGHUP, lambda *_: stop.set())
    history = _open_history(history_path, no_history, retention_days)

    def ready(summary: str) -> None:
        typer.echo(f"netwarden: {summary}", err=True)

    from netwarden.cli.render import relayed_flow

    def flow(report: FlowReport) -> None:
        line = relayed_flow("transparent", report.client, report.destination, report.stats)
        sys.stdout.write(json_module.dumps(line) + "\n")
        sys.stdout.flush()

    def decision(events: Sequence[object]) -> None:
        from netwarden.engine.bus import DecisionTaken

        lines = [
            {
                "decision": e.verdict,
                "flow": e.flow,
                "process": e.process,
                "by": e.by,
                **({"detail": e.detail} if e.detail else {}),
            }
            for e in events
            if isinstance(e, DecisionTaken)
        ]
        if lines:
            sys.stdout.buffer.write(dumps_lines(lines))
            sys.stdout.flush()

    def inspected(events: Sequence[object]) -> None:
        from netwarden.engine.bus import Inspected

        lines = [e.record for e in events if isinstance(e, Inspected)]
        if lines:
            sys.stdout.buffer.write(dumps_lines(lines))
            sys.stdout.flush()

    subscribers: list[Subscriber] = [inspected, decision] if decisions else [inspected]
    web_options = _web_options(web_address if web else None)
    server = _metrics_server(metrics, subscribers) if metrics else None
    try:
        run_daemon(
            loaded, history, stop, ready, flow, options, subscribers=subscribers, web=web_options
        )
    except PlatformError as exc:
        fail(str(exc), 1)
    finally:
        if history is not None:
            history.close()
        if server is not None:
            server.stop()
    typer.echo("netwarden: down, everything removed", err=True)


def _web_options(address: str | None) -> WebOptions:
    import ipaddress

    from netwarden.daemon.up import WebOptions

    def said(url: str) -> None:
        typer.echo(f"netwarden: dashboard at {url}", err=True)

    if address is None:
        return WebOptions(doctor=_doctor_json)
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not loopback:
        fail(f"--web-address: {address!r} is not a loopback HOST:PORT (like 127.0.0.1:8470)")
    return WebOptions(tcp=(host, int(port)), doctor=_doctor_json, on_url=said)


def _metrics_server(address: str, subscribers: list[Subscriber]) -> MetricsServer:
    """The metrics, counted from the bus (a subscriber added), served at address."""
    from netwarden.daemon.metrics_server import MetricsServer
    from netwarden.engine.metrics import Metrics

    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not host:
        fail(f"--metrics: {address!r} is not HOST:PORT (like 127.0.0.1:9464)")
    counted = Metrics()
    subscribers.append(counted.on_events)
    try:
        server = MetricsServer(counted, host, int(port))
    except (OSError, ValueError) as exc:
        fail(f"--metrics: cannot listen on {address}: {exc}", 1)
    server.start()
    return server


def _callout_options(sources: list[str], fail_mode: str | None, budget: float) -> CalloutOptions:
    from netwarden.callout.loading import CalloutLoadError, load
    from netwarden.callout.registry import FailMode
    from netwarden.daemon.up import CalloutOptions

    if fail_mode is not None and fail_mode not in ("open", "closed"):
        fail(f"--fail-mode is open or closed, not {fail_mode!r}")
    loaded = []
    for source in sources:
        try:
            loaded += load(source)
        except CalloutLoadError as exc:
            fail(str(exc))
    return CalloutOptions(tuple(loaded), FailMode(fail_mode) if fail_mode else None, budget)


def reflow(doc: str | None) -> str | None:
    """A docstring as help text: each paragraph's lines joined into one (the terminal
    wraps them), while indented lines (examples, formats) keep their own line."""
    if not doc:
        return doc
    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            if lines and not line.startswith(" ") and not lines[-1].startswith(" "):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _reflow_help(*apps: typer.Typer) -> None:
    for typer_app in apps:
        for command in typer_app.registered_commands:
            if command.help is None and command.callback is not None:
                command.help = reflow(command.callback.__doc__)


def _register_subcommands() -> None:
    from netwarden.cli.ca import app as ca_app
    from netwarden.cli.ca import passthrough_app
    from netwarden.cli.callouts import app as callouts_app
    from netwarden.cli.policy import app as policy_app
    from netwarden.cli.prompts import app as prompts_app
    from netwarden.cli.proxy import proxy
    from netwarden.cli.quota import app as quota_app
    from netwarden.cli.redirect import down, redirect

    app.add_typer(policy_app, name="policy")
    app.add_typer(callouts_app, name="callouts")
    app.add_typer(ca_app, name="ca")
    app.add_typer(quota_app, name="quota")
    app.add_typer(prompts_app, name="prompts")
    app.command()(redirect)
    app.command()(down)
    app.command()(proxy)
    _reflow_help(app, policy_app, callouts_app, ca_app, passthrough_app, quota_app, prompts_app)


_register_subcommands()


# Options people reach for that netwarden spells otherwise; click's own suggestion,
# by spelling alone, points elsewhere (--json: "Possible options: --once").
SPELLED_OTHERWISE = {
    ("monitor", "--json"): "--format json",
    ("history", "--json"): "--format json",
    ("policy", "--format"): "--json (policy show --json)",
    ("doctor", "--format"): "--json",
}


def _spelled_otherwise(argv: list[str]) -> str | None:
    command = next((word for word in argv if not word.startswith("-")), "")
    for word in argv:
        option = word.split("=", 1)[0]
        if (command, option) in SPELLED_OTHERWISE:
            return (
                f"{option} is not an option of `netwarden {command}`: use "
                f"{SPELLED_OTHERWISE[(command, option)]}"
            )
    return None


def main() -> None:
    hint = _spelled_otherwise(sys.argv[1:])
    if hint is not None:
        print(f"netwarden: {hint}", file=sys.stderr)
        sys.exit(2)
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)

"""`netwarden proxy`: the transparent relay behind `netwarden redirect`, and user-mode
SOCKS5 and HTTP proxy listeners that need no root."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from netwarden.jsontext import dumps
from netwarden.model.flow import parse_host_port


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"netwarden: {message}", err=True)
    raise typer.Exit(code)


def _endpoints(option: str, values: list[str] | None) -> list[tuple[str, int]]:
    endpoints = []
    for text in values or []:
        try:
            address, port = parse_host_port(text)
        except ValueError as exc:
            _fail(f"{option} {exc}")
            raise  # unreachable
        if port is None:
            _fail(f"{option} {text!r} needs a port")
            raise AssertionError
        endpoints.append((str(address), port))
    return endpoints


def _write(record: dict[str, Any]) -> None:
    sys.stdout.write(dumps(record) + "\n")
    sys.stdout.flush()


def proxy(
    listen: Annotated[
        list[str] | None,
        typer.Option(help="Transparent listener for redirected connections; repeatable."),
    ] = None,
    socks5: Annotated[
        list[str] | None, typer.Option(help="SOCKS5 listener ADDRESS:PORT; repeatable.")
    ] = None,
    http: Annotated[
        list[str] | None, typer.Option(help="HTTP proxy listener ADDRESS:PORT; repeatable.")
    ] = None,
    socks_user: Annotated[
        list[str] | None, typer.Option(help="Require SOCKS5 login USER:PASSWORD; repeatable.")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Refuse what this policy's outgoing rules block or reject; apply its "
            "[inspect] section (HTTP rules, TLS interception: docs/inspect.md)."
        ),
    ] = None,
    inspect: Annotated[
        bool,
        typer.Option(
            "--inspect",
            help="Identify each connection's protocol (TLS with SNI and JA4, HTTP, SSH, "
            "...) even without [inspect] rules; printed with each flow.",
        ),
    ] = False,
    mark: Annotated[
        str, typer.Option(help="SO_MARK of upstream connections, which redirection skips.")
    ] = "0x4e500001",
    idle_timeout: Annotated[float, typer.Option(help="Close flows idle this long (s).")] = 300.0,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            help="Reach destinations through socks5://[USER:PASS@]HOST:PORT or "
            "http://HOST:PORT; repeat for a chain, in order."
        ),
    ] = None,
    tproxy: Annotated[
        bool,
        typer.Option("--tproxy", help="Transparent listeners for TPROXY redirects (root)."),
    ] = False,
    fast_path: Annotated[
        bool,
        typer.Option(help="Transparent flows move through splice(2), not through Python."),
    ] = True,
    processes: Annotated[
        bool,
        typer.Option(
            "--processes",
            help="Name each flow's client program, and key the TLS passthrough memory by "
            "it (runs the monitor's engine beside the proxy, which costs new connections "
            "per second).",
        ),
    ] = False,
    max_connections: Annotated[
        int | None,
        typer.Option(
            help="Connections each listener relays at once; beyond, new ones are "
            "refused and logged. Default: what the open-file limit allows.",
            min=1,
        ),
    ] = None,
) -> None:
    """Relay connections, one NDJSON line per finished flow.

    Transparent (root, with netwarden redirect):\n
      netwarden proxy --listen 127.0.0.1:15001 --listen [::1]:15001 &\n
      netwarden redirect --dport 80 --to 127.0.0.1:15001 --to [::1]:15001

    Inspecting (HTTP rules, TLS interception with netwarden's CA; docs/inspect.md):\n
      netwarden ca init\n
      netwarden proxy --listen 127.0.0.1:15001 --policy examples/policies/inspect.toml &\n
      netwarden redirect --dport 80 --dport 443 --to 127.0.0.1:15001

    User mode (no root; point applications at it):\n
      netwarden proxy --socks5 127.0.0.1:1080 --http 127.0.0.1:3128 --policy policy.toml\n
      curl --socks5-hostname 127.0.0.1:1080 http://example.test/
    """
    import asyncio
    import contextlib
    import logging
    import signal

    from netwarden.engine import host
    from netwarden.proxy.transparent import FlowReport, TransparentProxy
    from netwarden.proxy.userspace import ProxiedFlow, UserModeProxy

    transparent = _endpoints("--listen", listen)
    socks = _endpoints("--socks5", socks5)
    http_listeners = _endpoints("--http", http)
    if not (transparent or socks or http_listeners):
        _fail("give at least one listener: --listen, --socks5 or --http")
    users = None
    if socks_user:
        users = {}
        for entry in socks_user:
            name, sep, password = entry.partition(":")
            if not sep or not name:
                _fail(f"--socks-user {entry!r} is not USER:PASSWORD")
            users[name] = password
    try:
        mark_value = int(mark, 0)
    except ValueError:
        _fail(f"--mark {mark!r} is not a number")
        return
    loaded = _load_policy(policy) if policy is not None else None
    gate = _policy_gate(loaded) if loaded is not None else None
    programs = _ClientPrograms() if processes else None
    inspector = _inspector(loaded, inspect, programs.exe if programs is not None else None)
    from netwarden.proxy.upstream import Hop

    try:
        chain = tuple(Hop.parse(text) for text in upstream or [])
    except ValueError as exc:
        _fail(f"--upstream {exc}")
        return
    logging.basicConfig(level=logging.INFO, format="netwarden: %(message)s")
    logging.getLogger("pydivert").setLevel(logging.WARNING)

    from netwarden.cli.render import relayed_flow

    def transparent_flow(flow: FlowReport) -> None:
        record = relayed_flow("transparent", flow.client, flow.destination, flow.stats)
        if programs is not None:
            record = programs.add_process(record, flow.client, flow.destination)
        _write(record)

    def proxied_flow(flow: ProxiedFlow) -> None:
        _write(relayed_flow(flow.kind, flow.client, flow.destination, flow.stats))

    async def main() -> None:
        tasks: list[asyncio.Future[Any]] = []
        names = [f"{h}:{p}" for h, p in transparent + socks + http_listeners]
        if socks or http_listeners:
            user_mode = UserModeProxy(
                gate,
                users,
                idle_timeout=idle_timeout,
                on_flow=proxied_flow,
                mark=mark_value,
                max_connections=max_connections,
                inspector=inspector,
            )
            servers = await user_mode.start(socks, http_listeners)
            tasks += [asyncio.ensure_future(s.serve_forever()) for s in servers]
        if transparent:
            ready = asyncio.Event()
            relay = TransparentProxy(
                mark_value,
                original_destination=host.original_destination,
                fast_path=fast_path,
                tproxy=tproxy,
                chain=chain,
                idle_timeout=idle_timeout,
                on_flow=transparent_flow,
                on_link=programs.link if programs is not None else None,
                max_connections=max_connections,
                inspector=inspector,
            )
            tasks.append(asyncio.ensure_future(relay.serve(transparent, ready.set)))
            waiter = asyncio.ensure_future(ready.wait())
            await asyncio.wait([waiter, tasks[-1]], return_when=asyncio.FIRST_COMPLETED)
            if tasks[-1].done():
                waiter.cancel()
                tasks[-1].result()  # raises the listen error
        typer.echo(f"netwarden: proxy listening on {', '.join(names)}", err=True)
        everything = asyncio.gather(*tasks)
        loop = asyncio.get_running_loop()

        def stop(_signum: int, _frame: object) -> None:
            # A plain handler, not loop.add_signal_handler: that one hears of a signal
            # through the loop's wake-up pipe, which a busy proxy can fill (the signal
            # is then lost); this one runs in the main thread whatever the pipe holds.
            loop.call_soon_threadsafe(everything.cancel)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        with contextlib.suppress(asyncio.CancelledError):
            await everything

    try:
        if programs is not None:
            programs.start()
        asyncio.run(main())
    except OSError as exc:
        _fail(f"cannot listen: {exc.strerror or exc}", 1)
    finally:
        if programs is not None:
            programs.stop()


class _ClientPrograms:
    """The engine joined by the proxy: it follows this namespace's flows, so that each
    relayed connection is told with the program that made it."""

    def __init__(self) -> None:
        import contextlib
        import threading

        self.engine: Any = None
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import logging
        import threading

        from netwarden.engine.core import Engine, EngineError

        try:
            self.engine = self._stack.enter_context(Engine.open(None, events=True))
        except EngineError as exc:
            logging.getLogger(__name__).warning("flows go without their programs: %s", exc)
            return
        self._thread = threading.Thread(
            target=self.engine.run, args=(self._stop,), name="netwarden-engine", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._stack.close()

    def process(self, client: tuple[str, int], destination: tuple[str, int]) -> Any:
        return None if self.engine is None else self.engine.connection_process(client, destination)

    def link(self, link: Any) -> None:
        if self.engine is not None:
            self.engine.relay_links.append(link)

    def exe(self, client: tuple[str, int], destination: tuple[str, int]) -> str:
        """The client program's executable ("" while not known)."""
        return "" if self.engine is None else self.engine.connection_program(client, destination)

    def add_process(
        self, record: dict[str, Any], client: tuple[str, int], destination: tuple[str, int]
    ) -> dict[str, Any]:
        found = self.process(client, destination)
        record["process"] = (
            None if found is None else {"pid": found.pid, "name": found.name, "exe": found.exe}
        )
        return record


def _load_policy(path: Path) -> Any:
    from netwarden.cli.policy import _load

    return _load(path)


def _policy_gate(policy: Any) -> Any:
    from netwarden.proxy.gate import policy_gate

    if sys.platform == "win32":
        return policy_gate(policy)
    return policy_gate(policy, os.getuid(), os.getgid())


def _inspector(policy: Any, identify: bool, client_program: Any) -> Any:
    """The inspection the policy's [inspect] section asks for (or identification alone
    with --inspect); None when neither."""
    from netwarden.policy.inspect_model import InspectPolicy
    from netwarden.proxy.inspecting import (
        InspectEvent,
        InspectSetupError,
        build_inspector,
        event_record,
    )

    settings: InspectPolicy = policy.inspect if policy is not None else InspectPolicy()

    def learnt(event: InspectEvent) -> None:
        record = event_record(event)
        if record is not None:
            _write(record)

    try:
        return build_inspector(settings, learnt, identify, client_program=client_program)
    except InspectSetupError as exc:
        _fail(str(exc), 1)
        raise

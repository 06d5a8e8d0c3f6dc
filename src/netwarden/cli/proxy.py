"""`netwarden proxy`: the transparent relay behind `netwarden redirect`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Annotated

import typer

from netwarden.jsontext import dumps
from netwarden.model.flow import parse_host_port


def proxy(
    listen: Annotated[
        list[str], typer.Option(help="Listen on ADDRESS:PORT ([::1]:PORT for IPv6); repeatable.")
    ],
    mark: Annotated[
        str, typer.Option(help="SO_MARK of upstream connections, which redirection skips.")
    ] = "0x4e500001",
    idle_timeout: Annotated[float, typer.Option(help="Close flows idle this long (s).")] = 300.0,
) -> None:
    """Relay redirected connections to where they were going, one NDJSON line per flow.

    Example (a pass-through proxy for outgoing HTTP):\n
      netwarden proxy --listen 127.0.0.1:15001 --listen [::1]:15001 &\n
      netwarden redirect --dport 80 --to 127.0.0.1:15001 --to [::1]:15001
    """
    from netwarden.proxy.transparent import FlowReport, TransparentProxy

    listeners = []
    for text in listen:
        try:
            address, port = parse_host_port(text)
        except ValueError as exc:
            typer.echo(f"netwarden: --listen {exc}", err=True)
            raise typer.Exit(2) from None
        if port is None:
            typer.echo(f"netwarden: --listen {text!r} needs a port", err=True)
            raise typer.Exit(2)
        listeners.append((str(address), port))
    try:
        mark_value = int(mark, 0)
    except ValueError:
        typer.echo(f"netwarden: --mark {mark!r} is not a number", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="netwarden: %(message)s")

    def report(flow: FlowReport) -> None:
        sys.stdout.write(dumps({
            "client": f"{flow.client[0]}:{flow.client[1]}",
            "destination": f"{flow.destination[0]}:{flow.destination[1]}",
            "bytes_up": flow.stats.client_to_server, "bytes_down": flow.stats.server_to_client,
            "error": flow.stats.error,
        }) + "\n")  # fmt: skip
        sys.stdout.flush()

    async def main() -> None:
        server = TransparentProxy(mark_value, idle_timeout=idle_timeout, on_flow=report)

        def ready() -> None:
            typer.echo(f"netwarden: proxy listening on {', '.join(listen)}", err=True)

        task = asyncio.ensure_future(server.serve(listeners, ready))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except OSError as exc:
        typer.echo(f"netwarden: cannot listen: {exc.strerror}", err=True)
        raise typer.Exit(1) from None

"""Monitor at scale, against `ss -tinp` in the same run.

1. 10k established loopback TCP connections (20k sockets, held by two processes since
   one may open at most 20k files) in a namespace of its own: a one-shot
   `netwarden monitor --once --format json` against `ss -tinp`; goal <= 0.5x.
2. One refresh of the live view's table at that size, caches warm (dump, merge,
   sort and rows of the view model, and the terminal table redraw); goal <= 0.1x of ss.
3. CPU of `netwarden monitor --watch` while 1k new connections per second are made;
   goal < 10% of one core.

Run as root: python benchmarks/monitor_snapshot.py [--connections 10000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import cpu_seconds, machine, median_seconds, report, time_command
from netwarden.monitor.live import LiveView
from netwarden.testing.netlab import Host, Lab

PORT = 7100
CHURN_PORT = 7200


def hold(role: str, count: int) -> None:
    """Run inside the namespace: hold `count` connected sockets until stdin closes."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held: list[socket.socket] = []
    if role == "server":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", PORT))
        listener.listen(4096)
        print("ready", flush=True)
        while len(held) < count:
            conn, _ = listener.accept()
            conn.send(b"hello")
            held.append(conn)
    else:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", PORT))
            sock.send(b"x" * 100)
            held.append(sock)
    print("holding", flush=True)
    sys.stdin.read()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"y" * 100)
    writer.close()


def serve_churn() -> None:
    """Answer churn connections on CHURN_PORT (in another namespace) until killed."""

    async def main() -> None:
        server = await asyncio.start_server(_answer, "0.0.0.0", CHURN_PORT, backlog=4096)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def churn(rate: int, seconds: float, to: str | None) -> None:
    """Make `rate` short connections per second for `seconds`: to a server in this
    process on loopback (both ends in this namespace), or to `to`."""

    async def main() -> None:
        server = None
        if to is None:
            server = await asyncio.start_server(_answer, "127.0.0.1", CHURN_PORT, backlog=4096)
        made = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            target = int((time.monotonic() - started) * rate)
            while made < target:
                reader, writer = await asyncio.open_connection(to or "127.0.0.1", CHURN_PORT)
                writer.write(b"x" * 100)
                await reader.read(100)
                writer.close()
                made += 1
            await asyncio.sleep(0.005)
        if server is not None:
            server.close()
        print(json.dumps({"connections": made, "seconds": time.monotonic() - started}))

    asyncio.run(main())


def _start_holders(host: Host, count: int) -> list[subprocess.Popen[str]]:
    me = [sys.executable, "-m", "benchmarks.monitor_snapshot"]
    server = host.popen([*me, "--hold", "server", "--connections", str(count)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    client = host.popen([*me, "--hold", "client", "--connections", str(count)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    for proc in (client, server):
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "holding"
    return [server, client]


def _refresh_seconds(netns: str) -> tuple[float, float, int]:
    """Median time of one live-view refresh: (model only, model + table redraw), rows."""
    from netwarden.monitor.service import Monitor
    from netwarden.platform.select import current
    from netwarden.tui.app import MAX_ROWS

    with current().open_sources(netns, events=False) as sources:
        monitor = Monitor(sources)
        view = LiveView()

        def refresh() -> int:
            now = time.time()
            view.apply(monitor._refresh(now), now)
            return len(view.rows(now, MAX_ROWS))

        refresh()
        refresh()
        rows = refresh()
        model = median_seconds(refresh)
        with_table = _with_table_redraw(view, refresh)
    return model, with_table, rows


def _with_table_redraw(view: LiveView, refresh: Callable[[], int]) -> float:
    """The same refresh plus the textual DataTable redraw, in a headless app."""
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from netwarden.tui.app import FLOW_COLUMNS, MAX_ROWS, Cells, draw_rows

    result: list[float] = []

    class Bench(App[None]):
        def compose(self) -> ComposeResult:
            yield DataTable()

        async def on_mount(self) -> None:
            table = self.query_one(DataTable)
            table.add_columns(*(label for label, _ in FLOW_COLUMNS))

            drawn: list[Cells] = []

            def redraw() -> None:  # as MonitorApp draws its table
                nonlocal drawn
                refresh()
                drawn = draw_rows(table, view.rows(time.time(), MAX_ROWS), drawn)

            redraw()
            result.append(median_seconds(redraw))
            self.exit()

    async def run() -> None:
        async with Bench().run_test(size=(160, 50)):
            pass

    asyncio.run(run())
    return result[0]


def _watch_cpu(
    host: Host, rate: int, seconds: float, to: str | None
) -> tuple[float, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        monitor = subprocess.Popen(
            [sys.executable, "-m", "netwarden", "monitor", "--netns", host.netns, "--watch",
             "--history", str(Path(tmp) / "h.sqlite")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert monitor.stderr is not None
        while "watching" not in monitor.stderr.readline():
            pass
        time.sleep(1)
        before = cpu_seconds(monitor.pid)
        target = ["--to", to] if to else []
        result = host.run(
            [sys.executable, "-m", "benchmarks.monitor_snapshot", "--churn", "--rate", str(rate),
             "--seconds", str(seconds), *target], timeout=seconds + 60,
        )  # fmt: skip
        time.sleep(1.5)  # let the last closes through their grace time
        used = cpu_seconds(monitor.pid) - before
        monitor.terminate()
        monitor.wait(timeout=30)
        monitor.stderr.close()
    churned = json.loads(result.stdout)
    # All the CPU the churn cost (its last closes included) per second of churn: the
    # seconds around it (the client starting, the grace time) do not dilute it.
    return used / churned["seconds"], churned


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--hold", choices=["server", "client"])
    parser.add_argument("--churn", action="store_true")
    parser.add_argument("--to", help="with --churn: connect to this server, not to loopback")
    parser.add_argument("--serve-churn", action="store_true")
    parser.add_argument("--watch-only", action="store_true", help="only the --watch CPU part")
    parser.add_argument("--native-floor", action="store_true",
                        help="also time benchmarks/native_floor.c (needs gcc)")  # fmt: skip
    args = parser.parse_args()
    if args.hold:
        hold(args.hold, args.connections)
        return
    if args.churn:
        churn(args.rate, args.seconds, args.to)
        return
    if args.serve_churn:
        serve_churn()
        return

    print(f"machine: {machine()}")
    with Lab() as lab:
        host = lab.host("bench")
        if args.watch_only:
            _report_watch(lab, host, args.rate, args.seconds)
            return
        _start_holders(host, args.connections)
        ss = time_command(host.command(["ss", "-tinp"]))
        once = time_command(host.command([sys.executable, "-m", "netwarden", "monitor",
                                          "--once", "--format", "json"]))  # fmt: skip
        check = host.run([sys.executable, "-m", "netwarden", "monitor", "--once", "--format",
                          "json", "--filter", f"port:{PORT}"])  # fmt: skip
        flows = json.loads(check.stdout)["flows"]
        with_pid = sum(1 for f in flows if f["process"] and f["bytes_sent"] + f["bytes_received"])
        print(f"{len(flows)} sockets on port {PORT}, {with_pid} with a process and bytes")
        report(f"one-shot JSON, {args.connections} connections", "ss -tinp", ss, once, "<= 0.5x")
        if args.native_floor:
            _native_floor(host, ss)
        model, with_table, rows = _refresh_seconds(host.netns)
        report(f"live view refresh, model (top {rows} rows)", "ss -tinp", ss, model, "<= 0.1x")
        report("live view refresh, model + table redraw", "ss -tinp", ss, with_table, "<= 0.1x")
        for proc in host._procs:
            assert proc.stdin is not None
            proc.stdin.close()
        host.stop_all()
        _report_watch(lab, host, args.rate, args.seconds)


def _native_floor(host: Host, ss: float) -> None:
    """What a compiled helper would take for the same work (not part of netwarden)."""
    source = Path(__file__).with_name("native_floor.c")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "native_floor"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
        full = time_command(host.command([str(binary)]))
        warm = time_command(host.command(["env", "NOSCAN=1", str(binary)]))
    for name, seconds in (("dump + /proc scan + JSON", full), ("dump + JSON, caches warm", warm)):
        print(
            f"| native floor (C, not netwarden): {name} | ss -tinp: {ss * 1000:.1f} ms "
            f"| {seconds * 1000:.1f} ms | {seconds / ss:.2f}x |",
            flush=True,
        )


def _report_watch(lab: Lab, host: Host, rate: int, seconds: float) -> None:
    """Twice: connections on loopback, whose both ends (two flows each) are in the
    watched namespace, and connections to another namespace (one flow each)."""
    peer = lab.host("peer")
    lab.link(host, peer)
    server = peer.popen([sys.executable, "-m", "benchmarks.monitor_snapshot", "--serve-churn"],
                        stdout=subprocess.PIPE)  # fmt: skip
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    for to, where in ((None, "on loopback: both ends watched"),
                      (peer.ipv4, "to another namespace: one end watched")):  # fmt: skip
        share, churned = _watch_cpu(host, rate, seconds, to)
        made = churned["connections"] / churned["seconds"]
        print(f"| --watch CPU at {made:.0f} new connections/s {where} | {share * 100:.1f}% "
              f"of one core | goal < 10% |")  # fmt: skip


if __name__ == "__main__":
    threading.excepthook = lambda hook: None
    main()

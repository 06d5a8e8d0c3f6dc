"""What the web face costs and how it feels: `netwarden up --web` with the dashboard open
in headless Chromium and one more Server-Sent Events reader, against `netwarden up`
without them, in one run.

Between two network namespaces over a veth pair:
  cpu        the daemon's CPU (share of a core) while the client makes new connections
             at --rate per second (a 1-byte ping each), with and without the web face
  latency    from a connection's connect() to its row being received by the page
             (window.nwSeen), p50 and p90 of --probes connections made during that load
  filter     with --flows connections held open, the time the page takes to apply a
             typed filter (JavaScript, from the input event to the rows in the DOM)

Goals: cpu <= 5% of a core more; latency p50 <= 500 ms; filter <= 200 ms at 10,000 flows.

Run as root: python -m benchmarks.web [--rate 1000] [--seconds 8] [--flows 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.callouts import PING_PORT
from benchmarks.common import cpu_seconds, machine
from netwarden.testing.browser import BrowserClient
from netwarden.testing.netlab import Host, Lab

HOLD_PORT = 7600


def paced_load(host: str, rate: float, seconds: float) -> None:
    """Inside the client namespace: new connections at `rate` per second."""
    made, started = 0, time.monotonic()
    while (now := time.monotonic()) - started < seconds:
        if made < (now - started) * rate:
            sock = socket.create_connection((host, PING_PORT))
            sock.sendall(b"x")
            sock.recv(1)
            sock.close()
            made += 1
        else:
            time.sleep(0.0005)
    print(json.dumps({"made": made, "per_s": made / (time.monotonic() - started)}))


def probes(host: str, count: int) -> None:
    """Inside the client namespace: connections kept open a while, each told with the
    moment it connected (unix ms)."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        began = time.time() * 1000
        sock.connect((host, HOLD_PORT))
        held.append(sock)
        print(json.dumps({"port": sock.getsockname()[1], "opened_ms": began}), flush=True)
        time.sleep(0.3)
    time.sleep(3)


def hold(host: str, count: int) -> None:
    """Inside the client namespace: `count` connections held open until stdin closes."""
    _most_files()
    held = [socket.create_connection((host, HOLD_PORT)) for _ in range(count)]
    print(json.dumps({"holding": len(held)}), flush=True)
    sys.stdin.read()


def _most_files() -> None:
    """As many open files as the hard limit allows."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_holding() -> None:
    """Inside the server namespace: accept and keep any number of connections."""
    _most_files()
    kept: list[asyncio.StreamWriter] = []

    async def keep(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kept.append(writer)

    async def run() -> None:
        server = await asyncio.start_server(keep, "0.0.0.0", HOLD_PORT, backlog=4096)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(run())


class Daemon:
    def __init__(self, client: Host, directory: Path, web: bool) -> None:
        policy = directory / "empty.toml"
        policy.write_text("")
        argv = [sys.executable, "-m", "netwarden", "up", "--policy", str(policy), "--no-history"]
        self.proc = client.popen(
            ["env", f"NETWARDEN_STATE_DIR={directory}", *argv, *(["--web"] if web else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        while line and "netwarden: up:" not in line:
            line = self.proc.stderr.readline()
        assert line, "netwarden up did not start"
        self.token = (directory / "api-token").read_text().strip() if web else ""

    @property
    def pid(self) -> int:
        """The daemon's own pid (env execs it)."""
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _cpu_under_load(
    client: Host, server: Host, daemon: Daemon, rate: float, seconds: float
) -> float:
    before, started = cpu_seconds(daemon.pid), time.monotonic()
    client.run(
        [sys.executable, "-m", "benchmarks.web", "--paced", server.ipv4,
         "--rate", str(rate), "--seconds", str(seconds)],
        timeout=seconds * 4 + 60,
    )  # fmt: skip
    return (cpu_seconds(daemon.pid) - before) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--flows", type=int, default=10000)
    parser.add_argument("--paced")
    parser.add_argument("--probe")
    parser.add_argument("--hold")
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    if args.paced:
        paced_load(args.paced, args.rate, args.seconds)
        return
    if args.probe:
        probes(args.probe, args.probes)
        return
    if args.hold:
        hold(args.hold, args.flows)
        return
    if args.serve:
        serve_holding()
        return

    print(f"machine: {machine()}")
    with Lab() as lab, tempfile.TemporaryDirectory() as scratch:
        client, server = lab.host("client"), lab.host("server")
        lab.link(client, server)
        for module, flag in (("benchmarks.callouts", "--serve"), ("benchmarks.web", "--serve")):
            ready = server.popen([sys.executable, "-m", module, flag], stdout=subprocess.PIPE)
            assert ready.stdout is not None
            assert ready.stdout.readline().strip() == "ready"

        plain = Daemon(client, Path(scratch), web=False)
        try:
            cpu_plain = _cpu_under_load(client, server, plain, args.rate, args.seconds)
        finally:
            plain.stop()

        daemon = Daemon(client, Path(scratch), web=True)
        browser = BrowserClient(client)
        try:
            browser("open", url=f"http://127.0.0.1:8470/login?token={daemon.token}")
            events = client.popen(
                ["curl", "-sN", "-H", f"Authorization: Bearer {daemon.token}",
                 "http://127.0.0.1:8470/api/events", "-o", "/dev/null"],
            )  # fmt: skip
            time.sleep(1)
            cpu_web = _cpu_under_load(client, server, daemon, args.rate, args.seconds)
            latencies = _latencies(client, server, browser, args.probes)
            filters = _filter_times(client, server, browser, args.flows)
            events.terminate()
        finally:
            browser.close()
            daemon.stop()

    print(f"cpu at {args.rate:.0f} new connections/s: up {cpu_plain * 100:.1f}% of a core, "
          f"up --web with a dashboard and an SSE reader {cpu_web * 100:.1f}%: "
          f"+{(cpu_web - cpu_plain) * 100:.1f} points (goal <= +5)")  # fmt: skip
    print(f"page update latency: p50 {statistics.median(latencies):.0f} ms, "
          f"p90 {sorted(latencies)[int(len(latencies) * 0.9) - 1]:.0f} ms over "
          f"{len(latencies)} connections (goal p50 <= 500 ms)")  # fmt: skip
    print(
        f"filter at {args.flows} flows: median {statistics.median(filters):.0f} ms, "
        f"max {max(filters):.0f} ms over {len(filters)} filters (goal <= 200 ms)"
    )


def _latencies(client: Host, server: Host, browser: BrowserClient, count: int) -> list[float]:
    """Connections made while the load runs; each one's delay to the page."""
    load = client.popen(
        [sys.executable, "-m", "benchmarks.web", "--paced", server.ipv4, "--rate", "1000",
         "--seconds", str(count * 0.3 + 4)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    made = client.run(
        [sys.executable, "-m", "benchmarks.web", "--probe", server.ipv4,
         "--probes", str(count)], timeout=count + 60,
    ).stdout.splitlines()  # fmt: skip
    load.wait(timeout=count + 60)
    latencies = []
    for line in made:
        probe = json.loads(line)
        ident = f"tcp {client.ipv4}:{probe['port']} {server.ipv4}:{HOLD_PORT}"
        seen = browser("script", js=f"return window.nwSeen.get({json.dumps(ident)}) || null")
        if seen["value"] is not None:
            latencies.append(seen["value"] - probe["opened_ms"])
    return latencies or [float("inf")]


def _filter_times(client: Host, server: Host, browser: BrowserClient, flows: int) -> list[float]:
    holder = client.popen(
        [sys.executable, "-m", "benchmarks.web", "--hold", server.ipv4, "--flows", str(flows)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert holder.stdin is not None
    holder.stdout.readline()
    deadline = time.monotonic() + 60
    script = "return document.querySelector('#counts').textContent"
    while time.monotonic() < deadline:
        shown = browser("script", js=script)["value"]
        if int(shown.split()[0] or 0) >= flows:
            break
        time.sleep(1)
    times = []
    for text in ("7600", "tcp", "10.", "no-such-flow", f"{client.ipv4}:4", ""):
        times.append(float(browser("filter", text=text)["ms"]))
    holder.stdin.close()
    holder.wait(timeout=30)
    return times


if __name__ == "__main__":
    main()

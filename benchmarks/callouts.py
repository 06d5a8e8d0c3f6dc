"""What the CONNECT layer costs: connections decided one by one by a Python callout,
against the direct path and OpenSnitch, in one run.

Between two network namespaces over a veth pair, a client process in one namespace:
  latency      connect() time of N sequential connections (p50, p99)
  rate         new connections per second, each a 1-byte ping, one after another
  throughput   MB/s of one established connection (its data never reaches Python)
under three setups: direct (nothing), netwarden (`netwarden up` with a callout that
looks at every connection and returns no opinion), and OpenSnitch 1.5.8 from Debian
with an allow-all rule (when installed: apt-get install opensnitch). Direct and
netwarden runs alternate (--rounds, medians reported).

Goals: added connect latency <= 0.15 ms at p50 and <= 1 ms at p99; connection rate
>= 0.7x direct; throughput >= 0.95x direct; connection rate >= 3x OpenSnitch.

Run as root: python -m benchmarks.callouts [--rounds 3] [--seconds 3] [--samples 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import CHUNK, cpu_seconds, echo, machine, serve_forever, sink
from netwarden.testing.netlab import Host, Lab

PING_PORT, SINK_PORT = 7500, 7501
SETTLE = 2.0  # seconds between the connection-rate and the bulk measures
TRIVIAL = """
from netwarden.callout.api import Callout

class LookAtEverything(Callout):
    def classify(self, connection):
        return None

callouts = [LookAtEverything()]
"""
Figures = dict[str, float]


def serve() -> None:
    """Inside the server namespace: a 1-byte echo (one connection at a time: the client
    is sequential) and a sink."""

    def echo_and_reset(conn: socket.socket) -> None:
        # Closed with a reset: no TIME_WAIT piles up, so later runs meet the same host
        # (thousands of TIME_WAIT connections slowed every later connect ~100-fold).
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        echo(conn)

    serve_forever({PING_PORT: echo_and_reset, SINK_PORT: sink}, inline=frozenset({PING_PORT}))


def load(host: str, samples: int, seconds: float) -> None:
    """Inside the client namespace: the three measures, as one JSON line."""
    connects = []
    for _ in range(samples):
        sock = socket.socket()
        began = time.perf_counter()
        sock.connect((host, PING_PORT))
        connects.append(time.perf_counter() - began)
        sock.sendall(b"x")
        sock.recv(1)
        sock.close()
    connects.sort()
    count, stop = 0, time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < stop:
        sock = socket.create_connection((host, PING_PORT))
        sock.sendall(b"x")
        sock.recv(1)
        sock.close()
        count += 1
    rate = count / (time.monotonic() - started)
    # The daemon is still taking in the thousands of connections that just closed; the
    # bulk figure is of an established flow, so it starts once that is done.
    time.sleep(SETTLE)
    data, sent = b"\0" * CHUNK, 0
    sock = socket.create_connection((host, SINK_PORT))
    stop = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < stop:
        sock.sendall(data)
        sent += len(data)
    sock.close()
    print(json.dumps({
        "p50_ms": statistics.median(connects) * 1000,
        "p99_ms": connects[max(0, int(len(connects) * 0.99) - 1)] * 1000,
        "connections_per_s": rate,
        "mb_per_s": sent / (time.monotonic() - started) / 1e6,
    }))  # fmt: skip


def _measure(client: Host, server: Host, samples: int, seconds: float,
             watched: int | None) -> Figures:  # fmt: skip
    before = cpu_seconds(watched) if watched else 0.0
    started = time.monotonic()
    result = client.run([sys.executable, "-m", "benchmarks.callouts", "--load", server.ipv4,
                         "--samples", str(samples), "--seconds", str(seconds)],
                        timeout=seconds * 4 + samples + 120)  # fmt: skip
    figures: Figures = json.loads(result.stdout)
    if watched:
        figures["cpu"] = (cpu_seconds(watched) - before) / (time.monotonic() - started)
    return figures


class Netwarden:
    def __init__(self, client: Host, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        callout = directory / "trivial.py"
        callout.write_text(TRIVIAL)
        policy = directory / "empty.toml"
        policy.write_text("")
        # Its state (the API token) in the scratch directory, not the host's.
        self.proc = client.popen(["env", f"NETWARDEN_STATE_DIR={directory / 'state'}",
                                  sys.executable, "-m", "netwarden", "up", "--policy",
                                  str(policy), "--no-history", "--callouts", str(callout)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        while line and "netwarden: up:" not in line:
            line = self.proc.stderr.readline()
        assert "CONNECT layer" in line, line

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


class OpenSnitch:
    """opensnitchd in the client namespace with one allow-all rule. It reads
    /etc/opensnitchd/default-config.json whatever it is told: that file is set to the
    proc monitor method (its eBPF method needs kprobes) for the run, and restored."""

    CONFIG = Path("/etc/opensnitchd/default-config.json")

    def __init__(self, client: Host, directory: Path) -> None:
        rules = directory / "rules"
        rules.mkdir()
        (rules / "allow-all.json").write_text(json.dumps({
            "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z",
            "name": "allow-all", "enabled": True, "precedence": False, "action": "allow",
            "duration": "always",
            "operator": {"type": "simple", "operand": "true", "sensitive": False, "data": ""},
        }))  # fmt: skip
        self.saved = self.CONFIG.read_text() if self.CONFIG.exists() else None
        config = json.loads(self.saved) if self.saved else {}
        config.update({"ProcMonitorMethod": "proc", "DefaultAction": "allow",
                       "InterceptUnknown": False})  # fmt: skip
        self.CONFIG.parent.mkdir(parents=True, exist_ok=True)
        self.CONFIG.write_text(json.dumps(config))
        binary = shutil.which("opensnitchd") or "/usr/bin/opensnitchd"
        self.proc = client.popen([binary, "-rules-path", str(rules),
                                  "-process-monitor-method", "proc",
                                  "-ui-socket", f"unix://{directory}/osui.sock"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(5)  # it says nothing when it is ready

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.saved is None:
            self.CONFIG.unlink(missing_ok=True)
        else:
            self.CONFIG.write_text(self.saved)
        subprocess.run(["umount", "/sys/kernel/debug"], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--load")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.load:
        load(args.load, args.samples, args.seconds)
        return

    print(f"machine: {machine()}")
    runs: dict[str, list[Figures]] = {"direct": [], "netwarden": [], "opensnitch": []}
    with Lab() as lab, tempfile.TemporaryDirectory() as scratch:
        client, server = lab.host("client"), lab.host("server")
        lab.link(client, server)
        ready = server.popen([sys.executable, "-m", "benchmarks.callouts", "--serve"],
                             stdout=subprocess.PIPE)  # fmt: skip
        assert ready.stdout is not None
        assert ready.stdout.readline().strip() == "ready"
        for index in range(args.rounds):
            runs["direct"].append(_measure(client, server, args.samples, args.seconds, None))
            daemon = Netwarden(client, Path(scratch) / f"nw{index}")
            try:
                runs["netwarden"].append(_measure(client, server, args.samples, args.seconds,
                                                  daemon.proc.pid))  # fmt: skip
            finally:
                daemon.stop()
        if shutil.which("opensnitchd"):
            snitch = OpenSnitch(client, Path(scratch))
            try:
                runs["opensnitch"].append(_measure(client, server, min(args.samples, 200),
                                                   args.seconds, snitch.proc.pid))  # fmt: skip
            finally:
                snitch.stop()
        else:
            print("(opensnitchd is not installed: apt-get install opensnitch; its column "
                  "is left out)")  # fmt: skip
    _print({name: _medians(figures) for name, figures in runs.items() if figures})


def _medians(runs: list[Figures]) -> Figures:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _print(results: dict[str, Figures]) -> None:
    print("| setup | connect p50 | connect p99 | new conns/s | 1 conn MB/s | daemon CPU |")
    print("|---|---|---|---|---|---|")
    for name, f in results.items():
        cpu = f"{f['cpu'] * 100:.0f}%" if "cpu" in f else ""
        print(f"| {name} | {f['p50_ms']:.3f} ms | {f['p99_ms']:.3f} ms "
              f"| {f['connections_per_s']:.0f} | {f['mb_per_s']:.0f} | {cpu} |")  # fmt: skip
    direct, ours = results["direct"], results["netwarden"]
    p50 = ours["p50_ms"] - direct["p50_ms"]
    p99 = ours["p99_ms"] - direct["p99_ms"]
    print(f"added connect latency: p50 {p50:.3f} ms (goal <= 0.15), "
          f"p99 {p99:.3f} ms (goal <= 1)")  # fmt: skip
    print(
        f"new connections/s, netwarden / direct: "
        f"{ours['connections_per_s'] / direct['connections_per_s']:.2f}x (goal >= 0.7x)"
    )
    print(f"throughput, netwarden / direct: {ours['mb_per_s'] / direct['mb_per_s']:.2f}x "
          "(goal >= 0.95x)")  # fmt: skip
    if "opensnitch" in results:
        snitch = results["opensnitch"]
        print(
            f"new connections/s, netwarden / OpenSnitch: "
            f"{ours['connections_per_s'] / snitch['connections_per_s']:.1f}x (goal >= 3x)"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

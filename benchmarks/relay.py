"""The relay behind redirection, against the direct path and mitmproxy, in one run.

Paths, all between two network namespaces over a veth pair:
  direct       client -> server
  netwarden    client -> (nft redirect) -> netwarden proxy (splice fast path) -> server
  mitmproxy    client -> (nft redirect) -> mitmdump --mode transparent, ignoring all
               hosts (pass-through) -> server

For each: throughput with 1 and with 50 concurrent connections (MB/s, and the proxy's
CPU), the time to a first answer on a new connection (p50/p99), and new connections per
second. Goals: >= 0.6x direct throughput, >= 10x mitmproxy, <= 0.3 ms added at p50.
Direct and netwarden runs alternate (--rounds, medians reported): the server listens on
redirected ports and on ports that are never redirected, so drift of the machine hits
both paths alike.

Run as root: python -m benchmarks.relay [--seconds 3] [--rounds 3] [--mitmproxy PATH]
mitmproxy is not a netwarden dependency: install it in a virtual environment of its own
(python3 -m venv /tmp/mitm && /tmp/mitm/bin/pip install mitmproxy).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import CHUNK, cpu_seconds, echo, machine, serve_forever, sink
from netwarden.testing.netlab import Host, Lab

SINK_PORT, ECHO_PORT = 7400, 7401  # redirected to the proxy under test
DIRECT_OFFSET = 10  # the same servers on 7410 and 7411 are never redirected
PROXY_PORT, MITM_PORT = 15001, 15002
Figures = dict[int, dict[str, float]]


def serve() -> None:
    """Inside the server namespace: a sink on SINK_PORT, a one-byte echo on ECHO_PORT."""
    serve_forever(
        {
            SINK_PORT: sink,
            ECHO_PORT: echo,
            SINK_PORT + DIRECT_OFFSET: sink,
            ECHO_PORT + DIRECT_OFFSET: echo,
        }
    )


def load(host: str, connections: int, seconds: float, latency_samples: int,
         offset: int) -> None:  # fmt: skip
    """Inside the client namespace: measure and print one JSON line."""
    sent = [0] * connections
    stop = time.monotonic() + seconds

    def blast(index: int) -> None:
        data = b"\0" * CHUNK
        sock = socket.create_connection((host, SINK_PORT + offset))
        while time.monotonic() < stop:
            sock.sendall(data)
            sent[index] += len(data)
        sock.close()

    started = time.monotonic()
    threads = [threading.Thread(target=blast, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    throughput = sum(sent) / (time.monotonic() - started) / 1e6
    rtts = []
    for _ in range(latency_samples):
        began = time.perf_counter()
        sock = socket.create_connection((host, ECHO_PORT + offset))
        sock.sendall(b"x")
        sock.recv(1)
        rtts.append(time.perf_counter() - began)
        sock.close()
    rtts.sort()
    figures = {"mb_per_s": throughput}
    if rtts:
        figures |= {
            "p50_ms": statistics.median(rtts) * 1000,
            "p99_ms": rtts[max(0, int(len(rtts) * 0.99) - 1)] * 1000,
            "connections_per_s": len(rtts) / sum(rtts),
        }
    print(json.dumps(figures))


def _measure(client: Host, server: Host, connections: int, seconds: float,
             proxy_pid: int | None) -> dict[str, float]:  # fmt: skip
    """One load run through the proxy (proxy_pid) or straight to the server (None)."""
    before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    started = time.monotonic()
    offset = 0 if proxy_pid else DIRECT_OFFSET
    result = client.run([sys.executable, "-m", "benchmarks.relay", "--load", server.ipv4,
                         "--connections", str(connections), "--seconds", str(seconds),
                         "--samples", "300" if connections == 1 else "0",
                         "--offset", str(offset)], timeout=seconds + 120)  # fmt: skip
    figures: dict[str, float] = json.loads(result.stdout)
    if proxy_pid:
        figures["proxy_cpu"] = (cpu_seconds(proxy_pid) - before) / (time.monotonic() - started)
    return figures


def _redirect(client: Host, port: int, *extra: str) -> None:
    client.run([sys.executable, "-m", "netwarden", "redirect", "--dport", str(SINK_PORT),
                "--dport", str(ECHO_PORT), "--to", f"127.0.0.1:{port}", *extra])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--mitmproxy", default=shutil.which("mitmdump") or "/tmp/mitm/bin/mitmdump")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--load")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.load:
        load(args.load, args.connections, args.seconds, args.samples, args.offset)
        return

    print(f"machine: {machine()}")
    results: dict[str, dict[int, dict[str, float]]] = {}
    with Lab() as lab:
        client, server = lab.host("client"), lab.host("server")
        lab.link(client, server)
        ready = server.popen([sys.executable, "-m", "benchmarks.relay", "--serve"],
                             stdout=subprocess.PIPE)  # fmt: skip
        assert ready.stdout is not None
        assert ready.stdout.readline().strip() == "ready"

        proxy = client.popen([sys.executable, "-m", "netwarden", "proxy", "--listen",
                              f"127.0.0.1:{PROXY_PORT}"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)  # fmt: skip
        assert proxy.stderr is not None
        assert "listening" in proxy.stderr.readline()
        _redirect(client, PROXY_PORT)
        results["direct"], results["netwarden"] = _alternated(
            lambda n: _measure(client, server, n, args.seconds, None),
            lambda n: _measure(client, server, n, args.seconds, proxy.pid),
            args.rounds,
        )
        client.run([sys.executable, "-m", "netwarden", "down"])
        proxy.terminate()

        if Path(args.mitmproxy).exists():
            # mitmdump runs as nobody; only root's connections are redirected, so its own
            # upstream connections are not (it cannot set the proxy mark).
            mitm = client.popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 args.mitmproxy, "--mode", f"transparent@{MITM_PORT}",
                                 "--ignore-hosts", ".*", "-q", "--set",
                                 "confdir=/tmp/netwarden-bench-mitm"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(4)  # mitmdump prints nothing when it is ready in quiet mode
            _redirect(client, MITM_PORT, "--user", "root")
            results["mitmproxy"] = {n: _measure(client, server, n, args.seconds, mitm.pid)
                                    for n in (1, 50)}  # fmt: skip
            client.run([sys.executable, "-m", "netwarden", "down"])
            mitm.terminate()
        else:
            print(f"(no mitmproxy at {args.mitmproxy}: its column is left out)")
    _print(results)


Measure = Callable[[int], dict[str, float]]


def _alternated(first: Measure, second: Measure, rounds: int) -> tuple[Figures, Figures]:
    """Rounds of (first, second) for 1 and 50 connections; the median of each figure.
    Alternating lets drift of the machine hit both paths alike."""
    runs: tuple[dict[int, list[dict[str, float]]], ...] = ({1: [], 50: []}, {1: [], 50: []})
    for _round in range(rounds):
        for n in (1, 50):
            runs[0][n].append(first(n))
            runs[1][n].append(second(n))
    medians = tuple(
        {n: {key: statistics.median(run[key] for run in per_n[n]) for key in per_n[n][0]}
         for n in (1, 50)}
        for per_n in runs
    )  # fmt: skip
    return medians[0], medians[1]


def _print(results: dict[str, dict[int, dict[str, float]]]) -> None:
    direct = results["direct"]
    print("| path | 1 conn MB/s | 50 conns MB/s | proxy CPU (1/50) | first answer p50/p99 "
          "| new conns/s |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, figures in results.items():
        cpu = ""
        if name != "direct":
            cpu = "{:.0f}% / {:.0f}%".format(
                figures[1].get("proxy_cpu", 0) * 100, figures[50].get("proxy_cpu", 0) * 100
            )
        print(f"| {name} | {figures[1]['mb_per_s']:.0f} | {figures[50]['mb_per_s']:.0f} | {cpu} "
              f"| {figures[1]['p50_ms']:.3f} / {figures[1]['p99_ms']:.3f} ms "
              f"| {figures[1]['connections_per_s']:.0f} |")  # fmt: skip
    ours = results["netwarden"]
    for n in (1, 50):
        ratio = ours[n]["mb_per_s"] / direct[n]["mb_per_s"]
        print(f"netwarden / direct, {n} conn(s): {ratio:.2f}x (goal >= 0.6x)")
        if "mitmproxy" in results:
            mitm_ratio = ours[n]["mb_per_s"] / results["mitmproxy"][n]["mb_per_s"]
            print(f"netwarden / mitmproxy, {n} conn(s): {mitm_ratio:.1f}x (goal >= 10x)")
    if "mitmproxy" in results:
        mitm = results["mitmproxy"]
        for n in (1, 50):
            ours_per_cpu = ours[n]["mb_per_s"] / max(ours[n]["proxy_cpu"], 1e-9)
            mitm_per_cpu = mitm[n]["mb_per_s"] / max(mitm[n]["proxy_cpu"], 1e-9)
            print(f"MB per CPU second of the proxy, {n} conn(s): netwarden "
                  f"{ours_per_cpu:.0f}, mitmproxy {mitm_per_cpu:.0f}: "
                  f"{ours_per_cpu / mitm_per_cpu:.1f}x")  # fmt: skip
    added = ours[1]["p50_ms"] - direct[1]["p50_ms"]
    print(f"added time to first answer at p50: {added:.3f} ms (goal <= 0.3 ms)")


if __name__ == "__main__":
    main()

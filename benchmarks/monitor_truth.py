"""How truthful the monitor is, way by way: programs that move known bytes in every
way netwarden knows of, against what `netwarden monitor --watch` reported of them.

In a netlab pair: a TCP upload and download, a UDP exchange, the traffic zoo (raw ICMP
echo v4/v6, ping sockets v4/v6, raw protocol 253 v4/v6, AF_PACKET injection and
capture), and 20 processes that each live a few milliseconds (a C program: connect,
send 100 kB, exit). For each way: whether its flows were found, attributed to the right
program (pid and exe), and whether their bytes were exact. Also the monitor's CPU (share
of a core) over the run.

Run as root: python -m benchmarks.monitor_truth
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import cpu_seconds, machine
from netwarden.testing.netlab import Host, Lab

PYTHON = os.path.realpath(sys.executable)
SHORTLIVED = Path(__file__).resolve().parent.parent / "tests" / "integration" / "shortlived.c"
Event = dict[str, Any]


class Watch:
    def __init__(self, host: Host) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "netwarden",
                "monitor",
                "--watch",
                "--no-history",
                "--netns",
                host.netns,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        while "watching" not in self.proc.stderr.readline():
            pass
        self.closed: list[Event] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "closed":
                self.closed.append(event)

    def find(self, match: Any, count: int = 1, seconds: float = 10) -> list[Event]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [e for e in list(self.closed) if match(e)]
            if len(found) >= count:
                return found
            time.sleep(0.2)
        return [e for e in list(self.closed) if match(e)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _row(way: str, expected: list[dict[str, Any]], found: list[Event], exe: str) -> str:
    def right(event: Event, want: dict[str, Any]) -> bool:
        process = event["process"] or {}
        return process.get("pid") == want["pid"] and process.get("exe") == exe

    attributed = sum(any(right(e, want) for e in found if want["match"](e)) for want in expected)
    exact = sum(
        any(
            (e["bytes_sent"], e["bytes_received"]) == (want["sent"], want["received"])
            for e in found
            if want["match"](e)
        )
        for want in expected
    )
    seen = sum(any(want["match"](e) for e in found) for want in expected)
    n = len(expected)
    counts = sorted({(e["bytes_sent"], e["bytes_received"]) for e in found})[:2]
    wrong = "" if exact == n else f"  read {counts}"
    return f"{way:22} {seen:>3}/{n:<3} {attributed:>3}/{n:<3} {exact:>3}/{n:<3}{wrong}"


def main() -> None:
    print(f"machine: {machine()}")
    rows = []
    with Lab() as lab, tempfile.TemporaryDirectory() as scratch:
        client, server = lab.host("client"), lab.host("server")
        lab.link(client, server)
        client.run(["sysctl", "-qw", "net.ipv4.ping_group_range=0 0"])
        program = Path(scratch) / "shortlived"
        subprocess.run(["gcc", "-O2", "-o", str(program), str(SHORTLIVED)], check=True)
        for port in (6001, 6002):
            server.popen(
                [
                    sys.executable,
                    "-m",
                    "netwarden.testing.traffic",
                    "tcp-server",
                    "--port",
                    str(port),
                    "--send",
                    "2000000",
                ],
                stdout=subprocess.PIPE,
            )
        server.popen(
            [
                sys.executable,
                "-m",
                "netwarden.testing.traffic",
                "udp-server",
                "--port",
                "6003",
                "--reply",
                "300",
            ],
            stdout=subprocess.PIPE,
        )
        time.sleep(1)
        watch = Watch(client)
        started, cpu_before = time.monotonic(), cpu_seconds(watch.proc.pid)

        def traffic(*args: str) -> dict[str, Any]:
            out = client.run([sys.executable, "-m", "netwarden.testing.traffic", *args]).stdout
            report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
            return report

        tcp = traffic(
            "tcp-client",
            "--host",
            server.ipv4,
            "--port",
            "6001",
            "--send",
            "3000000",
            "--recv",
            "2000000",
        )
        udp = traffic(
            "udp-client", "--host", server.ipv4, "--port", "6003", "--count", "40", "--size", "1200"
        )
        zoo = client.run(
            [
                sys.executable,
                "-m",
                "netwarden.testing.traffic_zoo",
                "--peer4",
                server.ipv4,
                "--peer6",
                server.ipv6,
                "--interface",
                "nw1a",
            ]
        ).stdout
        burst = f"for i in $(seq 20); do {program} {server.ipv4} 6002 100000; done"
        short = [line.split() for line in client.run(["bash", "-c", burst]).stdout.splitlines()]
        time.sleep(3)

        def by_port(port: int, remote: int) -> Any:
            return lambda e: e["local_port"] == port and e["remote_port"] == remote

        for way, client_said, sent, received, port in (
            ("tcp", tcp, 3_000_000, 2_000_000, 6001),
            ("udp", udp, 48_000, 12_000, 6003),
        ):
            match = by_port(client_said["local_port"], port)
            want = {"pid": client_said["pid"], "sent": sent, "received": received, "match": match}
            rows.append(_row(way, [want], watch.find(match), PYTHON))
        for line in zoo.splitlines():
            way = json.loads(line)
            want = {**way, "match": lambda e, inode=way["inode"]: e["remote_port"] == inode}
            rows.append(_row(way["way"], [want], watch.find(want["match"]), PYTHON))
        expected_short = [
            {"pid": int(pid), "sent": 100_000, "received": 0, "match": by_port(int(port), 6002)}
            for pid, port in short
        ]
        found_short = watch.find(lambda e: e["remote_port"] == 6002, count=20)
        rows.append(_row("20 processes of ~3 ms", expected_short, found_short, str(program)))
        cpu = (cpu_seconds(watch.proc.pid) - cpu_before) / (time.monotonic() - started)
        watch.stop()
    print(f"{'way':22} {'found':>7} {'program':>7} {'bytes':>7}")
    print("\n".join(rows))
    print(f"monitor CPU over the run: {cpu * 100:.1f}% of a core")


if __name__ == "__main__":
    main()

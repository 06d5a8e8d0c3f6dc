"""Policy at scale: apply a 100k-network blocklist, and TCP throughput with it.

1. `netwarden policy apply` of a policy whose set holds 100,000 IPv4 networks loaded from
   a file (parse, validate, compile, nft -j): goal < 1 s.
2. TCP throughput between two namespaces with that policy applied against no policy,
   in the same run: goal >= 0.95x.

Run as root: python -m benchmarks.policy_scale [--networks 100000] [--seconds 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine
from netwarden.testing.netlab import Host, Lab

PORT = 7300
CHUNK = 1 << 20


def sink(port: int) -> None:
    """Inside the server namespace: accept and discard, forever."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(16)
    print("ready", flush=True)
    buffer = bytearray(CHUNK)
    while True:
        conn, _ = listener.accept()
        with conn:
            while conn.recv_into(buffer):
                pass


def blast(host: str, port: int, seconds: float) -> None:
    """Inside the client namespace: send for `seconds`, print MB/s."""
    data = b"\0" * CHUNK
    sock = socket.create_connection((host, port))
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        sock.sendall(data)
        sent += len(data)
    sock.close()
    print(json.dumps({"mb_per_s": sent / (time.monotonic() - started) / 1e6}))


def _blocklist(path: Path, count: int) -> None:
    rng = random.Random(7)
    networks: set[int] = set()
    while len(networks) < count:
        value = rng.getrandbits(24) << 8
        if not 0x0A000000 <= value <= 0x0AFFFFFF:  # keep 10/8 (the lab) reachable
            networks.add(value)
    path.write_text(
        "\n".join(f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.0/24" for n in sorted(networks))
    )


def _throughput(client: Host, server: Host, seconds: float) -> float:
    result = client.run([sys.executable, "-m", "benchmarks.policy_scale", "--blast",
                         server.ipv4, "--seconds", str(seconds)])  # fmt: skip
    return float(json.loads(result.stdout)["mb_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--networks", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sink", action="store_true")
    parser.add_argument("--blast")
    args = parser.parse_args()
    if args.sink:
        sink(PORT)
        return
    if args.blast:
        blast(args.blast, PORT, args.seconds)
        return

    print(f"machine: {machine()}")
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        client, server = lab.host("client"), lab.host("server")
        lab.link(client, server)
        ready = server.popen([sys.executable, "-m", "benchmarks.policy_scale", "--sink"],
                             stdout=subprocess.PIPE)  # fmt: skip
        assert ready.stdout is not None
        assert ready.stdout.readline().strip() == "ready"
        blocklist = Path(tmp) / "blocklist.txt"
        _blocklist(blocklist, args.networks)
        policy = Path(tmp) / "policy.toml"
        policy.write_text('[sets.blocklist]\nfile = "blocklist.txt"\n\n[[rule]]\n'
                          'name = "blocklist"\naction = "block"\ndirection = "out"\n'
                          'to = ["@blocklist"]\n')  # fmt: skip

        applies, bare, with_policy = [], [], []
        for _round in range(args.rounds):  # alternated, so drift hits both sides alike
            bare.append(_throughput(client, server, args.seconds))
            started = time.monotonic()
            client.run([sys.executable, "-m", "netwarden", "policy", "apply", str(policy)])
            applies.append(time.monotonic() - started)
            with_policy.append(_throughput(client, server, args.seconds))
            if _round < args.rounds - 1:
                client.run([sys.executable, "-m", "netwarden", "policy", "off"])
        listing = json.loads(client.run(["nft", "-j", "list", "table", "inet",
                                         "netwarden"]).stdout)["nftables"]  # fmt: skip
        elements = sum(len(item["set"].get("elem", ())) for item in listing if "set" in item)
        applied = statistics.median(applies)
        bare_mb, policy_mb = statistics.median(bare), statistics.median(with_policy)
        print(f"| apply {args.networks} networks, median of {args.rounds} "
              f"({elements} in the kernel sets) "
              f"| {applied * 1000:.0f} ms | goal < 1000 ms |")  # fmt: skip
        print(f"| TCP throughput, no policy / with it (median of {args.rounds}) "
              f"| {bare_mb:.0f} / {policy_mb:.0f} MB/s | {policy_mb / bare_mb:.2f}x "
              "| goal >= 0.95x |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Measured transfers for shaping tests and benchmarks:

    python -m netwarden.testing.rates serve PORT
    python -m netwarden.testing.rates upload|download HOST PORT SECONDS [RATE]

An upload is measured where it arrives (the server counts what it received in SECONDS
from the first byte and answers with the count); a download where it arrives too (the
client counts). An upload given RATE (bytes per second) sends no faster. The client
prints {"bytes": N, "seconds": S, "rate": N/S}. Start the
client under another name (a symlink to the interpreter) to tell programs apart.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netwarden.testing.netlab import Host

CHUNK = 64 * 1024


def serve(port: int) -> None:
    listener = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


def _serve_one(conn: socket.socket) -> None:
    with conn:
        request = conn.recv(64).decode()
        mode, _, seconds = request.partition(" ")
        if mode == "download":
            block = b"d" * CHUNK
            try:
                while True:
                    conn.sendall(block)
            except OSError:
                return
        received, took = _count(conn, float(seconds))
        conn.settimeout(30)
        conn.sendall(f"{received} {took}\n".encode())
        try:
            while conn.recv(CHUNK):  # until the client has the answer and goes
                pass
        except OSError:
            pass


def _count(conn: socket.socket, seconds: float) -> tuple[int, float]:
    """Bytes received in `seconds` from the first one, and the time it took."""
    received = len(conn.recv(CHUNK))
    start = time.monotonic()
    while True:
        left = start + seconds - time.monotonic()
        if left <= 0:
            break
        conn.settimeout(left)
        try:
            piece = conn.recv(CHUNK)
        except TimeoutError:
            break
        if not piece:
            break
        received += len(piece)
    return received, time.monotonic() - start


def measure(
    mode: str, host: str, port: int, seconds: float, rate: float | None = None
) -> dict[str, float]:
    with socket.create_connection((host, port), timeout=seconds + 30) as conn:
        conn.sendall(f"{mode} {seconds}".encode().ljust(64))
        if mode == "download":
            received, took = _count(conn, seconds)
        else:
            received, took = _upload(conn, seconds, rate)
    return {"bytes": received, "seconds": took, "rate": received / took if took else 0.0}


def _upload(conn: socket.socket, seconds: float, rate: float | None) -> tuple[int, float]:
    """Send until the server answers with what it counted (no faster than rate)."""
    block = b"u" * CHUNK
    answer = b""
    started = time.monotonic()
    deadline = started + seconds + 30
    sent = 0
    conn.setblocking(False)
    while not answer.endswith(b"\n") and time.monotonic() < deadline:
        early = sent / rate - (time.monotonic() - started) if rate else 0.0
        waiting = early > 0
        readable, writable, _ = select.select(
            [conn], [] if waiting else [conn], [], min(early, 0.2) if waiting else 0.2
        )
        if writable:
            with contextlib.suppress(BlockingIOError):
                sent += conn.send(block)
        if readable:
            piece = conn.recv(100)
            if not piece:
                break
            answer += piece
    count, took = answer.decode().split()
    return int(count), float(took)


def start(host: Host, port: int) -> subprocess.Popen[str]:
    """The server in a netlab host, once it listens."""
    argv = [sys.executable, "-m", "netwarden.testing.rates", "serve", str(port)]
    server = host.popen(argv, stdout=subprocess.PIPE)
    assert server.stdout is not None
    json.loads(server.stdout.readline())  # printed once it listens
    return server


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["serve"]:
        serve(int(args[1]))
        return
    mode, host, port, seconds, *rate = args
    limit = float(rate[0]) if rate else None
    print(json.dumps(measure(mode, host, int(port), float(seconds), limit)), flush=True)


if __name__ == "__main__":
    main()

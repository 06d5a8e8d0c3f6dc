"""Shared helpers for the benchmarks: timing, CPU of a process, a report line."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence


def median_seconds(run: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_command(argv: Sequence[str], repeat: int = 5) -> float:
    def once() -> None:
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

    once()  # warm the page cache
    return median_seconds(once, repeat)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def report(name: str, baseline: str, base: float, ours: float, goal: str) -> str:
    ratio = ours / base if base else float("inf")
    line = (f"| {name} | {baseline}: {base * 1000:.1f} ms | netwarden: {ours * 1000:.1f} ms "
            f"| {ratio:.2f}x | goal {goal} |")  # fmt: skip
    print(line, flush=True)
    return line


CHUNK = 1 << 20
Handler = Callable[[socket.socket], None]


def sink(conn: socket.socket) -> None:
    """Read everything the client sends."""
    buffer = bytearray(CHUNK)
    with conn:
        while conn.recv_into(buffer):
            pass


def echo(conn: socket.socket) -> None:
    """Answer the client's first byte with itself."""
    with conn:
        data = conn.recv(1)
        if data:
            conn.sendall(data)


def serve_forever(handlers: dict[int, Handler], inline: frozenset[int] = frozenset()) -> None:
    """Listen on each port (0.0.0.0), handle each connection in a thread of its own (on
    the accepting thread for the ports in inline: for a sequential client), say "ready"
    and serve until killed."""

    def accept(port: int, handler: Handler) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(4096)
        while True:
            conn, _ = listener.accept()
            if port in inline:
                handler(conn)
            else:
                threading.Thread(target=handler, args=(conn,), daemon=True).start()

    for port, handler in handlers.items():
        threading.Thread(target=accept, args=(port, handler), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()

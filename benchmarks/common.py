"""Shared helpers for the benchmarks: timing, CPU of a process, a report line."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
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

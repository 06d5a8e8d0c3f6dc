"""Runs the real `netwarden monitor --watch` as a subprocess and collects its events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class MonitorProcess:
    def __init__(self, netns: str, history: Path, *extra: str) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netwarden", "monitor", "--netns", netns, "--watch",
             "--history", str(history), "--interval", "0.3", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        self.notes: list[str] = []
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"monitor exited early: {' '.join(self.notes)}")
            self.notes.append(line.strip())
            if line.startswith("netwarden: watching"):
                break
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def seen(self, predicate: Callable[[Event], bool]) -> list[Event]:
        """Every event so far (opened, updated, closed) that predicate takes."""
        with self._lock:
            return [e for e in self.events if predicate(e)]

    def closed(self, predicate: Callable[[Event], bool]) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e["event"] == "closed" and predicate(e)]

    def wait_closed(
        self, predicate: Callable[[Event], bool], count: int = 1, timeout: float = 20
    ) -> list[Event]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.closed(predicate)
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(
            f"expected {count} closed flows, saw {len(self.closed(predicate))}; "
            f"{len(self.events)} events in all"
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


def within(actual: int, expected: int, fraction: float = 0.01) -> bool:
    return abs(actual - expected) <= max(1, expected * fraction)

"""Hosts whose clients refused netwarden's certificate (pinning, or the CA not
trusted): their next connections, per client program, pass through untouched for a
while. Kept in a file, so that `netwarden ca passthrough` can list and clear it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from netwarden.paths import write_private


@dataclass(frozen=True, slots=True)
class Remembered:
    program: str  # the client program's executable, or its address
    host: str
    until: float  # epoch seconds
    reason: str


class PassthroughMemory:
    def __init__(self, path: Path, duration: float = 3600.0) -> None:
        self.path = path
        self.duration = duration
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], Remembered] = {}
        self._loaded_at = -1.0
        self._load()

    def _load(self) -> None:
        try:
            stamp = self.path.stat().st_mtime
            if stamp == self._loaded_at:
                return
            raw = json.loads(self.path.read_text())
            entries = {
                (e["program"], e["host"]): Remembered(
                    str(e["program"]), str(e["host"]), float(e["until"]), str(e.get("reason", ""))
                )
                for e in raw
            }
        except (OSError, ValueError, KeyError, TypeError):
            entries, stamp = {}, -1.0
        self._entries, self._loaded_at = entries, stamp

    def _save(self) -> None:
        live = [e for e in self._entries.values() if e.until > time.time()]
        write_private(
            self.path,
            json.dumps(
                [
                    {"program": e.program, "host": e.host, "until": e.until, "reason": e.reason}
                    for e in live
                ],
                indent=1,
            ).encode(),
        )
        self._loaded_at = self.path.stat().st_mtime

    def remember(self, clients: tuple[str, ...], host: str, reason: str) -> None:
        """clients: who the client is known as (its program, its address)."""
        until = time.time() + self.duration
        with self._lock:
            self._load()
            for client in clients:
                self._entries[(client, host)] = Remembered(client, host, until, reason)
            self._save()

    def passes(self, clients: tuple[str, ...], host: str) -> bool:
        now = time.time()
        with self._lock:
            self._load()
            for client in clients:
                entry = self._entries.get((client, host))
                if entry is not None and entry.until > now:
                    return True
            return False

    def entries(self) -> list[Remembered]:
        with self._lock:
            self._load()
            now = time.time()
            return sorted(
                (e for e in self._entries.values() if e.until > now),
                key=lambda e: (e.host, e.program),
            )

    def clear(self, host: str | None = None) -> int:
        """Forget every entry (or those for host); how many were forgotten."""
        with self._lock:
            self._load()
            before = len(self._entries)
            self._entries = {
                k: e for k, e in self._entries.items() if host is not None and e.host != host
            }
            self._save()
            return before - len(self._entries)

"""A scanner's findings under `netwarden up`: each one waits (briefly) until the engine
knows the process behind its connection, then goes into the history and onto the bus.

The kernel's flow events name a new process within a few milliseconds of its first
byte; a detection can come sooner than that, so it is kept back for up to WAIT seconds
(not the connection: it went on, or was refused, already).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from netwarden.model.flow import ProcessInfo
from netwarden.monitor.history import HistoryStore

log = logging.getLogger(__name__)

WAIT = 2.0
CHECK = 0.05

Address = tuple[str, int]
Lookup = Callable[[Address, Address], ProcessInfo | None]
Entry = tuple[float, dict[str, object], Address, Address]  # since, record, client, server


class DetectionRecorder:
    def __init__(
        self,
        lookup: Lookup,
        history: HistoryStore | None,
        publish: Callable[[dict[str, object]], None],
    ) -> None:
        self.lookup = lookup
        self.history = history
        self.publish = publish
        self.incoming: queue.SimpleQueue[Entry | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="netwarden-detections", daemon=True)
        self.thread.start()

    def add(self, record: dict[str, object], client: Address, destination: Address) -> None:
        record.setdefault("time", round(time.time(), 3))
        self.incoming.put((time.monotonic(), record, client, destination))

    def close(self) -> None:
        """Record what is still waiting (without its process when unknown) and stop."""
        self.incoming.put(None)
        self.thread.join(WAIT + 5)

    def _run(self) -> None:
        waiting: list[Entry] = []
        stopping = False
        while not stopping or waiting:
            try:  # asleep while nothing waits; a look every CHECK while something does
                entry = self.incoming.get(timeout=CHECK if waiting else None)
                if entry is None:
                    stopping = True
                else:
                    waiting.append(entry)
            except queue.Empty:
                pass
            still = []
            for since, record, client, destination in waiting:
                process = self.lookup(client, destination)
                if process is not None or stopping or time.monotonic() - since >= WAIT:
                    self._finish(record, process)
                else:
                    still.append((since, record, client, destination))
            waiting = still

    def _finish(self, record: dict[str, object], process: ProcessInfo | None) -> None:
        if process is not None:
            record.update(pid=process.pid, process_name=process.name, exe=process.exe)
        if self.history is not None:
            try:
                self.history.record_detection(record)
            except sqlite3.Error as exc:
                log.error("could not record a detection in the history: %s", exc)
        self.publish(record)

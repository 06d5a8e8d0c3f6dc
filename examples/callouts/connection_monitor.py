"""The brief's first worked system, a TCPView-like monitor, as callouts: every flow
with its process as it is established, and with its final byte totals when it is
deleted. One NDJSON line per event, to NETWARDEN_MONITOR_LOG (default: stderr).

    netwarden up --policy policy.toml --callouts examples/callouts/connection_monitor.py
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import TextIO

from netwarden.callout.api import Callout
from netwarden.model import Flow


def _open() -> TextIO:
    path = os.environ.get("NETWARDEN_MONITOR_LOG")
    return open(path, "a", buffering=1, encoding="utf-8") if path else sys.stderr


class ConnectionMonitor(Callout):
    name = "connection monitor"

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.live: dict[object, Flow] = {}  # the map of flows, as the brief's callout keeps

    def flow_established(self, flow: Flow) -> None:
        self.live[flow.key] = flow
        self._write("established", flow)

    def flow_deleted(self, flow: Flow) -> None:
        self.live.pop(flow.key, None)
        self._write("deleted", flow)

    def _write(self, event: str, flow: Flow) -> None:
        process = flow.process
        line = {
            "event": event, "protocol": str(flow.key.transport),
            "local": str(flow.key.local), "remote": str(flow.key.remote),
            "pid": process.pid if process else None, "exe": process.exe if process else "",
            "bytes_sent": flow.bytes_sent, "bytes_received": flow.bytes_received,
        }  # fmt: skip
        with self.lock:
            self.out.write(json.dumps(line) + "\n")


callouts = [ConnectionMonitor(_open())]

"""What the web face shows live, kept from the engine's bus: the flows (closed ones a
little longer, for the dashboard to fade them), per-process totals, and the changes
since the last push, sent to every event-stream client at most every PUSH_SECONDS
(a flow that opens and closes between two pushes is sent once)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from netwarden.engine.bus import (
    CalloutFailed,
    DecisionTaken,
    Inspected,
    PolicyApplied,
    PromptChanged,
)
from netwarden.engine.flow_deltas import FlowDeltas
from netwarden.jsontext import dumps
from netwarden.model import Flow, FlowEvent, FlowEventKind, FlowKey

PUSH_SECONDS = 0.1
KEEP_CLOSED = 5.0  # seconds a closed flow stays in the snapshot
CLIENT_BACKLOG = 64  # pushes a slow client may fall behind before it is dropped


def flow_id(key: FlowKey) -> str:
    return f"{key.transport} {key.local} {key.remote}"


def flow_json(flow: Flow) -> dict[str, Any]:
    return {"id": flow_id(flow.key), **flow.to_json()}


@dataclass(slots=True)
class ProcessTotal:
    pid: int | None
    name: str
    exe: str
    sent: int = 0
    received: int = 0
    opened: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "program": self.name,
            "exe": self.exe,
            "bytes_sent": self.sent,
            "bytes_received": self.received,
            "connections": self.opened,
        }


@dataclass(eq=False)
class Client:
    """One event-stream reader: pushes arrive on its loop's queue."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(CLIENT_BACKLOG))

    def offer(self, payload: bytes) -> bool:
        """False when the client fell too far behind (it is then ended)."""
        if self.queue.full():
            return False
        self.queue.put_nowait(payload)
        return True


class LiveView:
    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.flows: dict[str, Flow] = {}
        self._closed_at: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._events: list[dict[str, Any]] = []
        self.totals: dict[tuple[int | None, str, str], ProcessTotal] = {}
        self._deltas = FlowDeltas()
        self._clients: set[Client] = set()
        self.pushes = 0

    def on_events(self, events: Sequence[object]) -> None:
        """The engine's bus (the monitor's thread): only bookkeeping here; the pushes
        serialize what changed."""
        with self._lock:
            for event in events:
                if isinstance(event, FlowEvent):
                    self._flow(event)
                elif (other := _other(event)) is not None and self._clients:
                    self._events.append(other)

    def _flow(self, event: FlowEvent) -> None:
        flow = event.flow
        ident = flow_id(flow.key)
        self.flows[ident] = flow
        if event.kind is FlowEventKind.CLOSED:
            self._closed_at[ident] = self.clock()
        if self._clients:
            self._dirty.add(ident)
        process = flow.process
        key = (process.pid, process.name, process.exe) if process is not None else (None, "", "")
        total = self.totals.get(key)
        if total is None:
            total = self.totals[key] = ProcessTotal(*key)
        if event.kind is FlowEventKind.OPENED:
            total.opened += 1
        sent, received = self._deltas.of(event)
        total.sent += sent
        total.received += received

    def _expire(self, now: float) -> None:
        for ident, closed in list(self._closed_at.items()):
            if now - closed > KEEP_CLOSED:
                del self._closed_at[ident]
                self.flows.pop(ident, None)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._expire(self.clock())
            flows = list(self.flows.values())
            totals = [t.to_json() for t in self.totals.values()]
        return {"flows": [flow_json(f) for f in flows], "processes": totals}

    def processes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [t.to_json() for t in self.totals.values()]

    def join(self, loop: asyncio.AbstractEventLoop) -> Client:
        client = Client(loop)
        with self._lock:
            self._clients.add(client)
        return client

    def leave(self, client: Client) -> None:
        with self._lock:
            self._clients.discard(client)

    def push(self) -> None:
        """Send what changed since the last push to every client (the web face's
        loop calls this every PUSH_SECONDS)."""
        with self._lock:
            self._expire(self.clock())
            if not self._clients:
                self._dirty.clear()
                return
            changed = [self.flows[i] for i in self._dirty if i in self.flows]
            events, self._events = self._events, []
            self._dirty = set()
            clients = list(self._clients)
            totals = [t.to_json() for t in self.totals.values()]
        if not changed and not events:
            return
        update = {
            "time": self.clock(),
            "flows": [flow_json(f) for f in changed],
            "events": events,
            "processes": totals,
        }
        payload = f"event: update\ndata: {dumps(update)}\n\n".encode()
        self.pushes += 1
        for client in clients:
            if not client.offer(payload):
                self.leave(client)


def _other(event: object) -> dict[str, Any] | None:
    """A bus event other than a flow's, as the dashboard reads it."""
    if isinstance(event, PromptChanged):
        return {"type": "prompt", **event.prompt}
    if isinstance(event, DecisionTaken):
        return {
            "type": "decision",
            "flow": event.flow,
            "process": event.process,
            "verdict": event.verdict,
            "by": event.by,
            "detail": event.detail,
        }
    if isinstance(event, Inspected):
        return {"type": "inspected", **event.record}
    if isinstance(event, PolicyApplied):
        return {"type": "policy", "source": event.source, "rules": event.rules}
    if isinstance(event, CalloutFailed):
        return {"type": "callout-failed", "callout": event.callout, "error": event.error}
    return None

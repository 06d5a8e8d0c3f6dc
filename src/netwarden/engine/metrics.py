"""Prometheus metrics of a running engine, counted from its bus: bytes per program and
direction, connections opened per program, decisions by action and by what decided,
callout failures, what inspection found. Names and labels follow Prometheus'
conventions: base units, counters ending in _total, no pid or address labels (a
program's name keeps the number of series bounded by the programs that run).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, generate_latest

from netwarden.engine.bus import CalloutFailed, DecisionTaken, Inspected
from netwarden.engine.flow_deltas import FlowDeltas
from netwarden.model import FlowEvent, FlowEventKind

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN = "unknown"  # the program of a flow no one could attribute


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.bytes = Counter(
            "netwarden_bytes",
            "Payload bytes moved by each program, as the monitor counts them.",
            ["program", "direction"],
            registry=self.registry,
        )
        self.connections = Counter(
            "netwarden_connections_opened",
            "Connections (TCP, and UDP conversations) each program opened or accepted.",
            ["program", "transport"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "netwarden_decisions",
            "Connections decided at the CONNECT layer, by verdict and by what decided.",
            ["action", "by"],
            registry=self.registry,
        )
        self.callout_failures = Counter(
            "netwarden_callout_failures",
            "Callout hooks that raised or overran their time budget.",
            ["callout", "layer"],
            registry=self.registry,
        )
        self.inspected = Counter(
            "netwarden_inspection_events",
            "What the inspecting proxy found: HTTP exchanges, interceptions, detections.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.lock = threading.Lock()
        self.deltas = FlowDeltas()  # (holds a flow's bytes until its process is named)

    def on_events(self, events: Sequence[object]) -> None:
        """The engine's bus."""
        with self.lock:
            for event in events:
                if isinstance(event, FlowEvent):
                    self._flow(event)
                elif isinstance(event, DecisionTaken):
                    self.decisions.labels(event.verdict, event.by or "policy").inc()
                elif isinstance(event, CalloutFailed):
                    self.callout_failures.labels(event.callout, event.layer).inc()
                elif isinstance(event, Inspected):
                    record = event.record
                    outcome = record.get("verdict") or record.get("action") or ""
                    self.inspected.labels(str(record.get("kind", "")), str(outcome)).inc()

    def _flow(self, event: FlowEvent) -> None:
        flow = event.flow
        program = flow.process.name if flow.process is not None and flow.process.name else UNKNOWN
        if event.kind is FlowEventKind.OPENED:
            self.connections.labels(program, str(flow.key.transport)).inc()
        sent, received = self.deltas.of(event)
        if sent > 0:
            self.bytes.labels(program, "sent").inc(sent)
        if received > 0:
            self.bytes.labels(program, "received").inc(received)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)

"""The engine's Prometheus metrics: counted from bus events, in the text format that
Prometheus' own parser reads."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from netwarden.engine.bus import CalloutFailed, DecisionTaken, Inspected
from netwarden.engine.metrics import Metrics
from netwarden.model import (
    FlowEvent,
    FlowEventKind,
    ProcessInfo,
)
from netwarden.testing.fakes import flow_event

CURL = ProcessInfo(pid=42, name="curl", exe="/usr/bin/curl")


def _event(kind: FlowEventKind, sent: int, received: int, port: int = 40000) -> FlowEvent:
    return flow_event(kind, CURL, sent, received, local=f"10.0.0.1:{port}")


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_bytes_and_connections_by_program() -> None:
    metrics = Metrics()
    metrics.on_events([_event(FlowEventKind.OPENED, 100, 1000)])
    metrics.on_events([_event(FlowEventKind.UPDATED, 150, 5000)])
    metrics.on_events([_event(FlowEventKind.CLOSED, 150, 9000)])
    metrics.on_events([_event(FlowEventKind.OPENED, 10, 0, port=40001)])
    samples = _samples(metrics)
    sent = ("netwarden_bytes_total", (("direction", "sent"), ("program", "curl")))
    received = ("netwarden_bytes_total", (("direction", "received"), ("program", "curl")))
    assert samples[sent] == 160
    assert samples[received] == 9000
    opened = ("netwarden_connections_opened_total", (("program", "curl"), ("transport", "tcp")))
    assert samples[opened] == 2


def test_decisions_failures_and_inspection() -> None:
    metrics = Metrics()
    metrics.on_events(
        [
            DecisionTaken("tcp out a -> b", "curl", "block", "no-curl"),
            DecisionTaken("tcp out a -> c", "curl", "permit", ""),
            CalloutFailed("guard", "connect", "took 80 ms", "permit"),
            Inspected({"kind": "detection", "action": "blocked"}),
            Inspected({"kind": "http_exchange", "verdict": "allowed"}),
        ]
    )
    samples = _samples(metrics)
    assert samples[("netwarden_decisions_total", (("action", "block"), ("by", "no-curl")))] == 1
    assert samples[("netwarden_decisions_total", (("action", "permit"), ("by", "policy")))] == 1
    key = ("netwarden_callout_failures_total", (("callout", "guard"), ("layer", "connect")))
    assert samples[key] == 1
    found = ("netwarden_inspection_events_total", (("kind", "detection"), ("outcome", "blocked")))
    assert samples[found] == 1


def test_bytes_before_the_process_is_known_count_under_it_once_known() -> None:
    metrics = Metrics()
    nobody = ProcessInfo(pid=0)
    metrics.on_events([flow_event(FlowEventKind.OPENED, nobody, 87, 0)])
    metrics.on_events([_event(FlowEventKind.UPDATED, 87, 3000)])
    metrics.on_events([flow_event(FlowEventKind.OPENED, nobody, 5, 7, local="10.0.0.1:40002")])
    metrics.on_events([flow_event(FlowEventKind.CLOSED, nobody, 5, 9, local="10.0.0.1:40002")])
    samples = _samples(metrics)

    def counted(program: str, direction: str) -> float | None:
        labels = (("direction", direction), ("program", program))
        return samples.get(("netwarden_bytes_total", labels))

    assert (counted("curl", "sent"), counted("curl", "received")) == (87.0, 3000.0)
    # A flow that closed before anyone named its process: unknown, whole.
    assert (counted("unknown", "sent"), counted("unknown", "received")) == (5.0, 9.0)

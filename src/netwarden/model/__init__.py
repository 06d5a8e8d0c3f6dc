"""Frozen values shared by every part of netwarden. No I/O, no platform imports."""

from netwarden.model.flow import (
    Attribution,
    AttributionMethod,
    Endpoint,
    Flow,
    FlowEvent,
    FlowEventKind,
    FlowKey,
    ProcessInfo,
    RelayLink,
    Transport,
)

__all__ = [
    "Attribution",
    "AttributionMethod",
    "Endpoint",
    "Flow",
    "FlowEvent",
    "FlowEventKind",
    "FlowKey",
    "ProcessInfo",
    "RelayLink",
    "Transport",
]

"""Typed events on one bus: what the engine tells the faces that subscribed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netwarden.model import FlowEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PolicyApplied:
    """A policy went into force (or was removed: rules == 0, source == "")."""

    source: str
    table: str
    rules: int  # kernel rules


@dataclass(frozen=True, slots=True)
class DecisionTaken:
    """A connection was decided at the CONNECT layer."""

    flow: str  # "tcp out 10.0.0.1:40000 -> 10.0.0.2:80"
    process: str  # "curl (pid 123, /usr/bin/curl)" or why it is unknown
    verdict: str  # permit, block, redirect
    by: str  # the callout (or policy rule) that decided
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CalloutFailed:
    """A callout raised or overran its time budget; the fail mode decided instead."""

    callout: str
    layer: str
    error: str
    fallback: str  # what the fail mode did: permit or block


@dataclass(frozen=True, slots=True)
class Inspected:
    """What the inspecting proxy learnt: an HTTP exchange decided, TLS intercepted, a
    certificate refused (record: the NDJSON line `netwarden proxy` prints for it)."""

    record: dict[str, object]


@dataclass(frozen=True, slots=True)
class PromptChanged:
    """An ask prompt opened, or was settled (answered or timed out)."""

    prompt: dict[str, object]  # Prompt.to_json()


EngineEvent = FlowEvent | PolicyApplied | DecisionTaken | CalloutFailed | Inspected | PromptChanged
Subscriber = Callable[[Sequence[EngineEvent]], None]


class EventBus:
    """Subscribers get events in batches, in the order they were published, on the
    publishing thread. A subscriber that raises is logged and stays subscribed."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; the returned function removes it again."""
        with self._lock:
            self._subscribers = [*self._subscribers, subscriber]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not subscriber]

        return unsubscribe

    def publish(self, events: Sequence[EngineEvent]) -> None:
        if not events:
            return
        for subscriber in self._subscribers:
            try:
                subscriber(events)
            except BrokenPipeError:
                raise
            except Exception:
                log.exception("an event subscriber failed")

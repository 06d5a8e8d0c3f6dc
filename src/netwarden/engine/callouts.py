"""Callouts joined to an engine: the CONNECT layer's queue and loop, and the flow
layers fed from the engine's bus."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from netwarden.callout.api import Change, Layer
from netwarden.callout.program_rules import ORIGIN, ProgramRules
from netwarden.callout.quota_guard import QuotaGuard
from netwarden.callout.registry import (
    DEFAULT_BUDGET,
    CalloutRegistry,
    FailMode,
    Failure,
    LoadedCallout,
)
from netwarden.callout.shape_guard import ShapeGuard
from netwarden.engine import host
from netwarden.engine.bus import CalloutFailed, EngineEvent, PolicyApplied
from netwarden.engine.connect import ConnectLoop, PacketLoop
from netwarden.model import Endpoint, FlowEvent, FlowEventKind
from netwarden.policy.connect_layer import ConnectLayer

if TYPE_CHECKING:
    from netwarden.engine.core import Engine
    from netwarden.engine.prompts import PromptBook
    from netwarden.engine.quotas import QuotaBook
    from netwarden.platform.base import ConnectQueue, PacketQueue
    from netwarden.policy.model import Policy

log = logging.getLogger(__name__)

STATUS_SECONDS = 1.0


def registry_for(
    policy: Policy,
    loaded: Sequence[LoadedCallout],
    fail_mode: FailMode,
    budget: float = DEFAULT_BUDGET,
    on_failure: Callable[[Failure], None] | None = None,
    quotas: QuotaBook | None = None,
    shaping: ShapeGuard | None = None,
) -> CalloutRegistry:
    """The policy's program rules (asked first), its quotas and rate limits, and the
    loaded callouts."""
    everything = list(loaded)
    if shaping is not None:
        everything.insert(0, LoadedCallout(shaping, ORIGIN))
    if quotas is not None and policy.quotas:
        everything.insert(0, LoadedCallout(QuotaGuard(quotas), ORIGIN))
    if policy.program_rules:
        everything.insert(0, LoadedCallout(ProgramRules(policy), ORIGIN))
    return CalloutRegistry(everything, fail_mode=fail_mode, budget=budget, on_failure=on_failure)


def connect_layer_for(policy: Policy, registry: CalloutRegistry) -> ConnectLayer | None:
    """The CONNECT layer the policy and callouts need; None when nothing classifies."""
    if not registry.at(Layer.CONNECT) and not registry.at(Layer.PACKET):
        return None
    settings = policy.settings
    return ConnectLayer(
        queue=settings.connect_queue,
        mask=settings.connect_mask,
        fail_open=registry.fail_mode is FailMode.OPEN,
        proxy_mark=settings.proxy_mark,
        packets=bool(registry.at(Layer.PACKET)),
    )


class CalloutHost:
    """Runs a registry's CONNECT loop (when it classifies) in a thread and tells its
    flow callouts what the engine's bus carries."""

    def __init__(
        self,
        engine: Engine,
        registry: CalloutRegistry,
        layer: ConnectLayer | None,
        relayout: Callable[[ConnectLayer, Endpoint], None],
        write_status: Callable[[dict[str, object]], None] | None = None,
        prompts: PromptBook | None = None,
    ) -> None:
        self.engine = engine
        self.prompts = prompts
        self.registry = registry
        self.layer = layer
        self.relayout = relayout
        self.write_status = write_status
        self.queue: ConnectQueue | None = None
        self.loop: ConnectLoop | None = None
        self.packets: PacketQueue | None = None
        self.packet_loop: PacketLoop | None = None
        self._threads: list[threading.Thread] = []
        engine.bus.subscribe(self._on_events)

    def start(self, stop: threading.Event) -> None:
        if self.layer is not None:
            self.queue = host.backend().connect_queue(self.layer)
            self.loop = ConnectLoop(
                self.queue,
                self.registry,
                self.layer,
                self.relayout,
                self.engine.publish,
                self.engine.flow_process,
                self.prompts,
            )
            self._spawn("netwarden-connect", self.loop.run, stop)
            if self.layer.packets:
                self.packets = host.backend().packet_queue(self.layer)
                self.packet_loop = PacketLoop(self.packets, self.registry)
                self._spawn("netwarden-packets", self.packet_loop.run, stop)
        if self.write_status is not None and self.registry.loaded:
            self._spawn("netwarden-callout-status", self._report, stop)

    def _spawn(
        self, name: str, target: Callable[[threading.Event], None], stop: threading.Event
    ) -> None:
        thread = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)
        if self.queue is not None:
            self.queue.close()
            self.queue = None
        if self.packets is not None:
            self.packets.close()
            self.packets = None

    def status(self) -> dict[str, object]:
        return {
            "fail_mode": str(self.registry.fail_mode),
            "budget_seconds": self.registry.budget,
            "queue": self.queue.mechanism if self.queue is not None else "",
            "decided": self.loop.decided if self.loop is not None else 0,
            "packets": self.packet_loop.seen if self.packet_loop is not None else 0,
            "packets_dropped": self.packet_loop.dropped if self.packet_loop is not None else 0,
            "callouts": self.registry.to_json(),
        }

    def _report(self, stop: threading.Event) -> None:
        assert self.write_status is not None
        while True:
            try:
                self.write_status(self.status())
            except OSError as exc:
                log.warning("could not write the callouts' status: %s", exc)
            if stop.wait(STATUS_SECONDS):
                return

    def _on_events(self, events: Sequence[EngineEvent]) -> None:
        opened = [
            e.flow for e in events if isinstance(e, FlowEvent) and e.kind is FlowEventKind.OPENED
        ]
        closed = [
            e.flow for e in events if isinstance(e, FlowEvent) and e.kind is FlowEventKind.CLOSED
        ]
        if opened:
            self.registry.flows_established(opened)
        if closed:
            self.registry.flows_deleted(closed)
        for event in events:
            if isinstance(event, PolicyApplied):
                self.registry.notify(
                    Change("policy applied", f"{event.source} ({event.rules} kernel rules)")
                )


def failure_publisher(
    publish: Callable[[Sequence[EngineEvent]], None],
) -> Callable[[Failure], None]:
    def failed(failure: Failure) -> None:
        publish(
            [
                CalloutFailed(
                    failure.callout, str(failure.layer), failure.error, str(failure.fallback)
                )
            ]
        )

    return failed

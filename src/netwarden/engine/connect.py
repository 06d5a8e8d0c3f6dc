"""The CONNECT layer's loop: each new connection the backend holds is given its
process, put to the callouts, and released with their verdict."""

from __future__ import annotations

import functools
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence

from netwarden.callout.api import Connection
from netwarden.callout.registry import CalloutRegistry
from netwarden.engine.bus import DecisionTaken, EngineEvent
from netwarden.model import (
    Attribution,
    AttributionMethod,
    Endpoint,
    FlowKey,
    ProcessInfo,
    Transport,
)
from netwarden.model.connect import Action, ConnectDirection, ConnectRequest, Verdict
from netwarden.platform.base import ConnectQueue, PacketQueue, PlatformError
from netwarden.policy.connect_layer import WATCH_BIT, ConnectLayer

log = logging.getLogger(__name__)

FLOW_EVENT_WAIT = 0.3  # seconds a connection without a socket waits for its flow event


@functools.lru_cache(maxsize=256)
def interface_name(index: int) -> str:
    """The interface's name ("" for 0 or one that is gone)."""
    if not index:
        return ""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return ""


class ConnectLoop:
    """relayout: puts a layer with one more redirect target in force (the kernel must
    know a target's code before a verdict names it)."""

    def __init__(
        self,
        queue: ConnectQueue,
        registry: CalloutRegistry,
        layer: ConnectLayer,
        relayout: Callable[[ConnectLayer, Endpoint], None],
        publish: Callable[[Sequence[EngineEvent]], None],
        flow_process: Callable[[FlowKey], ProcessInfo | None] | None = None,
    ) -> None:
        """flow_process: the process flow events named for a flow, for one whose socket
        is gone already (a process that sent one datagram and exited)."""
        self.queue = queue
        self.flow_process = flow_process
        self.registry = registry
        self.layer = layer
        self.relayout = relayout
        self.publish = publish
        self.decided = 0

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                ready, _w, _x = select.select([self.queue], [], [], 0.25)
                if not ready:
                    continue
                events: list[EngineEvent] = [self.decide(r) for r in self.queue.receive()]
            except Exception:  # the loop must go on: connections wait for it
                failures += 1
                if failures <= 10 or failures % 1000 == 0:
                    log.exception("the CONNECT loop failed (%d times); going on", failures)
                continue
            self.decided += len(events)
            self.publish(events)

    def decide(self, request: ConnectRequest) -> DecisionTaken:
        try:
            process, attribution = self.queue.owner(request)
            if process is None and self.flow_process is not None:
                process = self._from_flow_events(request)
                if process is not None:
                    attribution = Attribution(AttributionMethod.FLOW_EVENT)
            connection = Connection(
                request,
                process,
                attribution,
                interface=interface_name(request.interface),
                read_parent=self.queue.parent_of,
            )
            decision = self.registry.classify(connection)
            verdict, by = decision.verdict, decision.by
            code = self._code(request, verdict)
            if (
                code is not None
                and self.layer.packets
                and verdict.action is not Action.BLOCK
                and self.registry.watches(connection)
            ):
                code |= WATCH_BIT
        except Exception as exc:  # never leave a connection waiting
            log.exception("deciding %s failed", request)
            process, verdict, by = None, self.registry.fail_mode.verdict, "netwarden"
            decision_detail = f"failed: {exc}"
            code = self.layer.code(verdict)
        else:
            decision_detail = decision.failure
        self.queue.decide(request, code)
        who = (
            f"{process.name} (pid {process.pid}, {process.exe or 'no exe'})"
            if process is not None
            else "unknown process"
        )
        return DecisionTaken(str(request), who, str(verdict), by or "no callout", decision_detail)

    def _from_flow_events(self, request: ConnectRequest) -> ProcessInfo | None:
        """Wait a little for the flow event of a connection whose socket is gone."""
        assert self.flow_process is not None
        key = FlowKey(request.transport, request.local, request.remote)
        deadline = time.monotonic() + FLOW_EVENT_WAIT
        while True:
            process = self.flow_process(key)
            if process is not None or time.monotonic() >= deadline:
                return process
            time.sleep(0.002)

    def _code(self, request: ConnectRequest, verdict: Verdict) -> int | None:
        if verdict.action is Action.REDIRECT:
            if request.transport is not Transport.TCP or request.direction is ConnectDirection.IN:
                log.warning(
                    "%s: only outgoing TCP connections can be redirected; permitted", request
                )
                return self.layer.continue_code
            code = self.layer.code(verdict)
            if code is None and verdict.target is not None:
                try:
                    layer = self.layer.with_redirect(verdict.target)
                    self.relayout(layer, verdict.target)
                except (ValueError, PlatformError) as exc:
                    log.error("cannot redirect to %s: %s", verdict.target, exc)
                    return self.layer.code(self.registry.fail_mode.verdict)
                self.layer = layer
                code = layer.code(verdict)
            return code
        return self.layer.code(verdict)


class PacketLoop:
    """The PACKET layer's loop: each packet of a watched connection put to the PACKET
    callouts; BLOCK drops it, anything else lets it pass."""

    def __init__(self, queue: PacketQueue, registry: CalloutRegistry) -> None:
        self.queue = queue
        self.registry = registry
        self.seen = 0
        self.dropped = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                ready, _w, _x = select.select([self.queue], [], [], 0.25)
                if not ready:
                    continue
                for packet in self.queue.receive():
                    self.seen += 1
                    try:
                        verdict = self.registry.classify_packet(packet).verdict
                    except Exception:
                        log.exception("deciding a packet of %s failed", packet)
                        verdict = self.registry.fail_mode.verdict
                    accept = verdict.action is not Action.BLOCK
                    self.dropped += not accept
                    self.queue.decide(packet, accept)
            except Exception:  # the loop must go on: packets wait for it
                log.exception("the PACKET loop failed; going on")

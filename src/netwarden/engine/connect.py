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
from netwarden.engine.prompts import PromptBook
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
WAIT_STEP = 0.005  # how often the waiting ones look again


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
        prompts: PromptBook | None = None,
    ) -> None:
        """flow_process: the process flow events named for a flow, for one whose socket
        is gone already (a process that sent one datagram and exited). prompts: where
        connections a callout asks about wait (without it, ASK takes the fail mode)."""
        self.queue = queue
        self.prompts = prompts
        self.flow_process = flow_process
        self.registry = registry
        self.layer = layer
        self.relayout = relayout
        self.publish = publish
        self.decided = 0
        # Connections set aside for their flow event: (request, the process found so far
        # and how, deadline).
        self._waiting: list[tuple[ConnectRequest, ProcessInfo | None, Attribution, float]] = []

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                # While a connection waits for its flow event, look again soon.
                timeout = WAIT_STEP if self._waiting else 0.25
                sources: list[ConnectQueue | PromptBook] = [self.queue]
                deadline = None
                if self.prompts is not None:
                    sources.append(self.prompts)
                    deadline = self.prompts.next_deadline()
                    if deadline is not None:
                        timeout = max(0.0, min(timeout, deadline - time.monotonic()))
                ready, _w, _x = select.select(sources, [], [], timeout)
                events = self._waited()
                if self.prompts in ready or (deadline is not None and time.monotonic() >= deadline):
                    events += self._answered()
                if self.queue in ready:
                    events += [e for r in self.queue.receive() if (e := self.decide(r))]
            except Exception:  # the loop must go on: connections wait for it
                failures += 1
                if failures <= 10 or failures % 1000 == 0:
                    log.exception("the CONNECT loop failed (%d times); going on", failures)
                continue
            self.decided += len(events)
            self.publish(events)

    def decide(self, request: ConnectRequest) -> DecisionTaken | None:
        """Decide the connection now, or (None) set it aside to wait for the flow event
        of a sender that is gone already, while the others are decided."""
        try:
            process, attribution = self.queue.owner(request)
        except Exception as exc:  # never leave a connection waiting
            log.exception("finding the process of %s failed", request)
            return self._failed(request, exc)
        if (process is None or not process.exe) and self._may_wait(request):
            # Gone, or going: a process that exits loses its executable before its
            # sockets. The flow event read it while it was sending.
            deadline = time.monotonic() + FLOW_EVENT_WAIT
            self._waiting.append((request, process, attribution, deadline))
            return None
        return self._finish(request, process, attribution)

    def _may_wait(self, request: ConnectRequest) -> bool:
        """A UDP sender may have exited right after its datagram (a TCP one waits for
        its connect; an incoming connection to no socket has no process to wait for)."""
        return (
            self.flow_process is not None
            and request.transport is Transport.UDP
            and request.direction is ConnectDirection.OUT
        )

    def _waited(self) -> list[EngineEvent]:
        """The connections set aside whose flow event came, or whose wait is over."""
        events: list[EngineEvent] = []
        still, now = [], time.monotonic()
        for request, process, attribution, deadline in self._waiting:
            key = FlowKey(request.transport, request.local, request.remote)
            named = self.flow_process(key) if self.flow_process is not None else None
            if named is not None and (named.exe or process is None):
                process, attribution = named, Attribution(AttributionMethod.FLOW_EVENT)
            elif now < deadline:
                still.append((request, process, attribution, deadline))
                continue
            if (event := self._finish(request, process, attribution)) is not None:
                events.append(event)
        self._waiting = still
        return events

    def _answered(self) -> list[EngineEvent]:
        """Release the connections of prompts answered or timed out."""
        if self.prompts is None:
            return []
        events: list[EngineEvent] = []
        for prompt in self.prompts.settled():
            assert prompt.answer is not None
            verdict = prompt.answer.verdict
            for request in prompt.held:
                self.queue.decide(request, self.layer.code(verdict))
            by = f"{prompt.rule}, answered by {prompt.answer.by}"
            for request in (prompt.request, *prompt.joined):
                events.append(_taken(request, prompt.process, verdict, by, str(prompt.answer)))
        return events

    def _finish(
        self, request: ConnectRequest, process: ProcessInfo | None, attribution: Attribution
    ) -> DecisionTaken | None:
        try:
            connection = Connection(
                request,
                process,
                attribution,
                interface=interface_name(request.interface),
                read_parent=self.queue.parent_of,
            )
            decision = self.registry.classify(connection)
            if decision.verdict.action is Action.ASK and self.prompts is not None:
                self.prompts.hold(request, process, decision.by)
                return None  # released when answered (or the time is up)
            code = self._code(request, decision.verdict)
            if (
                code is not None
                and self.layer.packets
                and decision.verdict.action is not Action.BLOCK
                and self.registry.watches(connection)
            ):
                code |= WATCH_BIT
        except Exception as exc:  # never leave a connection waiting
            log.exception("deciding %s failed", request)
            return self._failed(request, exc)
        self.queue.decide(request, code)
        return _taken(request, process, decision.verdict, decision.by, decision.failure)

    def _failed(self, request: ConnectRequest, exc: Exception) -> DecisionTaken:
        verdict = self.registry.fail_mode.verdict
        self.queue.decide(request, self.layer.code(verdict))
        return _taken(request, None, verdict, "netwarden", f"failed: {exc}")

    def _code(self, request: ConnectRequest, verdict: Verdict) -> int | None:
        if verdict.action is Action.ASK:  # asked with no one to ask
            return self.layer.code(self.registry.fail_mode.verdict)
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


def _taken(
    request: ConnectRequest, process: ProcessInfo | None, verdict: Verdict, by: str, detail: str
) -> DecisionTaken:
    who = (
        f"{process.name} (pid {process.pid}, {process.exe or 'no exe'})"
        if process is not None
        else "unknown process"
    )
    return DecisionTaken(str(request), who, str(verdict), by or "no callout", detail)


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

"""What each flow moved since the engine last told of it: for those who count bytes
from the bus (quotas, metrics)."""

from __future__ import annotations

from netwarden.model import FlowEvent, FlowEventKind, FlowKey


class FlowDeltas:
    def __init__(self, counted_before: float | None = None) -> None:
        """counted_before: flows first seen at or before this time (unix) were counted
        by an earlier run; only what they move from now on counts.

        The bytes of an open flow whose process is not named yet are held back and
        handed out with its first event that names one (the monitor may name a process
        a moment after its flow opened), or with its close: whoever counts by program
        counts them under the right one."""
        self.counted_before = counted_before
        self.seen: dict[FlowKey, tuple[int, int]] = {}  # the totals counted of each flow
        self.held: dict[FlowKey, tuple[int, int]] = {}  # bytes of flows not named yet

    def of(self, event: FlowEvent) -> tuple[int, int]:
        """(sent, received) since the flow's last event (0, 0 when it is not measured),
        with what was held back while its process was unknown."""
        sent, received = self._moved(event)
        flow = event.flow
        named = flow.process is not None and bool(flow.process.name)
        if not named and event.kind is not FlowEventKind.CLOSED:
            if sent or received:
                before = self.held.get(flow.key, (0, 0))
                self.held[flow.key] = (before[0] + sent, before[1] + received)
            return 0, 0
        held = self.held.pop(flow.key, None)
        if held is not None:
            sent, received = sent + held[0], received + held[1]
        return sent, received

    def _moved(self, event: FlowEvent) -> tuple[int, int]:
        flow = event.flow
        if event.kind is FlowEventKind.CLOSED:
            before = self.seen.pop(flow.key, None)
        else:
            before = self.seen.get(flow.key)
        if not flow.bytes_measured:
            return 0, 0
        now = (flow.bytes_sent, flow.bytes_received)
        if event.kind is not FlowEventKind.CLOSED:
            self.seen[flow.key] = now
        if before is None:
            early = self.counted_before is not None and flow.first_seen <= self.counted_before
            before = now if early else (0, 0)
        return max(0, now[0] - before[0]), max(0, now[1] - before[1])

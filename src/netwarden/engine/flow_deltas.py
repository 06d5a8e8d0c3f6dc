"""What each flow moved since the engine last told of it: for those who count bytes
from the bus (quotas, metrics)."""

from __future__ import annotations

from netwarden.model import FlowEvent, FlowEventKind, FlowKey


class FlowDeltas:
    def __init__(self, counted_before: float | None = None) -> None:
        """counted_before: flows first seen at or before this time (unix) were counted
        by an earlier run; only what they move from now on counts."""
        self.counted_before = counted_before
        self.seen: dict[FlowKey, tuple[int, int]] = {}  # the totals counted of each flow

    def of(self, event: FlowEvent) -> tuple[int, int]:
        """(sent, received) since the flow's last event (0, 0 when it is not measured)."""
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

"""The live view's model: flows with their age, closed ones kept while they fade,
sorting, filtering and per-process totals. Front-end neutral and pure."""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from netwarden.model import Flow, FlowEvent, FlowEventKind, FlowKey
from netwarden.monitor.filters import FlowFilter

T = TypeVar("T")

NEW_SECONDS = 3.0  # a flow is shown as new this long
FADE_SECONDS = 5.0  # a closed flow stays visible this long


class SortKey(enum.StrEnum):
    PROCESS = "process"
    PID = "pid"
    LOCAL = "local"
    REMOTE = "remote"
    STATE = "state"
    SENT = "sent"
    RECEIVED = "received"
    RATE = "rate"
    AGE = "age"


class RowStatus(enum.StrEnum):
    NEW = "new"
    LIVE = "live"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Row:
    flow: Flow
    status: RowStatus
    fade: float  # 0 for live rows, rising to 1 as a closed row disappears


@dataclass(frozen=True, slots=True)
class ProcessTotals:
    pid: int | None
    name: str
    exe: str
    flows: int
    bytes_sent: int
    bytes_received: int
    send_rate: float
    receive_rate: float


def _sort_value(flow: Flow, key: SortKey) -> tuple[object, ...]:
    proc = flow.process
    match key:
        case SortKey.PROCESS:
            return (proc.name if proc else "~", proc.pid if proc else 0)
        case SortKey.PID:
            return (proc.pid if proc else -1,)
        case SortKey.LOCAL:
            return (flow.key.local.port, flow.key.local.address)
        case SortKey.REMOTE:
            return (flow.key.remote.address, flow.key.remote.port)
        case SortKey.STATE:
            return (flow.state,)
        case SortKey.SENT:
            return (flow.bytes_sent,)
        case SortKey.RECEIVED:
            return (flow.bytes_received,)
        case SortKey.RATE:
            return (flow.send_rate + flow.receive_rate,)
        case SortKey.AGE:
            return (flow.first_seen,)


class LiveView:
    def __init__(self) -> None:
        self._live: dict[FlowKey, Flow] = {}
        self._closed: dict[FlowKey, tuple[Flow, float]] = {}
        self._opened_at: dict[FlowKey, float] = {}
        self.sort_key = SortKey.RATE
        self.descending = True
        self.filter = FlowFilter()
        # What was worked out last, with what it depended on: when nothing changed it
        # is not worked out again (a refresh of 20,000 idle flows then costs nothing).
        self._changes = 0
        self._memos: dict[str, tuple[tuple[object, ...], Any]] = {}

    def apply(self, events: Iterable[FlowEvent], now: float) -> None:
        for event in events:
            self._changes += 1
            key = event.flow.key
            if event.kind is FlowEventKind.CLOSED:
                self._live.pop(key, None)
                self._opened_at.pop(key, None)
                self._closed[key] = (event.flow, now)
                continue
            if event.kind is FlowEventKind.OPENED:
                self._opened_at[key] = now
                self._closed.pop(key, None)
            self._live[key] = event.flow

    def load(self, flows: Iterable[Flow], now: float) -> None:
        """Start from a snapshot: these flows are shown as already established."""
        for flow in flows:
            self._changes += 1
            self._live[flow.key] = flow
            self._opened_at[flow.key] = now - NEW_SECONDS

    def expire(self, now: float) -> None:
        gone = [k for k, (_f, t) in self._closed.items() if now - t >= FADE_SECONDS]
        for key in gone:
            del self._closed[key]
        self._changes += len(gone)

    def sort_by(self, key: SortKey) -> None:
        """Sort by key; choosing the same key again reverses the order."""
        if key is self.sort_key:
            self.descending = not self.descending
        else:
            self.sort_key = key
            self.descending = key in (SortKey.SENT, SortKey.RECEIVED, SortKey.RATE)

    def _memo(self, name: str, basis: tuple[object, ...], compute: Callable[[], T]) -> T:
        known = self._memos.get(name)
        if known is None or known[0] != basis:
            known = self._memos[name] = (basis, compute())
        value: T = known[1]
        return value

    def _shown(self) -> list[Flow]:
        """The flows (live, then fading) that pass the filter."""

        def select() -> list[Flow]:
            matches = self.filter.matches
            flows = [f for f in self._live.values() if matches(f)]
            flows.extend(f for f, _t in self._closed.values() if matches(f))
            return flows

        return self._memo("shown", (self._changes, self.filter), select)

    def matching(self) -> int:
        """How many flows (live and fading) pass the filter."""
        return len(self._shown())

    def rows(self, now: float, limit: int | None = None) -> list[Row]:
        """The rows to show, sorted; with a limit, only the first `limit` of them."""
        basis = (self._changes, self.filter, self.sort_key, self.descending, limit)
        return [self._row(flow, now)
                for flow in self._memo("rows", basis, lambda: self._select(limit))]  # fmt: skip

    def _select(self, limit: int | None) -> list[Flow]:
        flows = self._shown()
        sort_key = self.sort_key

        def order(flow: Flow) -> tuple[object, ...]:
            return _sort_value(flow, sort_key)

        if limit is not None and limit < len(flows):
            pick = heapq.nlargest if self.descending else heapq.nsmallest
            return pick(limit, flows, key=order)
        return sorted(flows, key=order, reverse=self.descending)

    def _row(self, flow: Flow, now: float) -> Row:
        closed = self._closed.get(flow.key)
        if closed is not None and flow.key not in self._live:
            return Row(flow, RowStatus.CLOSED, min(1.0, (now - closed[1]) / FADE_SECONDS))
        opened = self._opened_at.get(flow.key, now - NEW_SECONDS)
        return Row(flow, RowStatus.NEW if now - opened < NEW_SECONDS else RowStatus.LIVE, 0.0)

    def totals(self) -> list[ProcessTotals]:
        """Per process (live flows plus the closed ones still shown), busiest first."""
        return self._memo("totals", (self._changes, self.filter), self._sum_by_process)

    def _sum_by_process(self) -> list[ProcessTotals]:
        groups: dict[tuple[int | None, str], list[Flow]] = {}
        for flow in self._shown():
            proc = flow.process
            groups.setdefault((proc.pid if proc else None, proc.name if proc else "?"), []).append(
                flow
            )
        totals = [
            ProcessTotals(
                pid=pid,
                name=name,
                exe=next((f.process.exe for f in group if f.process), ""),
                flows=len(group),
                bytes_sent=sum(f.bytes_sent for f in group),
                bytes_received=sum(f.bytes_received for f in group),
                send_rate=sum(f.send_rate for f in group if not f.closed),
                receive_rate=sum(f.receive_rate for f in group if not f.closed),
            )
            for (pid, name), group in groups.items()
        ]
        totals.sort(key=lambda t: (t.send_rate + t.receive_rate, t.bytes_sent + t.bytes_received),
                    reverse=True)  # fmt: skip
        return totals

    def __len__(self) -> int:
        return len(self._live)

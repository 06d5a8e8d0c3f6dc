"""The monitor loop: waits on kernel event streams, takes periodic snapshots, and
hands flow events to a consumer (terminal UI, NDJSON writer) and to history."""

from __future__ import annotations

import collections
import logging
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from netwarden.model import Flow, FlowEvent, FlowEventKind, RelayLink
from netwarden.model.flow import AppNote
from netwarden.model.observations import CountedFlow, SocketChanges, SocketRecord, Sources
from netwarden.monitor.table import CLOSE_GRACE, FlowTable

if TYPE_CHECKING:
    from netwarden.monitor.history import HistoryStore

log = logging.getLogger(__name__)

EventSink = Callable[[list[FlowEvent]], None]
BATCH_SECONDS = 0.1
# Closed flows are written to history in one transaction at most this often (and when
# the monitor stops): a commit per batch of events cost more than the rows.
HISTORY_SECONDS = 1.0
# A conntrack dump that took t seconds is not repeated for CONNTRACK_COST_FACTOR * t
# seconds: at most 2% of a core goes to dumps however large the table.
CONNTRACK_COST_FACTOR = 50


class Monitor:
    def __init__(
        self,
        sources: Sources,
        *,
        history: HistoryStore | None = None,
        interval: float = 1.0,
        is_root: bool = True,
        record_events: bool = True,
        relay_links: collections.deque[RelayLink | AppNote] | None = None,
    ) -> None:
        """relay_links: filled by a local proxy (from any thread) with the connections
        it relays, so that their flows say so."""
        self.sources = sources
        self.relay_links = relay_links
        self.app_notes: Callable[[], Sequence[AppNote]] | None = None  # another process's
        self.history = history
        self.interval = interval
        self.table = FlowTable(
            sources.processes,
            netns=sources.netns,
            is_root=is_root,
            record_events=record_events,
            udp_from_start=sources.flow_counter_events is not None,
        )
        self._last_prune = 0.0
        self._unwritten: list[Flow] = []  # closed flows not yet in history
        self._last_failure = ("", 0.0)  # the last failure logged, and when
        self._last_write = 0.0
        self._next_conntrack = 0.0
        self._by_changes: bool | None = None  # None until the platform was asked

    def snapshot(
        self, sockets: list[SocketRecord] | None = None, now: float | None = None
    ) -> list[Flow]:
        """One dump, merged: the table as it is now. sockets: instead of a dump."""
        self._refresh(time.time() if now is None else now, sockets=sockets)
        return self.table.flows()

    def _refresh(
        self, now: float, *, full: bool = False, sockets: list[SocketRecord] | None = None
    ) -> list[FlowEvent]:
        """full: read conntrack whatever the last dump cost (the last refresh)."""
        changes = None
        try:
            if sockets is None:
                changes = self._changes()
                if changes is None:
                    sockets = self.sources.sockets.snapshot()
        except OSError as exc:  # a failed read skips one refresh; the table stays as it was
            log.warning("snapshot failed, keeping the last one: %s", exc)
            return self.table.tick(now)
        try:
            udp = changes.others if changes is not None else sockets or []
            if self.table.wants_udp_baseline and self.sources.flow_counters is not None:
                self.table.set_udp_baseline(self.sources.flow_counters.snapshot(), udp, now)
            conntrack = self._conntrack_snapshot(full, udp)
        except OSError as exc:  # UDP counters stay as the last dump left them
            log.warning("conntrack dump failed: %s", exc)
            conntrack = None
        if changes is not None:
            return self.table.apply_changes(changes, conntrack, now)
        return self.table.apply_snapshot(sockets or [], conntrack, now)

    def _changes(self) -> SocketChanges | None:
        """The socket table's changes where the platform reads them so (then always)."""
        if self._by_changes is False:
            return None
        try:
            # This table starts from every socket, whatever the source told others before.
            changes = self.sources.sockets.changes(restart=self._by_changes is None)
        except OSError as exc:  # full dumps from now on; they bring the table in line
            log.warning("reading socket changes failed (%s); dumping sockets instead", exc)
            changes = None
        self._by_changes = changes is not None
        return changes

    def _conntrack_snapshot(
        self, full: bool, sockets: list[SocketRecord]
    ) -> list[CountedFlow] | None:
        """A conntrack dump, unless the last one was too dear to repeat so soon: the
        kernel walks every entry (a busy host's TCP ones too) even though only UDP ones
        are returned. Between dumps, UDP flows keep their last counters. No dump
        either when nothing UDP could use one."""
        if self.sources.flow_counters is None or not self.table.wants_conntrack(sockets):
            return None
        if self.sources.addresses is not None:
            self.table.set_local_addresses(self.sources.addresses.current())
        if not full and time.monotonic() < self._next_conntrack and not self.table.udp_closing():
            return None  # (a closing UDP conversation needs its final counters now)
        started = time.monotonic()
        records = self.sources.flow_counters.snapshot()
        self._next_conntrack = started + (time.monotonic() - started) * CONNTRACK_COST_FACTOR
        return records

    def _drain(self, now: float) -> None:
        if self.app_notes is not None:
            notes = self.app_notes()
            if notes:
                self.table.add_relays(notes, now)
        links = self.relay_links
        if links:
            self.table.add_relays([links.popleft() for _ in range(len(links))], now)
        src = self.sources
        if src.flow_stamps is not None:
            self.table.add_stamps(src.flow_stamps.drain())
        if src.closed_sockets is not None:
            self.table.add_socket_closes(src.closed_sockets.drain(), now)
        if src.flow_counter_events is not None:
            self.table.add_conntrack(src.flow_counter_events.drain(), now)

    def run(self, sink: EventSink, stop: threading.Event, duration: float | None = None) -> None:
        """Feed sink until stop is set (or duration passes). Flows still open are not
        reported closed at the end: they outlive the monitor."""
        streams = [
            s
            for s in (
                self.sources.flow_stamps,
                self.sources.closed_sockets,
                self.sources.flow_counter_events,
            )
            if s is not None
        ]
        started = time.monotonic()
        next_snapshot = started
        while not stop.is_set():
            mono = time.monotonic()
            if duration is not None and mono - started >= duration:
                break
            if mono >= next_snapshot:
                now = time.time()
                self._emit(sink, self._guarded(self._snapshot_step, now))
                next_snapshot = mono + self.interval
                continue
            timeout = max(0.0, min(next_snapshot - mono, 0.25))
            ready, _w, _x = select.select(streams, [], [], timeout) if streams else ([], [], [])
            if not streams:
                time.sleep(timeout)
            now = time.time()
            self._emit(sink, self._guarded(self._events_step if ready else self.table.tick, now))
            if ready:
                # Let events gather: one pass per batch costs far less than one per event.
                stop.wait(BATCH_SECONDS)
        # Flows already closing are reported without waiting out their grace time.
        now = time.time()
        self._drain(now)
        closing = self._refresh(now, full=True) + self.table.tick(now + CLOSE_GRACE)
        self._emit(sink, closing, last=True)

    def _snapshot_step(self, now: float) -> list[FlowEvent]:
        self._drain(now)
        return self._refresh(now)

    def _events_step(self, now: float) -> list[FlowEvent]:
        self._drain(now)
        return self.table.tick(now)

    def _guarded(self, step: Callable[[float], list[FlowEvent]], now: float) -> list[FlowEvent]:
        """A failure in the monitor's own bookkeeping is logged (once a minute at most
        for the same failure), not fatal: a monitor that stops watching is worse."""
        try:
            return step(now)
        except Exception as exc:
            now, text = time.monotonic(), f"{type(exc).__name__}: {exc}"
            if text != self._last_failure[0] or now - self._last_failure[1] > 60:
                self._last_failure = (text, now)
                log.exception("a monitor step failed; going on")
            return []

    def _emit(self, sink: EventSink, events: list[FlowEvent], *, last: bool = False) -> None:
        if self.history is not None:
            self._unwritten.extend(e.flow for e in events if e.kind is FlowEventKind.CLOSED)
            now = time.monotonic()
            if self._unwritten and (last or now - self._last_write >= HISTORY_SECONDS):
                self._write_history(self.history, now)
        if events:
            sink(events)

    def _write_history(self, history: HistoryStore, now: float) -> None:
        closed, self._unwritten = self._unwritten, []
        self._last_write = now
        try:
            history.record(closed)
            if now - self._last_prune > 3600:
                self._last_prune = now
                history.prune()
        except Exception as exc:  # keep monitoring even when the disk is full
            log.error("could not write history: %s", exc)

"""The engine: opens the backend's sources for one network namespace, runs the flow
table over them and publishes what happens on its bus."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from netwarden.engine import host
from netwarden.engine.bus import EngineEvent, EventBus
from netwarden.model import Endpoint, FlowKey, ProcessInfo, RelayLink, Transport
from netwarden.model.flow import AppNote
from netwarden.platform.base import PlatformError

if TYPE_CHECKING:
    from netwarden.model.observations import Sources
    from netwarden.monitor.history import HistoryStore
    from netwarden.monitor.service import Monitor


class EngineError(Exception):
    """A problem the user can fix (a missing namespace, a missing privilege), said in
    one sentence."""


class Engine:
    """One network namespace watched: flows, their events, and the relays of
    netwarden's own proxies (`relay_links`, filled from any thread)."""

    def __init__(self, sources: Sources, monitor: Monitor, is_root: bool) -> None:
        self.sources = sources
        self.monitor = monitor
        self.is_root = is_root
        self.bus = EventBus()
        self.relay_links: collections.deque[RelayLink | AppNote] = collections.deque()
        monitor.relay_links = self.relay_links

    @classmethod
    @contextmanager
    def open(
        cls,
        netns: str | None = None,
        *,
        events: bool = True,
        history: HistoryStore | None = None,
        interval: float = 1.0,
        record_events: bool = True,
    ) -> Iterator[Engine]:
        """events: follow the kernel's event streams (closed sockets, flow starts,
        counters) as well as its tables; a one-shot listing does without."""
        from netwarden.monitor.service import Monitor

        with ExitStack() as stack:
            try:
                sources = stack.enter_context(host.backend().open_sources(netns, events=events))
            except PlatformError as exc:
                raise EngineError(str(exc)) from None
            except PermissionError as exc:
                raise EngineError(
                    f"permission denied opening kernel interfaces ({exc}); try as root"
                ) from None
            is_root = host.is_privileged()
            monitor = Monitor(
                sources,
                history=history,
                interval=interval,
                is_root=is_root,
                record_events=record_events,
            )
            # What a `netwarden up` in that namespace identifies joins the flows.
            from netwarden.engine.app_notes import AppNoteReader, notes_path

            monitor.app_notes = AppNoteReader(notes_path(netns)).poll
            yield cls(sources, monitor, is_root)

    @property
    def missing(self) -> tuple[str, ...]:
        """What this host cannot show, in words for the user."""
        return self.sources.missing

    def flow_process(self, key: FlowKey) -> ProcessInfo | None:
        """The process the kernel's flow events named for a flow (they outlive a
        process that exits at once); None when none did yet."""
        return self.monitor.table.stamped_process(key)

    def connection_process(
        self, client: tuple[str, int], destination: tuple[str, int]
    ) -> ProcessInfo | None:
        """The process behind a TCP connection from client to destination, as the
        kernel's flow events named it (None until they do)."""
        return self.flow_process(FlowKey(Transport.TCP, Endpoint(*client), Endpoint(*destination)))

    def connection_program(self, client: tuple[str, int], destination: tuple[str, int]) -> str:
        """That process's executable ("" until known)."""
        process = self.connection_process(client, destination)
        return process.exe if process is not None else ""

    def publish(self, events: Sequence[EngineEvent]) -> None:
        self.bus.publish(events)

    def run(self, stop: threading.Event, duration: float | None = None) -> None:
        """Follow the flows until stop is set (or duration passes), publishing their
        events on the bus."""
        self.monitor.run(self.bus.publish, stop, duration)

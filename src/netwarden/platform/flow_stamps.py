"""Flow stamps read in a thread: kernel events that name the process of a flow are
turned into ProcessStamps, with the process read the moment its event arrives (which
is what attributes a process that connects, sends and exits within milliseconds).

The events come from readers: pydivert's FLOW/SOCKET layers (divert_flows.py, both
platforms) or netwarden's own BPF programs (linux/flow_events.py)."""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from netwarden.model import Endpoint, ProcessInfo, Transport
from netwarden.platform.base import ProcessStamp

log = logging.getLogger(__name__)

FLOW_ESTABLISHED = 1
FLOW_DELETED = 2
MAX_PENDING = 1 << 18
EARLY_TTL = 1.0
BUSY_WAKES = 0.01  # wake-ups closer than this mean a busy host ...
GATHER_SECONDS = 0.002  # ... where events are read in batches this far apart


class FlowAddress(NamedTuple):
    """What an event says of a flow. name: the process's command name at the time,
    when the source knows it (kept when the process is gone before it is read)."""

    event: int
    pid: int
    local: str
    remote: str
    local_port: int
    remote_port: int
    protocol: int
    name: str = ""


class EventReader(Protocol):
    def fileno(self) -> int:
        """A descriptor readable when events wait, or -1: read() blocks a while."""
        ...

    def read(self) -> FlowAddress | None:
        """The next event, or None when none waits."""
        ...


Handler = Callable[[FlowAddress], None]


class FlowStampThread:
    """Reads its readers in a thread; :meth:`drain` hands over the stamps made.

    readers: (reader, early) pairs; an early reader's events (a socket's connect or
    bind) only read the process ahead of its flow event. A subclass that reads its
    source itself passes none and overrides _select_loop. accept_pid: whether a pid's
    events belong to the watched network namespace (for sources that cannot tell)."""

    def __init__(
        self,
        readers: Sequence[tuple[EventReader, bool]],
        read_process: Callable[[int], ProcessInfo | None],
        accept_pid: Callable[[int], bool] = lambda _pid: True,
    ) -> None:
        self._read_process = read_process
        self._accept_pid = accept_pid
        # Details read at connect()/bind() time, while the process is surely alive.
        self._early: dict[int, tuple[float, ProcessInfo]] = {}
        self._pid_checks: dict[int, tuple[float, bool]] = {}
        self._pending: collections.deque[ProcessStamp] = collections.deque(maxlen=MAX_PENDING)
        # A socket pair, not a pipe: select() on Windows waits on sockets only.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._stop = threading.Event()
        handled: list[tuple[EventReader, Handler]] = [
            (reader, self._on_socket if early else self._on_flow)
            for reader, early in sorted(readers, key=lambda pair: not pair[1])  # early first
        ]
        if all(reader.fileno() >= 0 for reader, _handle in handled):
            loops = [functools.partial(self._select_loop, handled)]  # one thread for all
        else:
            loops = [functools.partial(self._blocking_loop, *pair) for pair in handled]
        self._threads = [threading.Thread(target=loop, daemon=True, name="netwarden-flow-events")
                         for loop in loops]  # fmt: skip

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _select_loop(self, readers: list[tuple[EventReader, Handler]]) -> None:
        """Wait until any reader has events, then read all of them (early ones first:
        they read a process earliest)."""
        fds = [reader.fileno() for reader, _handle in readers]
        last_wake = 0.0
        while not self._stop.is_set():
            try:
                if not select.select(fds, [], [], 0.2)[0]:
                    continue
                now = time.monotonic()
                if now - last_wake < BUSY_WAKES:
                    # Events keep coming: let a few gather rather than wake per event.
                    # Short enough that a process living milliseconds is still read.
                    time.sleep(GATHER_SECONDS)
                last_wake = now
                for reader, handle in readers:
                    while (address := reader.read()) is not None:
                        handle(address)
            except OSError as exc:
                self._stopped(exc)
                return

    def _blocking_loop(self, reader: EventReader, handle: Handler) -> None:
        while not self._stop.is_set():
            try:
                address = reader.read()
            except OSError as exc:
                self._stopped(exc)
                return
            if address is not None:
                handle(address)

    def _stopped(self, exc: OSError) -> None:
        if not self._stop.is_set():
            log.warning("kernel flow events stopped: %s", exc)

    def _on_socket(self, address: FlowAddress) -> None:
        pid, now = address.pid, time.monotonic()
        if pid == 0 or self.known_process(pid, now) is not None:
            return
        info = self._read_process(pid)
        if info is not None:
            self.remember(info, now)

    def _accepted(self, pid: int) -> bool:
        now = time.monotonic()
        cached = self._pid_checks.get(pid)
        if cached is not None and now - cached[0] < EARLY_TTL:
            return cached[1]
        if len(self._pid_checks) > 4096:
            self._pid_checks.clear()
        accepted = self._accept_pid(pid)
        self._pid_checks[pid] = (now, accepted)
        return accepted

    def known_process(self, pid: int, now: float) -> ProcessInfo | None:
        """What was read of pid within the last EARLY_TTL seconds (monotonic now)."""
        early = self._early.get(pid)
        if early is not None and now - early[0] < EARLY_TTL:
            return early[1]
        return None

    def remember(self, info: ProcessInfo, now: float) -> None:
        if len(self._early) > 4096:
            self._early = {p: v for p, v in self._early.items() if now - v[0] < EARLY_TTL}
        self._early[info.pid] = (now, info)

    def _on_flow(self, address: FlowAddress) -> None:
        stamp = self.stamp(address)
        if stamp is not None:
            self.hand_over([stamp])

    def hand_over(self, stamps: list[ProcessStamp], *, wake: bool = True) -> None:
        """wake: tell the monitor (not needed when it is the one asking)."""
        wake = wake and not self._pending
        self._pending.extend(stamps)
        if wake:  # the reader drains everything, so one wake-up per batch will do
            with contextlib.suppress(BlockingIOError):
                self._wake_writer.send(b"x")

    def stamp(self, address: FlowAddress) -> ProcessStamp | None:
        event = address.event
        if event not in (FLOW_ESTABLISHED, FLOW_DELETED) or address.protocol not in (6, 17):
            return None
        pid = address.pid
        if pid == 0 or not self._accepted(pid):  # pid 0: raised in kernel context
            return None
        info = None
        now = time.monotonic()
        if event == FLOW_ESTABLISHED:
            # A process making many connections is read once a second, not per flow.
            info = self.known_process(pid, now) or self._read_process(pid)
            if info is not None and info.exe:
                self.remember(info, now)
        early = self._early.get(pid)
        if early is not None and (info is None or not info.exe):
            info = early[1]
        return ProcessStamp(
            transport=Transport.from_number(address.protocol),
            local=Endpoint(address.local, address.local_port),
            remote=Endpoint(address.remote, address.remote_port),
            process=info if info is not None else ProcessInfo(pid=pid, name=address.name),
            timestamp=time.time(),
            closed=event == FLOW_DELETED,
        )

    def fileno(self) -> int:
        return self._wake_reader.fileno()

    def drain(self) -> list[ProcessStamp]:
        with contextlib.suppress(BlockingIOError):
            while self._wake_reader.recv(65536):
                pass
        stamps = []
        while self._pending:
            stamps.append(self._pending.popleft())
        return stamps

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=2)
        self._close_sources()
        self._wake_reader.close()
        self._wake_writer.close()

    def _close_sources(self) -> None:
        """Closes what the readers read from (after the threads stopped)."""

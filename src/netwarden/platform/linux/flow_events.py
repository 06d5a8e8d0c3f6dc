"""Flow stamps from netwarden's own BPF programs (the C module's FlowEvents, see
_flowevents.c): the first send or receive of a process on a TCP or UDP socket of
the watched namespace names it (a listener or a silent connection when it is made),
filtered by namespace in the kernel. Reading them costs the monitor a few microseconds
an event, where pydivert's libebpfdivert costs ~6% of a core per layer at 1k
connections a second."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable

from netwarden.model import Endpoint, ProcessInfo, Transport
from netwarden.platform.base import ProcessStamp
from netwarden.platform.flow_stamps import EventReader, FlowStampThread, Handler
from netwarden.platform.linux import netns as netns_api
from netwarden.platform.linux.procfs import bpf_pids_are_ours

try:
    from netwarden.platform.linux import _native
except ImportError:  # built without a compiler
    _native = None  # type: ignore[assignment]

PROBE_SECONDS = 1.0

Event = tuple[int, int, int, str, str, int, str, int]


class FlowEventsUnavailable(RuntimeError):
    pass


_TRANSPORTS = {socket.IPPROTO_TCP: Transport.TCP, socket.IPPROTO_UDP: Transport.UDP}


class KernelFlowStamps(FlowStampThread):
    def __init__(
        self, read_process: Callable[[int], ProcessInfo | None], netns: str | None
    ) -> None:
        if _native is None or not hasattr(_native, "FlowEvents"):
            raise FlowEventsUnavailable("netwarden's C module is not built")
        if not bpf_pids_are_ours():
            # The programs see pids as the initial pid namespace numbers them.
            raise FlowEventsUnavailable("netwarden runs in a pid namespace of its own")
        self._events = _native.FlowEvents(netns_api.inode_of(netns))
        try:
            waiting = _probe(self._events, netns)
        except BaseException:
            self._events.close()
            raise
        self._waiting = waiting
        self._read_process = read_process
        self._lock = threading.Lock()  # one reader of the ring at a time
        super().__init__([], read_process)  # the ring is read by _select_loop below
        self.start()

    def _select_loop(self, _readers: list[tuple[EventReader, Handler]]) -> None:
        """Wakes when the programs see a process not read in the last second (see
        _flowevents.c): it is read at once, before it can exit. Events of processes
        already known wait in the ring for drain(), which the monitor calls anyway:
        under churn a wake-up per event would cost more than the events."""
        with self._lock:
            self._stamp_all(self._waiting, wake=True)
        fd = self._events.fileno()
        while not self._stop.is_set():
            try:
                select.select([fd], [], [], 0.2)
                with self._lock:
                    self._stamp_all(self._events.read(), wake=True)
            except (OSError, ValueError) as exc:  # ValueError: closed under us
                self._stopped(OSError(str(exc)))
                return

    def drain(self) -> list[ProcessStamp]:
        with self._lock:
            self._stamp_all(self._events.read(), wake=False)
        return super().drain()

    def _stamp_all(self, events: list[Event], *, wake: bool) -> None:
        """Stamps straight from the kernel's events (which kept other namespaces out,
        and named each process at its first byte)."""
        if not events:
            return
        mono, now = time.monotonic(), time.time()
        read: list[int] = []
        stamps = []
        for protocol, pid, _uid, name, local, local_port, remote, remote_port in events:
            if local_port == 0:  # a connect refused before it had a port: no flow
                continue
            info = self.known_process(pid, mono)
            if info is None:
                info = self._read_process(pid)
                if info is None:  # gone already: what the kernel saw must do
                    info = ProcessInfo(pid=pid, name=name)
                elif info.exe:
                    self.remember(info, mono)
                    read.append(pid)
            stamps.append(ProcessStamp(
                _TRANSPORTS[protocol], Endpoint(local, local_port),
                Endpoint(remote, remote_port), info, now,
            ))  # fmt: skip
        if read:
            self._events.know(read)
        self.hand_over(stamps, wake=wake)

    def _close_sources(self) -> None:
        self._events.close()


def _probe(events: _native.FlowEvents, netns: str | None) -> list[Event]:
    """Proves that the programs read the kernel right: a UDP socket of this process in
    the namespace sends nothing (to port 0: refused before any packet) and must be
    reported with this pid and its port. Returns the other events read meanwhile."""
    with netns_api.entered(netns):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with probe:
        with contextlib.suppress(OSError):  # refused, as it should be; it has a port now
            probe.sendto(b"", ("0.0.0.0", 0))
        port = probe.getsockname()[1]
        others: list[Event] = []
        deadline = time.monotonic() + PROBE_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            select.select([events.fileno()], [], [], left)
            for event in events.read():
                if event[0] == socket.IPPROTO_UDP and event[5] == port:
                    if event[1] != os.getpid():
                        raise FlowEventsUnavailable(f"the probe was named pid {event[1]}")
                    return others
                others.append(event)
    raise FlowEventsUnavailable("the BPF programs did not report the probe socket")

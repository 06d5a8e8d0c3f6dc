"""Flow stamps from netwarden's own BPF programs (the C module's FlowEvents, see
_flowevents.c): the first send or receive of a process on a TCP or UDP socket of
the watched namespace names it, filtered by namespace in the kernel. Reading them
costs the monitor a few microseconds an event, where pydivert's libebpfdivert
costs ~6% of a core per layer at 1k connections a second."""

from __future__ import annotations

import collections
import contextlib
import os
import select
import socket
import time
from collections.abc import Callable

from netwarden.model import ProcessInfo
from netwarden.platform.flow_stamps import FLOW_ESTABLISHED, FlowAddress, FlowStampThread
from netwarden.platform.linux import netns as netns_api

try:
    from netwarden.platform.linux import _native
except ImportError:  # built without a compiler
    _native = None  # type: ignore[assignment]

INITIAL_PID_NAMESPACE = 0xEFFFFFFC  # the inode the kernel gives the initial pid namespace
PROBE_SECONDS = 1.0

Event = tuple[int, int, int, str, str, int, str, int]


class FlowEventsUnavailable(RuntimeError):
    pass


class _Reader:
    def __init__(self, events: _native.FlowEvents, waiting: list[Event]) -> None:
        self._events = events
        self._batch = collections.deque(waiting)

    def fileno(self) -> int:
        return self._events.fileno()

    def read(self) -> FlowAddress | None:
        if not self._batch:
            self._batch.extend(self._events.read())
            if not self._batch:
                return None
        protocol, pid, _uid, name, local, local_port, remote, remote_port = self._batch.popleft()
        return FlowAddress(FLOW_ESTABLISHED, pid, local, remote, local_port, remote_port,
                           protocol, name)  # fmt: skip


class KernelFlowStamps(FlowStampThread):
    def __init__(
        self, read_process: Callable[[int], ProcessInfo | None], netns: str | None
    ) -> None:
        if _native is None or not hasattr(_native, "FlowEvents"):
            raise FlowEventsUnavailable("netwarden's C module is not built")
        if os.stat("/proc/self/ns/pid").st_ino != INITIAL_PID_NAMESPACE:
            # The programs see pids as the initial pid namespace numbers them.
            raise FlowEventsUnavailable("netwarden runs in a pid namespace of its own")
        self._events = _native.FlowEvents(netns_api.inode_of(netns))
        try:
            waiting = _probe(self._events, netns)
        except BaseException:
            self._events.close()
            raise
        super().__init__([(_Reader(self._events, waiting), False)], read_process)
        self.start()

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

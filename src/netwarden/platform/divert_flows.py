"""Flow-established/deleted events with process ids from the WinDivert FLOW layer.

pydivert offers the same API on Windows (WinDivert) and Linux (eBPFDivert), so
both backends use this adapter. The process is read the moment its event
arrives, which is what attributes a process that connects, sends and exits
within milliseconds.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from netwarden.model import Endpoint, ProcessInfo, Transport
from netwarden.platform.base import ProcessStamp

log = logging.getLogger(__name__)

FLOW_ESTABLISHED = 1
FLOW_DELETED = 2
MAX_PENDING = 1 << 18
EARLY_TTL = 1.0


def windivert_address(words: Any) -> str:
    """WinDivert's UINT32[4] address (least significant word first) as text."""
    value = 0
    for index in range(4):
        value |= int(words[index]) << (32 * index)
    if value >> 32 == 0xFFFF:
        return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))
    return str(ipaddress.IPv6Address(value))


class DivertFlowStamps:
    """Runs a FLOW-layer sniffer in a thread; :meth:`drain` hands over what it saw."""

    def __init__(
        self,
        read_process: Callable[[int], ProcessInfo | None],
        accept_pid: Callable[[int], bool] = lambda _pid: True,
    ) -> None:
        import pydivert

        self._read_process = read_process
        self._accept_pid = accept_pid
        flags = pydivert.Flag.SNIFF | pydivert.Flag.RECV_ONLY
        # Only what is used: TCP flow ends come from socket destroy events instead.
        self._flows = pydivert.Divert(
            "event == ESTABLISHED or udp", layer=pydivert.Layer.FLOW, flags=flags
        )
        self._sockets = pydivert.Divert(
            "event == CONNECT or event == BIND", layer=pydivert.Layer.SOCKET, flags=flags
        )
        self._flows.open()
        try:
            self._sockets.open()
        except Exception:
            self._flows.close()
            raise
        # Details read at connect()/bind() time, while the process is surely alive.
        self._early: dict[int, tuple[float, ProcessInfo]] = {}
        self._pid_checks: dict[int, tuple[float, bool]] = {}
        self._pending: collections.deque[ProcessStamp] = collections.deque(maxlen=MAX_PENDING)
        # A socket pair, not a pipe: select() on Windows waits on sockets only.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(self._flows, self._on_flow), daemon=True,
                             name="netwarden-flow-events"),
            threading.Thread(target=self._loop, args=(self._sockets, self._on_socket),
                             daemon=True, name="netwarden-socket-events"),
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def _loop(self, divert: Any, handle: Callable[[Any], None]) -> None:
        while not self._stop.is_set():
            try:
                packet = divert.recv(timeout=0.2)
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.warning("kernel flow events stopped: %s", exc)
                return
            handle(packet.wd_addr)

    def _on_socket(self, address: Any) -> None:
        pid = int(address.u.Socket.ProcessId)
        now = time.monotonic()
        cached = self._early.get(pid)
        if pid == 0 or (cached is not None and now - cached[0] < EARLY_TTL):
            return
        if len(self._early) > 4096:
            self._early = {p: v for p, v in self._early.items() if now - v[0] < EARLY_TTL}
        info = self._read_process(pid)
        if info is not None:
            self._early[pid] = (now, info)

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

    def _on_flow(self, address: Any) -> None:
        stamp = self._stamp(address)
        if stamp is not None:
            wake = not self._pending
            self._pending.append(stamp)
            if wake:  # the reader drains everything, so one wake-up per batch will do
                with contextlib.suppress(BlockingIOError):
                    self._wake_writer.send(b"x")

    def _stamp(self, address: Any) -> ProcessStamp | None:
        event = int(address.Event)
        flow = address.u.Flow
        if event not in (FLOW_ESTABLISHED, FLOW_DELETED) or flow.Protocol not in (6, 17):
            return None
        pid = int(flow.ProcessId)
        if pid == 0 or not self._accepted(pid):  # pid 0: raised in kernel context
            return None
        info = None
        early = self._early.get(pid)
        if event == FLOW_ESTABLISHED:
            # A process making many connections is read once a second, not per flow.
            fresh = early is not None and time.monotonic() - early[0] < EARLY_TTL
            info = early[1] if fresh and early is not None else self._read_process(pid)
            if info is not None and info.exe:
                self._early[pid] = (time.monotonic(), info)
        if early is not None and (info is None or not info.exe):
            info = early[1]
        return ProcessStamp(
            transport=Transport.from_number(int(flow.Protocol)),
            local=Endpoint(windivert_address(flow.LocalAddr), int(flow.LocalPort)),
            remote=Endpoint(windivert_address(flow.RemoteAddr), int(flow.RemotePort)),
            process=info if info is not None else ProcessInfo(pid=pid),
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
            thread.join(timeout=2)
        self._flows.close()
        self._sockets.close()
        self._wake_reader.close()
        self._wake_writer.close()

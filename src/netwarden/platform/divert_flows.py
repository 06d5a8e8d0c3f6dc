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
import os
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
        self._divert = pydivert.Divert(
            "true", layer=pydivert.Layer.FLOW, flags=pydivert.Flag.SNIFF | pydivert.Flag.RECV_ONLY
        )
        self._divert.open()
        self._pending: collections.deque[ProcessStamp] = collections.deque(maxlen=MAX_PENDING)
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netwarden-flow-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self._divert.recv(timeout=0.2)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("flow events stopped: %s", exc)
                return
            stamp = self._stamp(packet.wd_addr)
            if stamp is not None:
                self._pending.append(stamp)
                with contextlib.suppress(BlockingIOError):
                    os.write(self._write_fd, b"x")

    def _stamp(self, address: Any) -> ProcessStamp | None:
        event = int(address.Event)
        flow = address.u.Flow
        if event not in (FLOW_ESTABLISHED, FLOW_DELETED) or flow.Protocol not in (6, 17):
            return None
        pid = int(flow.ProcessId)
        if pid == 0 or not self._accept_pid(pid):  # pid 0: raised in kernel context
            return None
        info = self._read_process(pid) if event == FLOW_ESTABLISHED else None
        return ProcessStamp(
            transport=Transport.from_number(int(flow.Protocol)),
            local=Endpoint(windivert_address(flow.LocalAddr), int(flow.LocalPort)),
            remote=Endpoint(windivert_address(flow.RemoteAddr), int(flow.RemotePort)),
            process=info if info is not None else ProcessInfo(pid=pid),
            timestamp=time.time(),
            closed=event == FLOW_DELETED,
        )

    def fileno(self) -> int:
        return self._read_fd

    def drain(self) -> list[ProcessStamp]:
        try:
            while os.read(self._read_fd, 65536):
                pass
        except BlockingIOError:
            pass
        stamps = []
        while self._pending:
            stamps.append(self._pending.popleft())
        return stamps

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._divert.close()
        os.close(self._read_fd)
        os.close(self._write_fd)

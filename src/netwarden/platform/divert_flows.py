"""Flow-established/deleted events with process ids from the WinDivert FLOW layer.

pydivert offers the same API on Windows (WinDivert) and Linux (eBPFDivert), so
both backends use this adapter. The process is read the moment its event
arrives, which is what attributes a process that connects, sends and exits
within milliseconds.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import functools
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

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
    """The fields of a FLOW or SOCKET layer event that are used."""

    event: int
    pid: int
    local: str
    remote: str
    local_port: int
    remote_port: int
    protocol: int


# WINDIVERT_ADDRESS: event in bits 8-15 of the word at 8; the Flow/Socket union at 16
# (endpoint ids, then process id at 32, addresses at 36 and 52, ports, protocol).
_ADDRESS = struct.Struct("<8xI20xI16s16sHHB")
ADDRESS_SIZE = 80
_V4_MAPPED = struct.pack("<3I", 0xFFFF, 0, 0)  # words 1-3 of an IPv4 address


def decode_address(raw: bytes) -> FlowAddress:
    flags, pid, local, remote, local_port, remote_port, protocol = _ADDRESS.unpack_from(raw)
    return FlowAddress((flags >> 8) & 0xFF, pid, windivert_address(local),
                       windivert_address(remote), local_port, remote_port, protocol)  # fmt: skip


def windivert_address(words: bytes) -> str:
    """WinDivert's UINT32[4] (least significant word first, little endian) as text."""
    if words[4:16] == _V4_MAPPED:
        return socket.inet_ntoa(words[3::-1])
    return socket.inet_ntop(socket.AF_INET6, words[::-1])


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
        readers: list[tuple[_Reader, Callable[[FlowAddress], None]]] = [
            (_reader(self._sockets), self._on_socket),
            (_reader(self._flows), self._on_flow),
        ]
        if all(reader.fileno() >= 0 for reader, _handle in readers):
            loops = [functools.partial(self._select_loop, readers)]  # one thread for both
        else:
            loops = [functools.partial(self._blocking_loop, *pair) for pair in readers]
        self._threads = [threading.Thread(target=loop, daemon=True, name="netwarden-flow-events")
                         for loop in loops]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def _select_loop(self, readers: list[tuple[_Reader, Callable[[FlowAddress], None]]]) -> None:
        """Wait until either layer has events, then read all of them (socket events
        first: they read a process earliest)."""
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

    def _blocking_loop(self, reader: _Reader, handle: Callable[[FlowAddress], None]) -> None:
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
        pid = address.pid
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

    def _on_flow(self, address: FlowAddress) -> None:
        stamp = self._stamp(address)
        if stamp is not None:
            wake = not self._pending
            self._pending.append(stamp)
            if wake:  # the reader drains everything, so one wake-up per batch will do
                with contextlib.suppress(BlockingIOError):
                    self._wake_writer.send(b"x")

    def _stamp(self, address: FlowAddress) -> ProcessStamp | None:
        event = address.event
        if event not in (FLOW_ESTABLISHED, FLOW_DELETED) or address.protocol not in (6, 17):
            return None
        pid = address.pid
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
            transport=Transport.from_number(address.protocol),
            local=Endpoint(address.local, address.local_port),
            remote=Endpoint(address.remote, address.remote_port),
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


class _Reader:
    """Events of one pydivert handle, without a Packet object per event (~25 us)."""

    def __init__(self, divert: Any) -> None:
        self.divert = divert

    def fileno(self) -> int:
        return -1  # no descriptor: poll the handle with a short timeout

    def read(self) -> FlowAddress | None:
        try:
            packet = self.divert.recv(timeout=0.2)
        except TimeoutError:
            return None
        return decode_address(bytes(packet.wd_addr))


class _EbpfReader(_Reader):
    """pydivert's Linux backend read straight from libebpfdivert: the handle's event
    descriptor says when to read, and one address structure is reused."""

    def __init__(self, divert: Any, impl: Any, lib: Any) -> None:
        from pydivert.windivert_dll.structs import WinDivertAddress

        super().__init__(divert)
        self._impl, self._lib = impl, lib
        self._address = WinDivertAddress()
        self._address_at = ctypes.addressof(self._address)
        self._buffer = (ctypes.c_char * 64)()
        self._length = ctypes.c_uint32(0)

    def fileno(self) -> int:
        return int(self._impl._event_fd)

    def read(self) -> FlowAddress | None:
        result = self._lib.ebpfdivert_recv(
            self._impl._require_handle(), self._buffer, 64, ctypes.byref(self._length),
            ctypes.byref(self._address), 0,
        )  # fmt: skip
        if result == -errno.EAGAIN:
            return None
        if result < 0:
            raise OSError(-result, f"flow events: {errno.errorcode.get(-result, -result)}")
        return decode_address(ctypes.string_at(self._address_at, ADDRESS_SIZE))


def _reader(divert: Any) -> _Reader:
    impl = getattr(divert, "_impl", None)
    try:
        from pydivert import ebpf

        lib = ebpf._lib()
    except (ImportError, AttributeError, OSError):
        return _Reader(divert)
    if isinstance(getattr(impl, "_event_fd", None), int) and hasattr(impl, "_require_handle"):
        return _EbpfReader(divert, impl, lib)
    return _Reader(divert)

"""Flow-established/deleted events with process ids from the WinDivert FLOW layer.

pydivert offers the same API on Windows (WinDivert) and Linux (eBPFDivert), so
both backends can use this adapter (Linux prefers its own BPF programs:
linux/flow_events.py). Its libebpfdivert costs ~6% of a core per layer at 1k
connections a second, whatever the filter lets through.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Callable
from typing import Any

from netwarden.model import ProcessInfo
from netwarden.platform.flow_stamps import FlowAddress, FlowStampThread

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


class DivertFlowStamps(FlowStampThread):
    """pydivert's FLOW layer (flow established, UDP flow deleted) and SOCKET layer
    (connect, bind: the process read early), read in a thread."""

    def __init__(
        self,
        read_process: Callable[[int], ProcessInfo | None],
        accept_pid: Callable[[int], bool] = lambda _pid: True,
    ) -> None:
        import pydivert

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
        readers = [(_reader(self._sockets), True), (_reader(self._flows), False)]
        super().__init__(readers, read_process, accept_pid)
        self.start()

    def _close_sources(self) -> None:
        self._flows.close()
        self._sockets.close()


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

"""What a callout is: an object with hooks at named layers, as a WFP callout driver
has classifyFn, notifyFn and flowDeleteFn.

    from netwarden.callout.api import Callout, Connection
    from netwarden.model.connect import BLOCK

    class NoTelnet(Callout):
        def classify(self, connection: Connection) -> Verdict | None:
            if connection.remote.port == 23:
                return BLOCK
            return None  # no opinion: the next callout, then the policy, decides

    callouts = [NoTelnet()]

A hook a callout does not define is not called; `layers` says which it has.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from netwarden.model import Attribution, Endpoint, Flow, ProcessInfo, Transport
from netwarden.model.connect import (
    ConnectDirection,
    ConnectRequest,
    FlowPacket,
    StreamData,
    Verdict,
)


class Layer(enum.StrEnum):
    CONNECT = "connect"  # a new connection, held at its first packet: classify()
    FLOW_ESTABLISHED = "flow_established"  # a flow was seen to start: flow_established()
    STREAM = "stream"  # data through netwarden's inspecting proxy, per direction: stream()
    FLOW_DELETED = "flow_deleted"  # a flow ended, with its final totals: flow_deleted()
    PACKET = "packet"  # every packet of flows asked for (opt-in): packet()


@dataclass(frozen=True, slots=True)
class Change:
    """What notify() hears: the policy in force changed (WFP's filter add/delete)."""

    what: str  # "policy applied", "policy removed"
    detail: str = ""


@dataclass(slots=True)
class Connection:
    """A new connection at the CONNECT layer, with what WFP's ALE layers offer:
    process, user, addresses, ports, protocol, direction, interface."""

    request: ConnectRequest
    process: ProcessInfo | None
    attribution: Attribution  # how the process was found, or why it is unknown
    interface: str = ""
    read_parent: Callable[[int], ProcessInfo | None] | None = field(default=None, repr=False)
    _parent: ProcessInfo | None = field(default=None, repr=False)
    _parent_read: bool = field(default=False, repr=False)

    @property
    def parent(self) -> ProcessInfo | None:
        """The parent of the process, read when first asked for."""
        if not self._parent_read and self.process is not None and self.read_parent is not None:
            self._parent = self.read_parent(self.process.pid)
            self._parent_read = True
        return self._parent

    @property
    def transport(self) -> Transport:
        return self.request.transport

    @property
    def direction(self) -> ConnectDirection:
        return self.request.direction

    @property
    def local(self) -> Endpoint:
        return self.request.local

    @property
    def remote(self) -> Endpoint:
        return self.request.remote

    @property
    def uid(self) -> int | None:
        if self.process is not None and self.process.uid is not None:
            return self.process.uid
        return self.request.uid

    @property
    def exe(self) -> str:
        return self.process.exe if self.process is not None else ""

    def exe_sha256(self) -> str:
        """SHA-256 of the process's executable ("" when unknown), cached per file."""
        return file_sha256(f"/proc/{self.process.pid}/exe") if self.process else ""

    def __str__(self) -> str:
        who = f"{self.process.name} (pid {self.process.pid})" if self.process else "unknown"
        return f"{self.request} by {who}"


_DIGESTS: dict[tuple[int, int, int, int], str] = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file, cached by device, inode, size and modification time."""
    try:
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            digest = _DIGESTS.get(key)
            if digest is None:
                digest = hashlib.file_digest(file, "sha256").hexdigest()
                if len(_DIGESTS) > 4096:
                    _DIGESTS.clear()
                _DIGESTS[key] = digest
            return digest
    except OSError:
        return ""


class Callout:
    """Subclass and define the hooks you need. `name` defaults to the class name;
    callouts with a higher `weight` are asked first."""

    name: str = ""
    weight: int = 0

    def classify(self, connection: Connection) -> Verdict | None:
        """CONNECT: PERMIT, BLOCK, redirect(...) or None/CONTINUE (no opinion)."""
        return None

    def flow_established(self, flow: Flow) -> None:
        """FLOW_ESTABLISHED: a flow started (process, addresses, how attributed)."""

    def flow_deleted(self, flow: Flow) -> None:
        """FLOW_DELETED: a flow ended; its byte totals are final."""

    def notify(self, change: Change) -> None:
        """The policy in force changed."""

    def watch_packets(self, connection: Connection) -> bool:
        """PACKET, opt-in: whether packet() should see every packet of this connection
        (asked as it starts; the others never reach Python after their first packet)."""
        return False

    def packet(self, packet: FlowPacket) -> Verdict | None:
        """PACKET: one packet of a watched connection; BLOCK drops it."""
        return None

    def stream(self, data: StreamData) -> Verdict | None:
        """STREAM: data through netwarden's inspecting proxy, per direction (decrypted
        when intercepted; HTTP bodies de-chunked); BLOCK resets the connection."""
        return None


HOOKS = {
    Layer.CONNECT: "classify",
    Layer.FLOW_ESTABLISHED: "flow_established",
    Layer.FLOW_DELETED: "flow_deleted",
    Layer.PACKET: "packet",
    Layer.STREAM: "stream",
}


def defines(callout: object, hook: str) -> bool:
    """Whether the callout has this hook of its own (not Callout's do-nothing one)."""
    method = getattr(type(callout), hook, None)
    return method is not None and method is not getattr(Callout, hook, None)


def layers_of(callout: object) -> list[Layer]:
    """The layers whose hook the callout defines."""
    return [layer for layer, hook in HOOKS.items() if defines(callout, hook)]


def name_of(callout: object) -> str:
    return str(getattr(callout, "name", "") or type(callout).__name__)

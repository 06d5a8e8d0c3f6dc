"""Deciding which process a flow belongs to, and saying why when nobody is found."""

from __future__ import annotations

from dataclasses import dataclass, field

from netwarden.model import Attribution, AttributionMethod, Endpoint, ProcessInfo, Transport
from netwarden.model.observations import ProcessResolver, ProcessStamp

StampKey = tuple[Transport, Endpoint, Endpoint]
STAMP_TTL = 600.0


WILDCARDS = ("0.0.0.0", "::")


def is_socket_wide(stamp: ProcessStamp) -> bool:
    """A stamp of an unconnected UDP socket: its local side only, for every peer."""
    return stamp.transport is Transport.UDP and stamp.remote.port == 0


def serves(stamp: ProcessStamp, local: Endpoint) -> bool:
    """Whether the socket-wide stamp's socket is the local end of a flow from local."""
    return stamp.local.port == local.port and stamp.local.address in (local.address, *WILDCARDS)


@dataclass
class StampBook:
    """Processes named by flow events, kept until their flow is closed or they expire."""

    _stamps: dict[StampKey, ProcessStamp] = field(default_factory=dict)
    # Stamps of unconnected UDP sockets by local port.
    _udp_sockets: dict[int, list[ProcessStamp]] = field(default_factory=dict)

    def add(self, stamp: ProcessStamp) -> None:
        if stamp.closed:
            return
        if is_socket_wide(stamp):
            port = stamp.local.port
            same = [s for s in self._udp_sockets.get(port, []) if s.local != stamp.local]
            self._udp_sockets[port] = [*same, stamp]
            return
        self._stamps[(stamp.transport, stamp.local, stamp.remote)] = stamp

    def get(self, key: StampKey) -> ProcessStamp | None:
        found = self._stamps.get(key)
        if found is None and key[0] is Transport.UDP and self._udp_sockets:
            return next((s for s in self._udp_sockets.get(key[1].port, ()) if serves(s, key[1])),
                        None)  # fmt: skip
        return found

    def has(self, transport: Transport) -> bool:
        if transport is Transport.UDP and self._udp_sockets:
            return True
        return any(key[0] is transport for key in self._stamps)

    def forget(self, key: StampKey) -> None:
        self._stamps.pop(key, None)

    def expire(self, now: float) -> None:
        stale = [k for k, s in self._stamps.items() if now - s.timestamp > STAMP_TTL]
        for key in stale:
            del self._stamps[key]
        self._udp_sockets = {
            port: fresh
            for port, stamps in self._udp_sockets.items()
            if (fresh := [s for s in stamps if now - s.timestamp <= STAMP_TTL])
        }

    def __len__(self) -> int:
        return len(self._stamps) + sum(len(s) for s in self._udp_sockets.values())


def by_stamp(
    stamp: ProcessStamp, known: ProcessInfo | None = None
) -> tuple[ProcessInfo, Attribution]:
    """The stamp's process; details read earlier for the same pid fill what it lacks
    (a process that exits right after connecting leaves little to read)."""
    process = stamp.process
    if known is not None and known.pid == process.pid and len(known.exe) > len(process.exe):
        process = known
    if process.exe:
        return process, Attribution(AttributionMethod.FLOW_EVENT)
    if process.name:
        return process, Attribution(
            AttributionMethod.FLOW_EVENT,
            "the process exited before its executable path could be read",
        )
    return stamp.process, Attribution(
        AttributionMethod.FLOW_EVENT,
        "the flow event named the pid, but the process exited before its details were read",
    )


def by_owner(
    resolver: ProcessResolver, pid: int | None, inode: int, is_root: bool
) -> tuple[ProcessInfo | None, Attribution]:
    if pid is not None:
        info = resolver.info(pid)
        if info is not None:
            return info, Attribution(AttributionMethod.SOCKET_OWNER)
        return ProcessInfo(pid=pid), Attribution(
            AttributionMethod.SOCKET_OWNER, "the owning process exited before it could be read"
        )
    if inode == 0:
        return None, Attribution.unknown(
            "the socket has no file (closed, or owned by the kernel), and no flow event named it"
        )
    if not is_root:
        return None, Attribution.unknown(
            "no process of this user holds the socket; run as root to see other users' processes"
        )
    if resolver.denied:
        return None, Attribution.unknown(
            f"not found among readable processes; {resolver.denied} process(es) refused "
            "access to their open files"
        )
    return None, Attribution.unknown(
        "no process was found holding the socket (it may have closed meanwhile), and no "
        "flow event named one"
    )

"""Deciding which process a flow belongs to, and saying why when nobody is found."""

from __future__ import annotations

from dataclasses import dataclass, field

from netwarden.model import Attribution, AttributionMethod, Endpoint, ProcessInfo, Transport
from netwarden.platform.base import ProcessResolver, ProcessStamp

StampKey = tuple[Transport, Endpoint, Endpoint]
STAMP_TTL = 600.0


@dataclass
class StampBook:
    """Processes named by flow events, kept until their flow is closed or they expire."""

    _stamps: dict[StampKey, ProcessStamp] = field(default_factory=dict)

    def add(self, stamp: ProcessStamp) -> None:
        if not stamp.closed:
            self._stamps[(stamp.transport, stamp.local, stamp.remote)] = stamp

    def get(self, key: StampKey) -> ProcessStamp | None:
        return self._stamps.get(key)

    def has(self, transport: Transport) -> bool:
        return any(key[0] is transport for key in self._stamps)

    def forget(self, key: StampKey) -> None:
        self._stamps.pop(key, None)

    def expire(self, now: float) -> None:
        stale = [k for k, s in self._stamps.items() if now - s.timestamp > STAMP_TTL]
        for key in stale:
            del self._stamps[key]

    def __len__(self) -> int:
        return len(self._stamps)


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
        "no process holds the socket any more and no flow event named one"
    )

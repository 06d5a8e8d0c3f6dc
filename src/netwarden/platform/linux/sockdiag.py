"""TCP and UDP sockets from NETLINK_SOCK_DIAG: one raw dump, destroy broadcasts."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

from netwarden.jsontext import dumps
from netwarden.model import Endpoint, FlowKey, Transport
from netwarden.platform.base import (
    NativeTcpRows,
    RowFilter,
    RowTemplate,
    SocketChanges,
    SocketRecord,
)
from netwarden.platform.linux import netlink
from netwarden.platform.linux.other_sockets import OtherSocketTable

try:
    from netwarden.platform.linux import _native
except ImportError:  # not compiled: snapshot() does the same, slower
    _native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# One TCP socket as the native module gives it: family, state, local address and port,
# remote address and port, uid, inode, cookie, cgroup id, bytes sent, bytes received.
NativeFields = tuple[int, int, str, int, str, int, int, int, int, int, int, int]
TRUST_ATTEMPTS = 5  # readings of the tcp iterator compared with dumps before giving up

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_INFO = 2
INET_DIAG_PROTOCOL = 10
INET_DIAG_CGROUP_ID = 21
# Destroy broadcast groups: SKNLGRP_INET_TCP_DESTROY .. SKNLGRP_INET6_UDP_DESTROY.
DESTROY_GROUPS = (1, 2, 3, 4)

TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
# TIME_WAIT and NEW_SYN_RECV are kernel mini-sockets with no owner and no counters.
ALL_BUT_MINISOCKS = 0xFFFFFFFF & ~(1 << 6) & ~(1 << 12)
# Sockets bound to a port but neither listening nor connecting (kernel 6.5+ dumps them,
# without tcp_info, in state CLOSE), which the tcp iterator does not walk.
BOUND_INACTIVE = 1 << 13
BOUND_SECONDS = 5.0
TCP_CLOSE = 7

_REQUEST = struct.Struct("=BBBxI48s")
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")
_TCP_INFO_BYTES = struct.Struct("=QQ")
_TCP_INFO_BYTES_OFFSET = 120  # tcpi_bytes_acked, then tcpi_bytes_received
_TCP_INFO_SENT_OFFSET = 200  # tcpi_bytes_sent: payload only, retransmissions included
_TCP_INFO_SENT = struct.Struct("=QQ")  # tcpi_bytes_sent, tcpi_bytes_retrans
# States in which the peer's FIN has been received (it counts one in bytes_received).
_PEER_FIN_STATES = frozenset({8, 9, 11})
_U64 = struct.Struct("=Q")
_ATTR = struct.Struct("=HH")
_COOKIE = slice(44, 52)  # idiag_cookie inside inet_diag_msg


def request(family: int, transport: Transport, states: int = ALL_BUT_MINISOCKS) -> bytes:
    ext = 1 << (INET_DIAG_INFO - 1)
    payload = _REQUEST.pack(family, transport.number, ext, states, b"")
    return netlink.pack_message(
        SOCK_DIAG_BY_FAMILY, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, payload
    )


_ADDRESSES: dict[tuple[int, bytes], str] = {}


def _address(family: int, raw: bytes) -> str:
    """Text form of an address, cached: the same few addresses recur in every dump."""
    text = _ADDRESSES.get((family, raw))
    if text is not None:
        return text
    if family == socket.AF_INET:
        text = socket.inet_ntop(socket.AF_INET, raw[:4])
    else:
        text = socket.inet_ntop(socket.AF_INET6, raw)
        if text.startswith("::ffff:") and "." in text:
            text = text[7:]
    if len(_ADDRESSES) > 65536:
        _ADDRESSES.clear()
    _ADDRESSES[(family, raw)] = text
    return text


def _tcp_payload_bytes(info: memoryview, state: int, destroyed: bool) -> tuple[int, int]:
    """Payload bytes each way from tcp_info, without the SYN and FIN sequence numbers.

    Sent: bytes_sent less bytes_retrans, the payload transmitted once, acknowledged or
    not (data of a connection reset before its acknowledgment counts). Kernels before
    4.19 lack them: bytes_acked (which counts our SYN and FIN) then, to within two
    bytes. bytes_received counts the peer's FIN; a destroyed socket is taken to have
    closed gracefully.
    """
    acked, received = _TCP_INFO_BYTES.unpack_from(info, _TCP_INFO_BYTES_OFFSET)
    sent = acked
    if len(info) >= _TCP_INFO_SENT_OFFSET + _TCP_INFO_SENT.size:
        transmitted, retransmitted = _TCP_INFO_SENT.unpack_from(info, _TCP_INFO_SENT_OFFSET)
        sent = transmitted - retransmitted
    if received and state in _PEER_FIN_STATES:
        received -= 1
    return sent, received


def _find_attribute(payload: memoryview, kind: int) -> int:
    offset, end = _MSG.size, len(payload)
    while offset + 4 <= end:
        length, found = _ATTR.unpack_from(payload, offset)
        if length < 4:
            break
        if found & netlink.NLA_TYPE_MASK == kind:
            return offset
        offset += (length + 3) & ~3
    return -1


def parse(
    payload: memoryview, transport: Transport | None = Transport.TCP, *, destroyed: bool = False
) -> SocketRecord | None:
    """An inet_diag_msg with its attributes, as a record of the given transport (None:
    as the message's protocol attribute says, which destroy broadcasts carry).

    None for a family we do not handle, and for TCP mini-sockets (time-wait, reported
    with their sub-state and without tcp_info) in dumps. A bound but inactive socket
    (state CLOSE) has no tcp_info either: its counters are 0.
    """
    end = len(payload)
    if end < _MSG.size:
        return None
    (family, state, _timer, _retrans, sport, dport, src, dst, _if, cookie, _expires,
     _rq, _wq, uid, inode) = _MSG.unpack_from(payload)  # fmt: skip
    if family != socket.AF_INET and family != socket.AF_INET6:  # noqa: PLR1714
        return None
    info = cgroup = None
    protocol = 0
    offset = _MSG.size
    while offset + 4 <= end:
        length, kind = _ATTR.unpack_from(payload, offset)
        if length < 4:
            break
        kind &= netlink.NLA_TYPE_MASK
        if kind == INET_DIAG_INFO:
            info = payload[offset + 4 : offset + length]
        elif kind == INET_DIAG_CGROUP_ID and length >= 12:
            cgroup = _U64.unpack_from(payload, offset + 4)[0]
        elif kind == INET_DIAG_PROTOCOL and length >= 5:
            protocol = payload[offset + 4]
        offset += (length + 3) & ~3
    if transport is None:
        transport = Transport.UDP if protocol == 17 else Transport.TCP
    sent = received = 0
    if transport is Transport.TCP:
        if info is None and not destroyed and state != TCP_CLOSE:
            return None  # a mini-socket (time-wait reports its sub-state, FIN_WAIT2 too)
        if state == TCP_CLOSE and not destroyed and dport == b"\0\0" and any(dst):
            return None  # torn down after a reset: its peer's port is 0 already
        if info is not None and len(info) >= _TCP_INFO_BYTES_OFFSET + _TCP_INFO_BYTES.size:
            sent, received = _tcp_payload_bytes(info, state, destroyed)
    state_name = _state_name(transport, state)
    return SocketRecord(
        transport,
        Endpoint(_address(family, src), int.from_bytes(sport, "big")),
        Endpoint(_address(family, dst), int.from_bytes(dport, "big")),
        state_name,
        inode,
        uid,
        int.from_bytes(cookie, "little"),
        cgroup or 0,
        sent,
        received,
        destroyed,
    )


class SockDiagTable:
    """Dumps every TCP and UDP socket, IPv4 and IPv6, of one namespace."""

    def __init__(self) -> None:
        self._sock = netlink.open_socket(NETLINK_SOCK_DIAG)
        self._requests = [
            (transport, request(family, transport))
            for transport in (Transport.TCP, Transport.UDP)
            for family in (socket.AF_INET, socket.AF_INET6)
        ]
        self._bound_requests = [
            (Transport.TCP, request(family, Transport.TCP, BOUND_INACTIVE))
            for family in (socket.AF_INET, socket.AF_INET6)
        ]
        self._bound: dict[FlowKey, SocketRecord] = {}  # bound-inactive, last looked at
        self._next_bound = 0.0

        # The namespace, for the native reader of changes (made on first use).
        try:
            self._netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no /proc/thread-self: no changes, full dumps
            self._netns = -1
        self._tracker: _native.TcpTracker | None = None
        self._tracker_tried = False
        self._tracker_trusted = False  # until it agreed once with a dump
        # Last dump's record per socket cookie, with the bytes that would change it.
        # By request: each socket's cookie -> (what the dump said, the record made of it).
        self._previous: dict[bytes, dict[bytes, tuple[bytes, SocketRecord]]] = {}
        self._info_offset = -1  # where tcp_info sat in the last TCP message
        # Raw, ping and packet sockets, where netwarden's BPF programs count them.
        self.others: OtherSocketTable | None = None

    def snapshot(self) -> list[SocketRecord]:
        """Every socket; a socket whose state and counters did not move since the last
        dump is handed back as the very same record object, unparsed."""
        return self._dump(self._requests) + self._other_records()

    def _udp_records(self) -> list[SocketRecord]:
        """The UDP sockets, dumped as snapshot() dumps (TCP ones come natively then),
        and the raw and packet ones."""
        return self._dump([r for r in self._requests if r[0] is Transport.UDP]) + (
            self._other_records()
        )

    def _other_records(self) -> list[SocketRecord]:
        return self.others.records() if self.others is not None else []

    def _dump(self, requests: list[tuple[Transport, bytes]]) -> list[SocketRecord]:
        """The sockets of these requests; each request keeps its own cache of what it
        read last, so dumps of different requests do not undo each other's."""
        records: list[SocketRecord] = []
        for transport, req in requests:
            tcp = transport is Transport.TCP
            previous, current = self._previous.get(req, {}), {}
            for msg_type, _flags, payload in netlink.dump(self._sock, req):
                if msg_type != SOCK_DIAG_BY_FAMILY or len(payload) < _MSG.size:
                    continue
                signature = self._signature(payload) if tcp else bytes(payload[:2])
                cookie = bytes(payload[_COOKIE])
                known = previous.get(cookie)
                if known is not None and known[0] == signature:
                    record: SocketRecord | None = known[1]
                else:
                    record = parse(payload, transport)
                if record is not None:
                    records.append(record)
                    current[cookie] = (signature, record)
            self._previous[req] = current
        return records

    def split_snapshot(self) -> tuple[NativeTcpRows, list[SocketRecord]] | None:
        """TCP sockets dumped and held by the native module, UDP sockets as records."""
        if _native is None:
            return None
        return _TcpRows(_native.dump_tcp(self._sock.fileno())), self._udp_records()

    def changes(self, *, restart: bool = False) -> SocketChanges | None:
        """TCP sockets from the kernel's tcp iterator, as changes; UDP ones in full."""
        if not self._tracker_tried:
            self._tracker_tried = True
            self._tracker = _tcp_tracker(self._netns) if self._netns >= 0 else None
        if self._tracker is None:
            return None
        if restart:
            self._tracker.forget()
        changed, vanished = self._tracker.refresh()
        if not self._tracker_trusted and changed:
            # (Until trusted every reading before was empty: nothing vanished since.)
            self._tracker_trusted, changed = self._trust(changed)
            if not self._tracker_trusted:
                log.warning("the tcp iterator misreads this kernel; dumping sockets instead")
                self._tracker = None
                return None
        bound, bound_vanished = self._bound_changes(restart)
        return SocketChanges(
            [_record(*fields) for fields in changed] + bound,
            [
                FlowKey(Transport.TCP, Endpoint(local, port), Endpoint(remote, remote_port))
                for _family, local, port, remote, remote_port in vanished
            ]
            + bound_vanished,
            self._udp_records(),
        )

    def _bound_changes(self, restart: bool) -> tuple[list[SocketRecord], list[FlowKey]]:
        """Bound-inactive TCP sockets (which the iterator does not see) new or changed
        since the last look, and those gone. The kernel finds them by walking every
        bound port (~5 ms at 20,000 connections), so it looks every BOUND_SECONDS."""
        if restart:
            self._bound = {}
        elif time.monotonic() < self._next_bound:
            return [], []
        self._next_bound = time.monotonic() + BOUND_SECONDS
        now = {r.key: r for r in self._dump(self._bound_requests)}
        last, self._bound = self._bound, now
        changed = [r for key, r in now.items() if last.get(key) is not r]
        return changed, [key for key in last if key not in now]

    def _dump_fields(self) -> dict[tuple[object, ...], NativeFields]:
        assert _native is not None
        return {r[2:6]: r for r in _native.dump_tcp(self._sock.fileno()).records()}

    def _trust(self, read: list[NativeFields]) -> tuple[bool, list[NativeFields]]:
        """Whether to trust the iterator, judged on its first reading (read) against a
        dump made now. Sockets that go meanwhile say nothing; when all of them do (heavy
        churn), the comparison is made again a few times, and without any socket to
        compare the iterator is trusted on the offsets BTF gave. Returns the verdict and
        the reading it was made on (the tracker's latest)."""
        assert self._tracker is not None
        for _attempt in range(TRUST_ATTEMPTS):
            verdict = reads_like_a_dump(read, self._dump_fields())
            if verdict is not None:
                return verdict, read
            self._tracker.forget()
            read, _vanished = self._tracker.refresh()
        return True, read

    def _signature(self, payload: memoryview) -> bytes:
        """State plus the tcp_info byte counters: what parse() would read and change."""
        at = self._info_offset
        if not (0 < at <= len(payload) - 4 and _ATTR.unpack_from(payload, at)[1] == INET_DIAG_INFO):
            at = _find_attribute(payload, INET_DIAG_INFO)
            if at < 0:
                return b""  # no tcp_info: parse() decides (a mini-socket)
            self._info_offset = at
        start = at + 4
        return bytes(payload[1:2]) + bytes(
            payload[start + _TCP_INFO_BYTES_OFFSET : start + _TCP_INFO_SENT_OFFSET + 8]
        )

    def close(self) -> None:
        self._sock.close()
        if self._netns >= 0:
            os.close(self._netns)
        if self.others is not None:
            self.others.close()


def _tcp_tracker(netns_fd: int) -> _native.TcpTracker | None:
    """The native reader of TCP changes, where the kernel lets us load it (root, BTF)."""
    if _native is None or os.geteuid() != 0:
        return None
    try:
        return _native.TcpTracker(netns_fd)
    except OSError as exc:
        log.debug("no tcp iterator (%s): the monitor dumps sockets in full", exc)
        return None


def reads_like_a_dump(
    read: list[NativeFields], after: dict[tuple[object, ...], NativeFields]
) -> bool | None:
    """Whether the iterator's reading says what a sock_diag dump made just after it says
    of the same sockets: family, uid, cgroup and inode the same (or the inode gone: the
    socket closed meanwhile), counters no larger (they only grow). A program assembled
    from offsets this kernel's BTF misled would read other fields. None when no socket
    was in both readings."""
    compared = wrong = 0
    for fields in read:
        last = after.get(fields[2:6])
        if last is None:
            continue
        compared += 1
        if not (
            fields[0] == last[0] and fields[6] == last[6] and fields[9] == last[9]
            and last[7] in (fields[7], 0)
            and fields[10] <= last[10] and fields[11] <= last[11]
        ):  # fmt: skip
            wrong += 1
    if compared == 0:
        return None
    return wrong * 10 < compared


def _record(
    family: int, state: int, local: str, port: int, remote: str, remote_port: int, uid: int,
    inode: int, cookie: int, cgroup: int, sent: int, received: int,
) -> SocketRecord:  # fmt: skip
    """A SocketRecord from the native module's fields of one TCP socket."""
    return SocketRecord(
        Transport.TCP, Endpoint(local, port), Endpoint(remote, remote_port),
        TCP_STATES.get(state) or str(state), inode, uid, cookie, cgroup, sent, received,
    )  # fmt: skip


def _state_name(transport: Transport, state: int) -> str:
    """A socket state as ss names it (an unconnected UDP socket is UNCONN)."""
    if transport is Transport.UDP and state == TCP_CLOSE:
        return "UNCONN"
    return TCP_STATES.get(state) or str(state)


def _destroyed(
    protocol: int, family: int, state: int, local: str, port: int, remote: str,
    remote_port: int, uid: int, inode: int, cookie: int, cgroup: int, sent: int,
    received: int,
) -> SocketRecord:  # fmt: skip
    """A SocketRecord from the native module's fields of a destroy broadcast (as parse()
    with destroyed=True makes it)."""
    transport = Transport.UDP if protocol == socket.IPPROTO_UDP else Transport.TCP
    return SocketRecord(
        transport, Endpoint(local, port), Endpoint(remote, remote_port),
        _state_name(transport, state),
        inode, uid, cookie, cgroup, sent, received, True,
    )  # fmt: skip


# The JSON text of each TCP state number, for the native renderer.
_STATE_JSON = tuple(dumps(TCP_STATES.get(n) or str(n)).encode() for n in range(256))


class _TcpRows:
    """NativeTcpRows over the C module's batch."""

    def __init__(self, batch: _native.TcpBatch) -> None:
        self._batch = batch

    def groups(self, owners: dict[int, int]) -> set[tuple[int, int]]:
        return self._batch.groups(owners)

    def write(
        self,
        fd: int,
        templates: dict[tuple[int, int], RowTemplate | None],
        wanted: RowFilter | None = None,
    ) -> int:
        spec = None
        if wanted is not None:
            states = None
            if wanted.state is not None:
                states = bytes((TCP_STATES.get(n) or str(n)) == wanted.state for n in range(256))
            address = wanted.address.encode() if wanted.address is not None else None
            spec = (-1 if wanted.port is None else wanted.port, states, address)
        return self._batch.write(fd, templates, _STATE_JSON, spec)


class SockDiagDestroyEvents:
    """Final state of each TCP/UDP socket as the kernel destroys it."""

    def __init__(self) -> None:
        self._sock = netlink.open_socket(NETLINK_SOCK_DIAG, DESTROY_GROUPS, rcvbuf=32 << 20)
        self._sock.setblocking(False)
        self._buffer = bytearray(netlink.RECV_BUFFER)
        # Whether a closed TCP socket (by cookie) had its peer's FIN, where netwarden's
        # BPF programs tell (bytes_received counts that FIN); None: they do not say.
        self.peer_fin: Callable[[int], bool | None] | None = None

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> list[SocketRecord]:
        if _native is not None:
            destroyed = _native.read_destroyed(self._sock.fileno())
            return [self._without_fin(_destroyed(*fields)) for fields in destroyed]
        records: list[SocketRecord] = []
        for datagram in netlink.recv_nowait(self._sock, self._buffer):
            for msg_type, _flags, payload in netlink.iter_messages(datagram):
                if msg_type != SOCK_DIAG_BY_FAMILY or len(payload) < _MSG.size:
                    continue
                record = parse(payload, None, destroyed=True)
                if record is not None:
                    records.append(self._without_fin(record))
        return records

    def _without_fin(self, record: SocketRecord) -> SocketRecord:
        """bytes_received without the peer's FIN, when it came (or, where nothing says,
        as a graceful close would have it)."""
        if record.transport is not Transport.TCP or not record.bytes_received:
            return record
        fin = self.peer_fin(record.cookie) if self.peer_fin and record.cookie else None
        if fin is False:
            return record
        return dataclasses.replace(record, bytes_received=record.bytes_received - 1)

    def close(self) -> None:
        self._sock.close()


_NO_COOKIE = b"\xff" * 8


def lookup_request(transport: Transport, local: Endpoint, remote: Endpoint) -> bytes:
    """A request for the one socket of a connection (the kernel's own lookup: for UDP
    it finds an unconnected socket bound to the local port as well)."""
    family = socket.AF_INET6 if ":" in local.address else socket.AF_INET

    def raw(address: str) -> bytes:
        return socket.inet_pton(family, address).ljust(16, b"\0")

    sockid = (
        struct.pack(">HH", local.port, remote.port)
        + raw(local.address)
        + raw(remote.address)
        + struct.pack("=I", 0)
        + _NO_COOKIE
    )
    payload = _REQUEST.pack(family, transport.number, 0, 0xFFFFFFFF, sockid)
    return netlink.pack_message(SOCK_DIAG_BY_FAMILY, netlink.NLM_F_REQUEST, payload)


class SocketLookup:
    """Finds the socket of one connection by its addresses: (inode, uid), no more (the
    CONNECT layer asks this for every new connection)."""

    def __init__(self) -> None:
        self._sock = netlink.open_socket(NETLINK_SOCK_DIAG)
        self._buffer = bytearray(1 << 16)

    def find(
        self, transport: Transport, local: Endpoint, remote: Endpoint
    ) -> tuple[int, int] | None:
        """(inode, uid) of the connection's socket; None when there is none."""
        if transport is Transport.UDP:  # the kernel looks UDP up as for a datagram received
            local, remote = remote, local
        try:
            self._sock.send(lookup_request(transport, local, remote))
            size = self._sock.recv_into(self._buffer)
            for msg_type, _flags, payload in netlink.iter_messages(memoryview(self._buffer)[:size]):
                if msg_type == SOCK_DIAG_BY_FAMILY and len(payload) >= _MSG.size:
                    fields = _MSG.unpack_from(payload)
                    return int(fields[-1]), int(fields[-2])  # inode, uid
        except OSError:  # ENOENT: no such socket (it closed, or none is local)
            return None
        return None

    def close(self) -> None:
        self._sock.close()

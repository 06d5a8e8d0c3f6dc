"""Conntrack over raw NETLINK_NETFILTER: a table dump, NEW/UPDATE/DESTROY events.

The kernel tracks connections in a namespace only while some rule needs it, and
counts bytes only with nf_conntrack_acct=1. :class:`ConntrackActivation` arranges
both with a table netwarden owns, and undoes them.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from pathlib import Path
from typing import Any

from netwarden.model import Endpoint, Transport
from netwarden.platform.base import CountedFlow, CountedFlowEvent
from netwarden.platform.linux import netlink
from netwarden.platform.linux.procfs import pid_alive

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
GROUP_NEW, GROUP_UPDATE, GROUP_DESTROY = 1, 2, 3

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 9, 10
CTA_ID = 12
CTA_FILTER = 25
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_F_CTA_PROTO_NUM = 1 << 3
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2

ACCT_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
_NFGEN = struct.Struct("=BBH")
_BE64 = struct.Struct(">Q")
_BE32 = struct.Struct(">I")


def _tuple(data: memoryview) -> tuple[int, Endpoint, Endpoint] | None:
    parts = netlink.parse_attributes(data)
    ip = netlink.parse_attributes(parts.get(CTA_TUPLE_IP, memoryview(b"")))
    proto = netlink.parse_attributes(parts.get(CTA_TUPLE_PROTO, memoryview(b"")))
    number = proto.get(CTA_PROTO_NUM)
    if not number:  # missing, or an attribute cut to nothing
        return None
    if CTA_IP_V4_SRC in ip and CTA_IP_V4_DST in ip:
        family, src, dst, size = socket.AF_INET, ip[CTA_IP_V4_SRC], ip[CTA_IP_V4_DST], 4
    elif CTA_IP_V6_SRC in ip and CTA_IP_V6_DST in ip:
        family, src, dst, size = socket.AF_INET6, ip[CTA_IP_V6_SRC], ip[CTA_IP_V6_DST], 16
    else:
        return None
    if len(src) != size or len(dst) != size:
        return None
    sport = int.from_bytes(proto.get(CTA_PROTO_SRC_PORT, b"\0\0"), "big")
    dport = int.from_bytes(proto.get(CTA_PROTO_DST_PORT, b"\0\0"), "big")
    return (
        number[0],
        Endpoint(socket.inet_ntop(family, src), sport),
        Endpoint(socket.inet_ntop(family, dst), dport),
    )


def _counters(data: memoryview | None) -> tuple[int, int]:
    if data is None:
        return 0, 0
    attrs = netlink.parse_attributes(data)
    packets = attrs.get(CTA_COUNTERS_PACKETS)
    size = attrs.get(CTA_COUNTERS_BYTES)
    return (
        _BE64.unpack(packets)[0] if packets is not None and len(packets) == 8 else 0,
        _BE64.unpack(size)[0] if size is not None and len(size) == 8 else 0,
    )


def parse(
    msg_type: int, flags: int, payload: memoryview, *, snapshot: bool = False
) -> CountedFlow | None:
    """A TCP or UDP conntrack message; None for other protocols or malformed ones."""
    if len(payload) < _NFGEN.size:
        return None
    attrs = netlink.parse_attributes(payload, _NFGEN.size)
    orig = attrs.get(CTA_TUPLE_ORIG)
    reply = attrs.get(CTA_TUPLE_REPLY)
    if orig is None or reply is None:
        return None
    orig_tuple = _tuple(orig)
    reply_tuple = _tuple(reply)
    if orig_tuple is None or reply_tuple is None or orig_tuple[0] not in (6, 17):
        return None
    if snapshot:
        event = CountedFlowEvent.SNAPSHOT
    elif msg_type & 0xFF == IPCTNL_MSG_CT_DELETE:
        event = CountedFlowEvent.DESTROY
    elif flags & NLM_F_CREATE:
        event = CountedFlowEvent.NEW
    else:
        event = CountedFlowEvent.UPDATE
    orig_packets, orig_bytes = _counters(attrs.get(CTA_COUNTERS_ORIG))
    reply_packets, reply_bytes = _counters(attrs.get(CTA_COUNTERS_REPLY))
    ct_id = attrs.get(CTA_ID)
    return CountedFlow(
        event=event,
        transport=Transport.from_number(orig_tuple[0]),
        orig_src=orig_tuple[1],
        orig_dst=orig_tuple[2],
        reply_src=reply_tuple[1],
        reply_dst=reply_tuple[2],
        orig_packets=orig_packets,
        orig_bytes=orig_bytes,
        reply_packets=reply_packets,
        reply_bytes=reply_bytes,
        ct_id=_BE32.unpack(ct_id)[0] if ct_id is not None and len(ct_id) == 4 else 0,
    )


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (netlink.align4(length) - length)


def udp_dump_request(family: int) -> bytes:
    """A dump of UDP entries only, filtered in the kernel (CTA_FILTER, Linux 5.8+):
    TCP entries, which can number hundreds of thousands, never reach user space."""
    nested = 0x8000
    proto = _attr(CTA_TUPLE_PROTO | nested, _attr(CTA_PROTO_NUM, b"\x11"))
    payload = (
        _NFGEN.pack(family, 0, 0)
        + _attr(CTA_TUPLE_ORIG | nested, proto)
        + _attr(CTA_FILTER | nested, _attr(CTA_FILTER_ORIG_FLAGS,
                                           struct.pack("=I", CTA_FILTER_F_CTA_PROTO_NUM)))
    )  # fmt: skip
    return netlink.pack_message(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP,
        payload,
    )


def full_dump_request() -> bytes:
    return netlink.pack_message(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP,
        _NFGEN.pack(socket.AF_UNSPEC, 0, 0),
    )


class ConntrackDump:
    def __init__(self) -> None:
        self._sock = netlink.open_socket(NETLINK_NETFILTER)
        self._requests = [udp_dump_request(socket.AF_INET), udp_dump_request(socket.AF_INET6)]

    def check_access(self) -> None:
        """Raise OSError (EPERM) unless this process may read the table: a lookup
        without a tuple, which the kernel refuses as invalid only once it is allowed
        (far cheaper than a dump, which walks every namespace's entries)."""
        request = netlink.pack_message(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            netlink.NLM_F_REQUEST | NLM_F_ACK,
            _NFGEN.pack(socket.AF_INET, 0, 0),
        )
        self._sock.send(request)
        try:
            for _message in netlink.iter_messages(self._sock.recv(netlink.RECV_BUFFER)):
                pass
        except netlink.NetlinkError as exc:
            if exc.errno != errno.EINVAL:
                raise

    def snapshot(self) -> list[CountedFlow]:
        try:
            return self._dump(self._requests)
        except netlink.NetlinkError as exc:
            if exc.errno != errno.EINVAL or len(self._requests) == 1:
                raise
            self._requests = [full_dump_request()]  # a kernel without dump filters
            return self._dump(self._requests)

    def _dump(self, requests: list[bytes]) -> list[CountedFlow]:
        records = []
        for request in requests:
            for msg_type, flags, payload in netlink.dump(self._sock, request):
                record = parse(msg_type, flags, payload, snapshot=True)
                if record is not None:
                    records.append(record)
        return records

    def close(self) -> None:
        self._sock.close()


class ConntrackEventStream:
    def __init__(self) -> None:
        self._sock = netlink.open_socket(
            NETLINK_NETFILTER, (GROUP_NEW, GROUP_UPDATE, GROUP_DESTROY), rcvbuf=32 << 20
        )
        self._sock.setblocking(False)
        attach_udp_only_filter(self._sock)
        self._buffer = bytearray(netlink.RECV_BUFFER)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> list[CountedFlow]:
        records = []
        for datagram in netlink.recv_nowait(self._sock, self._buffer):
            for msg_type, flags, payload in netlink.iter_messages(datagram):
                record = parse(msg_type, flags, payload)
                if record is not None:
                    records.append(record)
        return records

    def close(self) -> None:
        self._sock.close()


SO_ATTACH_FILTER = 26
_BPF_LDB_ABS, _BPF_LDH_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x30, 0x28, 0x15, 0x06
_ACCEPT, _DROP = 0xFFFF, 0


def _udp_only_program() -> list[tuple[int, int, int, int]]:
    """Classic BPF over each event message: drop it only when it is surely not UDP.

    An event starts with its original tuple, so the protocol number sits at a fixed
    offset for IPv4 (52) and IPv6 (76). The attribute types on the way are checked
    (read big-endian by BPF: CTA_TUPLE_PROTO|NESTED is 0x0280, CTA_PROTO_NUM 0x0100),
    and a message laid out otherwise is let through for Python to judge.
    Each row: (code, jump-if-true, jump-if-false, k); jumps count the rows skipped.
    """
    ldb, ldh, jeq, ret = _BPF_LDB_ABS, _BPF_LDH_ABS, _BPF_JEQ_K, _BPF_RET_K
    return [
        (ldb, 0, 0, 16),  # 0: nfgenmsg family
        (jeq, 1, 0, socket.AF_INET),  # 1: -> 3
        (jeq, 6, 12, socket.AF_INET6),  # 2: -> 9, else accept
        (ldh, 0, 0, 46),  # 3: IPv4
        (jeq, 0, 10, 0x0280),
        (ldh, 0, 0, 50),
        (jeq, 0, 8, 0x0100),
        (ldb, 0, 0, 52),
        (jeq, 6, 7, 17),  # 8: UDP -> accept, else drop
        (ldh, 0, 0, 70),  # 9: IPv6
        (jeq, 0, 4, 0x0280),
        (ldh, 0, 0, 74),
        (jeq, 0, 2, 0x0100),
        (ldb, 0, 0, 76),
        (jeq, 0, 1, 17),  # 14
        (ret, 0, 0, _ACCEPT),  # 15
        (ret, 0, 0, _DROP),  # 16
    ]


def attach_udp_only_filter(sock: socket.socket) -> None:
    program = _udp_only_program()
    filters = (ctypes.c_ubyte * (8 * len(program)))()
    for index, (code, jt, jf, k) in enumerate(program):
        struct.pack_into("=HBBI", filters, index * 8, code, jt, jf, k)
    fprog = struct.pack("HP", len(program), ctypes.addressof(filters))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


ACCT_NOTE = "nf_conntrack_acct was "


def tracking_table(name: str, old_acct: str | None = None) -> list[dict[str, Any]]:
    """A chain whose only job is to make the kernel track connections in this namespace.
    Its rule's comment records the accounting setting to restore (old_acct), so that a
    monitor that dies without restoring it leaves the value with its table."""
    where = {"family": "inet", "table": name}
    rule: dict[str, Any] = {
        **where,
        "chain": "track",
        "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["invalid"]}},
        ],
    }
    if old_acct is not None:
        rule["comment"] = ACCT_NOTE + old_acct
    return [
        {"add": {"chain": {**where, "name": "track", "type": "filter", "hook": "output",
                           "prio": -150, "policy": "accept"}}},
        {"add": {"rule": rule}},
    ]  # fmt: skip


def recorded_acct(table: str) -> str | None:
    """The accounting setting a monitor's table says to restore, if it says one."""
    from netwarden.platform.linux import nftables

    try:
        listing = nftables.list_json("table", "inet", table)
    except nftables.NftError:
        return None
    for item in listing:
        comment = str(item.get("rule", {}).get("comment", ""))
        if comment.startswith(ACCT_NOTE) and comment[len(ACCT_NOTE) :].isdigit():
            return comment[len(ACCT_NOTE) :]
    return None


def clean_dead_monitors(prefix: str) -> list[str]:
    """Remove the tables of monitors that died, and restore the accounting setting one
    of them recorded when no live monitor remains; the tables removed."""
    from netwarden.platform.linux import nftables

    removed, recorded, alive = [], None, False
    for name, pid in monitor_tables(prefix):
        if pid_alive(pid):
            alive = True
            continue
        recorded = recorded_acct(name) or recorded
        nftables.delete_table("inet", name)
        removed.append(name)
    if recorded is not None and not alive:
        ACCT_SYSCTL.write_text(recorded + "\n")
    return removed


def monitor_tables(prefix: str) -> list[tuple[str, int]]:
    """(table, pid) of every monitor's table in this namespace."""
    from netwarden.platform.linux import nftables

    found = []
    for _family, name in nftables.list_tables():
        suffix = name.removeprefix(prefix + "_")
        if suffix != name and suffix.isdigit():
            found.append((name, int(suffix)))
    return found


class ConntrackActivation:
    """Turns on connection tracking and byte accounting for this namespace, and back off.

    Must be entered with the thread in the target namespace (nft and /proc/sys/net
    follow the caller's namespace).
    """

    def __init__(self, prefix: str, pid: int) -> None:
        # One table per monitor process: two monitors in one namespace must not remove
        # each other's; tables of processes that died are removed by the next one.
        self.prefix = prefix
        self.table = f"{prefix}_{pid}"
        self._old_acct: str | None = None
        self.created_table = False

    def _siblings(self) -> list[tuple[str, int]]:
        return [(n, p) for n, p in monitor_tables(self.prefix) if n != self.table]

    def enable(self) -> None:
        from netwarden.platform.linux import nftables

        # What to restore in the end: what the first monitor of a line of them found,
        # as any of them (live or dead) recorded it; else the setting now.
        inherited = None
        for name, pid in self._siblings():
            inherited = recorded_acct(name) or inherited
            if not pid_alive(pid):
                nftables.delete_table("inet", name)
        current = ACCT_SYSCTL.read_text().strip()
        self._old_acct = inherited or (current if current != "1" else None)
        # Accounting first: an entry made before it is on never counts a byte.
        if current != "1":
            ACCT_SYSCTL.write_text("1\n")
        try:
            nftables.replace_table("inet", self.table, tracking_table(self.table, self._old_acct))
        except BaseException:
            if current != "1" and not self._siblings():
                ACCT_SYSCTL.write_text(current + "\n")
            raise
        self.created_table = True

    def disable(self) -> None:
        from netwarden.platform.linux import nftables

        if self.created_table:
            nftables.delete_table("inet", self.table)
            self.created_table = False
        if self._old_acct is not None and not self._siblings():  # the last one restores it
            ACCT_SYSCTL.write_text(self._old_acct + "\n")
            self._old_acct = None

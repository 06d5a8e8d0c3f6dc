"""Conntrack over raw NETLINK_NETFILTER: a table dump, NEW/UPDATE/DESTROY events.

The kernel tracks connections in a namespace only while some rule needs it, and
counts bytes only with nf_conntrack_acct=1. :class:`ConntrackActivation` arranges
both with a table netwarden owns, and undoes them.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

from netwarden.model import Endpoint, Transport
from netwarden.platform.base import ConntrackEventType, ConntrackRecord
from netwarden.platform.linux import netlink, nftables

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_CREATE = 0x400
GROUP_NEW, GROUP_UPDATE, GROUP_DESTROY = 1, 2, 3

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 9, 10
CTA_ID = 12
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
    if number is None:
        return None
    if CTA_IP_V4_SRC in ip and CTA_IP_V4_DST in ip:
        family, src, dst = socket.AF_INET, ip[CTA_IP_V4_SRC], ip[CTA_IP_V4_DST]
    elif CTA_IP_V6_SRC in ip and CTA_IP_V6_DST in ip:
        family, src, dst = socket.AF_INET6, ip[CTA_IP_V6_SRC], ip[CTA_IP_V6_DST]
    else:
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
) -> ConntrackRecord | None:
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
        event = ConntrackEventType.SNAPSHOT
    elif msg_type & 0xFF == IPCTNL_MSG_CT_DELETE:
        event = ConntrackEventType.DESTROY
    elif flags & NLM_F_CREATE:
        event = ConntrackEventType.NEW
    else:
        event = ConntrackEventType.UPDATE
    orig_packets, orig_bytes = _counters(attrs.get(CTA_COUNTERS_ORIG))
    reply_packets, reply_bytes = _counters(attrs.get(CTA_COUNTERS_REPLY))
    ct_id = attrs.get(CTA_ID)
    return ConntrackRecord(
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


class ConntrackDump:
    def __init__(self) -> None:
        self._sock = netlink.open_socket(NETLINK_NETFILTER)
        self._request = netlink.pack_message(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP,
            _NFGEN.pack(socket.AF_UNSPEC, 0, 0),
        )

    def snapshot(self) -> list[ConntrackRecord]:
        records = []
        for msg_type, flags, payload in netlink.dump(self._sock, self._request):
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
        self._buffer = bytearray(netlink.RECV_BUFFER)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> list[ConntrackRecord]:
        records = []
        for datagram in netlink.recv_nowait(self._sock, self._buffer):
            for msg_type, flags, payload in netlink.iter_messages(datagram):
                record = parse(msg_type, flags, payload)
                if record is not None:
                    records.append(record)
        return records

    def close(self) -> None:
        self._sock.close()


def tracking_table(name: str) -> list[dict[str, Any]]:
    """A chain whose only job is to make the kernel track connections in this namespace."""
    where = {"family": "inet", "table": name}
    return [
        {"add": {"chain": {**where, "name": "track", "type": "filter", "hook": "output",
                           "prio": -150, "policy": "accept"}}},
        {"add": {"rule": {**where, "chain": "track", "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["invalid"]}},
        ]}}},
    ]  # fmt: skip


class ConntrackActivation:
    """Turns on connection tracking and byte accounting for this namespace, and back off.

    Must be entered with the thread in the target namespace (nft and /proc/sys/net
    follow the caller's namespace).
    """

    def __init__(self, table: str) -> None:
        self.table = table
        self._old_acct: str | None = None
        self.created_table = False

    def enable(self) -> None:
        nftables.replace_table("inet", self.table, tracking_table(self.table))
        self.created_table = True
        current = ACCT_SYSCTL.read_text().strip()
        if current != "1":
            ACCT_SYSCTL.write_text("1\n")
            self._old_acct = current

    def disable(self) -> None:
        if self.created_table:
            nftables.delete_table("inet", self.table)
            self.created_table = False
        if self._old_acct is not None:
            ACCT_SYSCTL.write_text(self._old_acct + "\n")
            self._old_acct = None

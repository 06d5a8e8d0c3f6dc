"""NFQUEUE over raw netlink (nfnetlink_queue): packets the kernel holds for a
user-space verdict, and the verdicts. No library: the protocol is a handful of
attributes, and a verdict is one datagram.

The queue gets the first bytes of each packet, its mark and the sending socket's
uid; a verdict accepts (optionally with a new packet mark) or drops.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass

from netwarden.platform.linux import netlink

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | 0
NFQNL_MSG_VERDICT = (NFNL_SUBSYS_QUEUE << 8) | 1
NFQNL_MSG_CONFIG = (NFNL_SUBSYS_QUEUE << 8) | 2
NLM_F_ACK = 0x4

NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 0x1
NFQA_CFG_F_UID_GID = 0x8

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_PAYLOAD = 10
NFQA_UID = 16
NFQA_GID = 17

NF_DROP = 0
NF_ACCEPT = 1

log = logging.getLogger(__name__)

COPY_BYTES = 80  # an IPv6 header and a TCP header with options fit
_NFGEN = struct.Struct("=BBH")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct(">I")
_PACKET_HDR = struct.Struct(">IHB")
_VERDICT = struct.Struct(">II")


class QueueError(OSError):
    pass


@dataclass(slots=True)
class QueuedPacket:
    """One packet held by the kernel until verdict() is called with its id."""

    packet_id: int
    hook: int  # NF_INET_*: 1 local in, 3 local out
    payload: bytes  # the IP packet's first bytes, as many as the queue copies
    mark: int = 0
    uid: int | None = None  # of the sending socket, when there is one
    indev: int = 0
    outdev: int = 0


def _attribute(kind: int, data: bytes) -> bytes:
    length = _ATTR.size + len(data)
    return _ATTR.pack(length, kind) + data + b"\0" * (netlink.align4(length) - length)


def _config(queue: int, attributes: bytes) -> bytes:
    payload = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(queue)) + attributes
    return netlink.pack_message(NFQNL_MSG_CONFIG, netlink.NLM_F_REQUEST | NLM_F_ACK, payload)


def parse_packet(payload: memoryview) -> QueuedPacket | None:
    """An NFQNL_MSG_PACKET's attributes (after its nfgenmsg); None without a header."""
    attrs = netlink.parse_attributes(payload, _NFGEN.size)
    header = attrs.get(NFQA_PACKET_HDR)
    if header is None or len(header) < _PACKET_HDR.size:
        return None
    packet_id, _hw, hook = _PACKET_HDR.unpack_from(header)

    def u32(kind: int) -> int | None:
        value = attrs.get(kind)
        return _U32.unpack_from(value)[0] if value is not None and len(value) >= 4 else None

    return QueuedPacket(
        packet_id=packet_id,
        hook=hook,
        payload=bytes(attrs.get(NFQA_PAYLOAD, b"")),
        mark=u32(NFQA_MARK) or 0,
        uid=u32(NFQA_UID),
        indev=u32(NFQA_IFINDEX_INDEV) or 0,
        outdev=u32(NFQA_IFINDEX_OUTDEV) or 0,
    )


class NfQueue:
    """One bound queue number in the current network namespace."""

    def __init__(
        self, number: int, *, fail_open: bool, max_length: int = 4096, copy: int = COPY_BYTES
    ) -> None:
        """copy: how many bytes of each packet to read (its headers by default)."""
        self.number = number
        self._sock = netlink.open_socket(NETLINK_NETFILTER)
        self._buffer = bytearray(netlink.RECV_BUFFER)
        try:
            self._request(
                _config(
                    number, _attribute(NFQA_CFG_CMD, struct.pack("=BxH", NFQNL_CFG_CMD_BIND, 0))
                )
            )
            self._request(
                _config(
                    number, _attribute(NFQA_CFG_PARAMS, struct.pack(">IB", copy, NFQNL_COPY_PACKET))
                )
            )
            self._request(_config(number, _attribute(NFQA_CFG_QUEUE_MAXLEN, _U32.pack(max_length))))
            flags = NFQA_CFG_F_UID_GID | (NFQA_CFG_F_FAIL_OPEN if fail_open else 0)
            self._request(
                _config(
                    number,
                    _attribute(NFQA_CFG_FLAGS, _U32.pack(flags))
                    + _attribute(NFQA_CFG_MASK, _U32.pack(flags)),
                )
            )
        except OSError as exc:
            self._sock.close()
            if exc.errno in (errno.EBUSY, errno.EPERM):  # the kernel says EPERM for "taken"
                message = (
                    f"NFQUEUE {number} is bound by another program (a firewall such "
                    "as OpenSnitch?), or this is not root"
                )
                raise QueueError(exc.errno, message) from None
            raise
        self._sock.setblocking(False)

    def _request(self, message: bytes) -> None:
        self._sock.send(message)
        size = self._sock.recv_into(self._buffer)
        for _ in netlink.iter_messages(memoryview(self._buffer)[:size]):
            pass  # an error raises NetlinkError; an ack yields nothing

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self) -> list[QueuedPacket]:
        """Every packet already waiting (none: an empty list)."""
        packets = []
        for datagram in netlink.recv_nowait(self._sock, self._buffer):
            try:
                for msg_type, _flags, payload in netlink.iter_messages(datagram):
                    if msg_type == NFQNL_MSG_PACKET:
                        packet = parse_packet(payload)
                        if packet is not None:
                            packets.append(packet)
            except netlink.NetlinkError as exc:
                # A verdict for a packet the kernel no longer holds (it drops what is
                # queued when a netfilter hook goes away): nothing to do.
                log.debug("the queue answered a verdict with %s", exc)
        return packets

    def verdict(self, packet_id: int, accept: bool, mark: int | None = None) -> None:
        body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(self.number))
        body += _attribute(
            NFQA_VERDICT_HDR, _VERDICT.pack(NF_ACCEPT if accept else NF_DROP, packet_id)
        )
        if mark is not None:
            body += _attribute(NFQA_MARK, _U32.pack(mark))
        self._sock.send(netlink.pack_message(NFQNL_MSG_VERDICT, netlink.NLM_F_REQUEST, body))

    def close(self) -> None:
        try:
            self._sock.setblocking(True)
            self._request(
                _config(
                    self.number,
                    _attribute(NFQA_CFG_CMD, struct.pack("=BxH", NFQNL_CFG_CMD_UNBIND, 0)),
                )
            )
        except OSError:
            pass  # closing the socket unbinds as well
        self._sock.close()

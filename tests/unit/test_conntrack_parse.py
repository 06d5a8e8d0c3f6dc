from __future__ import annotations

import socket
import struct

from netwarden.model import Endpoint, Transport
from netwarden.platform.base import CountedFlowEvent
from netwarden.platform.linux import conntrack as ct
from tests.unit.builders import attr, nested


def _tuple(kind: int, src: str, dst: str, sport: int, dport: int, proto: int = 17) -> bytes:
    v6 = ":" in src
    family = socket.AF_INET6 if v6 else socket.AF_INET
    return nested(
        kind,
        nested(
            ct.CTA_TUPLE_IP,
            attr(ct.CTA_IP_V6_SRC if v6 else ct.CTA_IP_V4_SRC, socket.inet_pton(family, src)),
            attr(ct.CTA_IP_V6_DST if v6 else ct.CTA_IP_V4_DST, socket.inet_pton(family, dst)),
        ),
        nested(
            ct.CTA_TUPLE_PROTO,
            attr(ct.CTA_PROTO_NUM, bytes([proto])),
            attr(ct.CTA_PROTO_SRC_PORT, sport.to_bytes(2, "big")),
            attr(ct.CTA_PROTO_DST_PORT, dport.to_bytes(2, "big")),
        ),
    )


def _counters(kind: int, packets: int, size: int) -> bytes:
    return nested(
        kind,
        attr(ct.CTA_COUNTERS_PACKETS, struct.pack(">Q", packets)),
        attr(ct.CTA_COUNTERS_BYTES, struct.pack(">Q", size)),
    )


def _message(proto: int = 17, v6: bool = False) -> bytes:
    a, b = ("fd00::1", "fd00::2") if v6 else ("10.0.0.1", "10.0.0.2")
    return (
        struct.pack("=BBH", socket.AF_INET6 if v6 else socket.AF_INET, 0, 0)
        + _tuple(ct.CTA_TUPLE_ORIG, a, b, 40000, 53, proto)
        + _tuple(ct.CTA_TUPLE_REPLY, b, a, 53, 40000, proto)
        + _counters(ct.CTA_COUNTERS_ORIG, 10, 10 * (28 + 100))
        + _counters(ct.CTA_COUNTERS_REPLY, 10, 10 * (28 + 300))
        + attr(ct.CTA_ID, struct.pack(">I", 1234))
    )


def test_new_udp_entry_with_payload_bytes() -> None:
    msg_type = (ct.NFNL_SUBSYS_CTNETLINK << 8) | ct.IPCTNL_MSG_CT_NEW
    record = ct.parse(msg_type, ct.NLM_F_CREATE, memoryview(_message()))
    assert record is not None
    assert record.event is CountedFlowEvent.NEW
    assert record.transport is Transport.UDP
    assert record.orig_src == Endpoint("10.0.0.1", 40000)
    assert record.reply_src == Endpoint("10.0.0.2", 53)
    assert (record.orig_payload, record.reply_payload) == (1000, 3000)
    assert record.ct_id == 1234


def test_destroy_and_update_are_told_apart() -> None:
    destroy = (ct.NFNL_SUBSYS_CTNETLINK << 8) | ct.IPCTNL_MSG_CT_DELETE
    update = (ct.NFNL_SUBSYS_CTNETLINK << 8) | ct.IPCTNL_MSG_CT_NEW
    parsed_destroy = ct.parse(destroy, 0, memoryview(_message(v6=True)))
    parsed_update = ct.parse(update, 0, memoryview(_message()))
    assert parsed_destroy is not None
    assert parsed_destroy.event is CountedFlowEvent.DESTROY
    assert parsed_destroy.orig_src.address == "fd00::1"
    assert parsed_update is not None
    assert parsed_update.event is CountedFlowEvent.UPDATE


def test_ipv6_header_size_is_used_for_payload() -> None:
    record = ct.parse(0x100, 0, memoryview(_message(v6=True)))
    assert record is not None
    assert record.orig_payload == 10 * (128 - 48)


def test_other_protocols_and_garbage_are_ignored() -> None:
    assert ct.parse(0x100, 0, memoryview(_message(proto=1))) is None
    assert ct.parse(0x100, 0, memoryview(b"\0\0")) is None
    assert ct.parse(0x100, 0, memoryview(b"\2\0\0\0" + b"\xff" * 40)) is None

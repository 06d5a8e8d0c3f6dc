# ruff: noqa: E501 (lines of /proc/net, as the kernel writes them)
"""Raw, ping and packet sockets as /proc/net lists them, and finding them by protocol."""

from __future__ import annotations

import pytest

from netwarden.model import Endpoint, Transport
from netwarden.monitor.filters import FlowFilter
from netwarden.platform.linux.other_sockets import counted_record, parse_inet, parse_packet
from netwarden.testing.fakes import flow_event

RAW = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3181264 2 0000000000000000 0
253: 0100007F:00FD 0201C80A:0000 01 00000000:00000000 00:00000000 00000000  1000        0 3181263 2 0000000000000000 0
garbage line
"""
ICMP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 5478: 00000000000000000000000000000000:1566 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3183968 2 0000000000000000 0
"""
PACKET = """sk               RefCnt Type Proto  Iface R Rmem   User   Inode
ffff8881 3      3    88b5   0     1 0      0      3181265
"""


def test_raw_and_ping_sockets_are_read_with_protocol_addresses_and_inode() -> None:
    icmp, raw = parse_inet(RAW, "raw")
    assert icmp.transport is Transport.ICMP
    assert icmp.local == Endpoint("0.0.0.0", 1)
    assert icmp.remote == Endpoint("0.0.0.0", 3181264)  # the inode tells sockets apart
    assert icmp.state == "UNCONN"
    assert raw.transport is Transport.RAW
    assert raw.local == Endpoint("127.0.0.1", 253)
    assert raw.remote.address == "10.200.1.2"
    assert (raw.state, raw.uid, raw.inode) == ("ESTABLISHED", 1000, 3181263)
    (ping6,) = parse_inet(ICMP6, "icmp6")
    assert ping6.transport is Transport.ICMP6
    assert ping6.local == Endpoint("::", 0x1566)  # its echo id


def test_packet_sockets_name_their_ether_type_and_interface() -> None:
    (packet,) = parse_packet(PACKET)
    assert packet.transport is Transport.PACKET
    assert packet.local == Endpoint("*", 0x88B5)  # bound to no interface
    assert packet.inode == 3181265


def test_a_socket_that_lived_between_two_looks_is_named_from_the_counters() -> None:
    ping = counted_record(77, 2, 2, 1, 0)
    assert ping is not None
    assert (ping.transport, ping.remote.port) == (Transport.ICMP, 77)
    raw6 = counted_record(78, 10, 3, 253, 0)
    assert raw6 is not None
    assert (raw6.transport, raw6.local) == (Transport.RAW, Endpoint("::", 253))


@pytest.mark.parametrize(
    ("text", "transport", "wanted"),
    [("proto:icmp", "icmp6", True), ("proto:raw", "raw", True), ("packet", "raw", False)],
)
def test_filters_find_sockets_by_protocol(text: str, transport: str, wanted: bool) -> None:
    from dataclasses import replace

    from netwarden.model import FlowEventKind, FlowKey, ProcessInfo

    event = flow_event(FlowEventKind.OPENED, ProcessInfo(pid=1, name="ping"), 0, 0)
    key = FlowKey(Transport(transport), event.flow.key.local, event.flow.key.remote)
    assert FlowFilter.parse(text).matches(replace(event.flow, key=key)) is wanted


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="proto: is one of tcp, udp, icmp, icmp6, raw, packet"):
        FlowFilter.parse("proto:smoke")

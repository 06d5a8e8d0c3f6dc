"""The CONNECT layer's pieces that need no kernel: packet headers, queue messages,
verdict codes, program rules in the policy file, and the nftables they compile to."""

from __future__ import annotations

import socket
import struct

import pytest

from netwarden.model import Endpoint, Transport
from netwarden.model.connect import BLOCK, CONTINUE, PERMIT, redirect
from netwarden.platform.linux.nfqueue import parse_packet
from netwarden.platform.linux.nft_policy import connect_target_commands, render
from netwarden.platform.packet_headers import parse_ip
from netwarden.policy.compiler import compile_policy
from netwarden.policy.connect_layer import ConnectLayer, codes_of
from netwarden.policy.environment import fake_environment
from netwarden.policy.errors import PolicyError
from netwarden.policy.loader import parse
from netwarden.policy.matcher import decide, parse_flow
from tests.unit.builders import attr


def ipv4(protocol: int, sport: int, dport: int, fragment: int = 0) -> bytes:
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 0, fragment, 64, protocol, 0,
                         socket.inet_aton("10.0.0.1"), socket.inet_aton("192.0.2.7"))  # fmt: skip
    return header + struct.pack(">HH", sport, dport) + b"\0" * 16


def ipv6(next_header: int, payload: bytes) -> bytes:
    return (struct.pack(">IHBB", 6 << 28, len(payload), next_header, 64)
            + socket.inet_pton(socket.AF_INET6, "fd00::1")
            + socket.inet_pton(socket.AF_INET6, "fd00::2") + payload)  # fmt: skip


def test_ipv4_tcp_and_udp_headers() -> None:
    assert parse_ip(ipv4(6, 40000, 443)) == (
        Transport.TCP, Endpoint("10.0.0.1", 40000), Endpoint("192.0.2.7", 443))  # fmt: skip
    assert parse_ip(ipv4(17, 5353, 53))[0] is Transport.UDP  # type: ignore[index]


def test_ipv6_with_an_extension_header() -> None:
    hop_by_hop = bytes([17, 0]) + b"\0" * 6  # next: UDP, 8 bytes long
    parsed = parse_ip(ipv6(0, hop_by_hop + struct.pack(">HH", 1000, 53) + b"\0" * 4))
    assert parsed == (Transport.UDP, Endpoint("fd00::1", 1000), Endpoint("fd00::2", 53))


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x45", ipv4(1, 0, 0), ipv4(6, 1, 2)[:22], ipv4(6, 1, 2, fragment=5),
     b"\x70" + b"\0" * 60, ipv6(0, b"\x06")],
)  # fmt: skip
def test_packets_that_say_nothing_usable_are_none(packet: bytes) -> None:
    assert parse_ip(packet) is None


def test_a_queued_packet_message() -> None:
    body = struct.pack("=BBH", 0, 0, 0) + attr(1, struct.pack(">IHB", 42, 0x0800, 3) + b"\0")
    body += attr(3, struct.pack(">I", 0x4E570001)) + attr(16, struct.pack(">I", 1000))
    body += attr(10, ipv4(6, 1, 2))
    packet = parse_packet(memoryview(body))
    assert packet is not None
    assert (packet.packet_id, packet.hook, packet.mark, packet.uid) == (42, 3, 0x4E570001, 1000)
    assert parse_ip(packet.payload) is not None


@pytest.mark.parametrize("cut", [0, 4, 8, 11])
def test_a_truncated_queue_message_is_none(cut: int) -> None:
    body = struct.pack("=BBH", 0, 0, 0) + attr(1, struct.pack(">IHB", 42, 0x0800, 3) + b"\0")
    assert parse_packet(memoryview(body[:cut])) is None


def test_verdict_codes_lie_within_the_mask_and_differ() -> None:
    layer = ConnectLayer(mask=0xB0000000)
    target = Endpoint("127.0.0.1", 55555)
    with_target = layer.with_redirect(target)
    codes = [with_target.code(v) for v in (CONTINUE, PERMIT, BLOCK, redirect(*target))]
    assert len(set(codes)) == 4
    assert all(code is not None and code & ~0xB0000000 == 0 for code in codes)
    assert layer.code(redirect("127.0.0.1", 1)) is None  # unknown until added
    assert codes_of(0b11) == (1, 2, 3)


def test_the_mask_bounds_how_many_redirect_targets_fit() -> None:
    layer = ConnectLayer(mask=0x3 << 8 | 0x3 << 20)  # 4 bits: 15 codes, 12 targets
    for port in range(layer.capacity):
        layer = layer.with_redirect(Endpoint("127.0.0.1", 1000 + port))
    with pytest.raises(ValueError, match="no room"):
        layer.with_redirect(Endpoint("127.0.0.1", 9))


PROGRAM_POLICY = """
[[rule]]
name = "no-curl"
action = "block"
direction = "out"
exe = "/usr/bin/curl"

[[rule]]
name = "web"
action = "allow"
direction = "out"
port = 443
"""


def test_program_rules_are_decided_at_connect_and_left_out_of_the_kernel_rules() -> None:
    policy = parse(PROGRAM_POLICY, "p.toml", fake_environment())
    compiled = compile_policy(policy, ConnectLayer())
    names = [r.rule.name for rules in compiled.chains.values() for r in rules]
    assert names == ["web"]
    body = render(compiled)
    chains = {c["add"]["chain"]["name"] for c in body if "chain" in c["add"]}
    assert {"connect_out", "connect_in"} <= chains
    assert "redirect_out" not in chains  # made with the first redirect target
    permitted = [c for c in body if c["add"].get("rule", {}).get("comment") == "permitted"]
    assert {c["add"]["rule"]["chain"] for c in permitted} == {"out", "in"}
    target = Endpoint("127.0.0.2", 8080)
    more = connect_target_commands("netwarden", ConnectLayer().with_redirect(target), target)
    assert more[-2]["add"]["chain"]["name"] == "redirect_out"
    assert more[-1]["add"]["rule"]["expr"][-1] == {
        "dnat": {"family": "ip", "addr": "127.0.0.2", "port": 8080}}  # fmt: skip


def test_policy_test_answers_for_program_rules() -> None:
    policy = parse(PROGRAM_POLICY, "p.toml", fake_environment())
    env = fake_environment()
    curl = decide(policy, parse_flow("tcp out 10.0.0.1:4000 -> 192.0.2.7:443 exe=/usr/bin/curl",
                                     env))  # fmt: skip
    assert (curl.action, curl.rule and curl.rule.name) == ("block", "no-curl")
    assert "when the connection starts" in curl.reason
    other = decide(policy, parse_flow("tcp out 10.0.0.1:4000 -> 192.0.2.7:443 exe=/bin/wget", env))
    assert (other.action, other.rule and other.rule.name) == ("allow", "web")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('exe = "curl"', "is not an absolute path"),
        ('sha256 = "abc"', "is not a SHA-256 digest"),
        ('cmdline = "(["', "cmdline is not a valid regular expression"),
        ("exe = 3", "exe must be a string or a list of strings"),
        ('exe = "/bin/x"\nprotocol = "icmp"', "not icmp"),
    ],
)
def test_bad_program_rules_are_refused_with_their_line(rule: str, message: str) -> None:
    text = f'[[rule]]\naction = "block"\ndirection = "out"\n{rule}\n'
    with pytest.raises(PolicyError) as raised:
        parse(text, "p.toml", fake_environment())
    assert message in str(raised.value)
    assert "p.toml:4" in str(raised.value)


def test_forwarded_traffic_has_no_program() -> None:
    with pytest.raises(PolicyError, match="not forwarded ones"):
        parse('[[rule]]\naction = "block"\ndirection = "forward"\nexe = "/bin/x"\n', "p.toml",
              fake_environment())  # fmt: skip


def test_a_connect_mask_overlapping_netwardens_marks_is_refused() -> None:
    text = "[settings]\nconnect_mask = 0x4E000000\n" + PROGRAM_POLICY
    with pytest.raises(PolicyError, match="overlaps proxy_mark"):
        parse(text, "p.toml", fake_environment())


def test_the_transport_payload_of_tcp_and_udp_packets() -> None:
    from netwarden.platform.packet_headers import ip_length, transport_payload

    udp = ipv4(17, 1000, 53)[:28] + b"query"
    assert transport_payload(udp) == b"query"
    tcp = bytearray(ipv4(6, 40000, 443)[:40]) + b"GET /"
    tcp[32] = 5 << 4  # a 20-byte TCP header
    assert transport_payload(bytes(tcp)) == b"GET /"
    assert transport_payload(b"\x45") == b""
    assert ip_length(ipv4(6, 1, 2)) == 40

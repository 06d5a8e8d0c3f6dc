"""Protocol identification from first bytes, the ClientHello and its fingerprints."""

from __future__ import annotations

import random
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwarden.inspect.identify import Identification, Identifier
from netwarden.inspect.tls_hello import ClientHelloReader, NotClientHello, is_grease

# A Chrome ClientHello as published with its fingerprints (ciphers, extensions and
# signature algorithms in the order sent; GREASE values added, which both ignore).
CHROME_CIPHERS = [
    0x1301,
    0x1302,
    0x1303,
    0xC02B,
    0xC02F,
    0xC02C,
    0xC030,
    0xCCA9,
    0xCCA8,
    0xC013,
    0xC014,
    0x009C,
    0x009D,
    0x002F,
    0x0035,
]
CHROME_EXTENSIONS = [
    0x002D,
    0x0033,
    0x0010,
    0xFE0D,
    0x0017,
    0x44CD,
    0x0000,
    0x000B,
    0x000A,
    0x002B,
    0xFF01,
    0x0023,
    0x0012,
    0x0005,
    0x000D,
    0x001B,
]
CHROME_SIGNATURES = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
CHROME_JA3 = "98487aa16281980e7d1120d399efb6a4"
CHROME_JA4 = "t13d1516h2_8daaf6152771_d8a2da3f94cd"


def _vector(data: bytes, length_bytes: int) -> bytes:
    return len(data).to_bytes(length_bytes, "big") + data


def _u16s(values: list[int]) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def _extension_body(kind: int) -> bytes:
    bodies = {
        0x0000: _vector(b"\x00" + _vector(b"tls.example", 2), 2),
        0x0010: _vector(_vector(b"h2", 1) + _vector(b"http/1.1", 1), 2),
        0x002B: _vector(_u16s([0x3A3A, 0x0304, 0x0303]), 1),
        0x000A: _vector(_u16s([0x4A4A, 0x11EC, 29, 23, 24]), 2),
        0x000B: _vector(b"\x00", 1),
        0x000D: _vector(_u16s(CHROME_SIGNATURES), 2),
    }
    return bodies.get(kind, b"")


def chrome_hello(record_size: int = 16384) -> bytes:
    """The whole ClientHello as TLS records of at most record_size bytes."""
    extensions = [0x1A1A, *CHROME_EXTENSIONS, 0x2A2A]
    body = (
        struct.pack("!H", 0x0303)
        + bytes(32)
        + _vector(bytes(32), 1)
        + _vector(_u16s([0x0A0A, *CHROME_CIPHERS]), 2)
        + _vector(b"\x00", 1)
        + _vector(
            b"".join(struct.pack("!H", k) + _vector(_extension_body(k), 2) for k in extensions), 2
        )
    )
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    records = b""
    for start in range(0, len(message), record_size):
        chunk = message[start : start + record_size]
        records += b"\x16\x03\x01" + _vector(chunk, 2)
    return records


def python_hello(server_name: str | None = "example.com") -> bytes:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_chrome_fingerprints_match_the_published_ones() -> None:
    hello = ClientHelloReader().feed(chrome_hello())
    assert hello is not None
    assert hello.server_name == "tls.example"
    assert hello.alpn_names == ("h2", "http/1.1")
    assert hello.version_name == "TLS 1.3"
    assert hello.ja3_text() == (
        "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,"
        "45-51-16-65037-23-17613-0-11-10-43-65281-35-18-5-13-27,4588-29-23-24,0"
    )
    assert hello.ja3() == CHROME_JA3
    assert hello.ja4() == CHROME_JA4


def test_a_hello_split_over_records_and_reads_is_joined() -> None:
    data = chrome_hello(record_size=50)
    identifier = Identifier()
    results = [identifier.feed(data[i : i + 7]) for i in range(0, len(data), 7)]
    assert all(r is None for r in results[:-1])
    final = results[-1]
    assert final is not None
    assert final.hello is not None
    assert final.hello.ja4() == CHROME_JA4


def test_a_real_client_hello_names_its_server() -> None:
    found = Identifier().feed(python_hello())
    assert found is not None
    assert found.summary() == "tls example.com h2,http/1.1"
    assert found.as_json()["ja4"].startswith("t13d")
    without_sni = Identifier().feed(python_hello(None))
    assert without_sni is not None
    assert without_sni.hello is not None
    assert without_sni.hello.server_name is None
    assert without_sni.hello.ja4()[3] == "i"


@pytest.mark.parametrize(
    ("first_bytes", "protocol", "detail"),
    [
        (
            b"GET /a?b=1 HTTP/1.1\r\nHost: www.example:8080\r\nAccept: */*\r\n\r\n",
            "http",
            ("GET", "www.example:8080", "/a?b=1", "www.example"),
        ),
        (
            b"POST /up HTTP/1.0\r\nhost:[2001:db8::1]:80\r\n\r\nbody",
            "http",
            ("POST", "[2001:db8::1]:80", "/up", "2001:db8::1"),
        ),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", "http2", None),
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", "ssh", None),
        (
            b"\x00\x1d\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00"
            b"\x00\x01\x00\x01",
            "dns",
            None,
        ),
        (b"\x05\x01\x00", "unknown", None),
        (b"hello there, how are you\n", "unknown", None),
    ],
)
def test_first_bytes_name_the_protocol(
    first_bytes: bytes, protocol: str, detail: tuple[str, str, str, str] | None
) -> None:
    identifier = Identifier()
    found = identifier.feed(first_bytes) or identifier.give_up()
    assert found.protocol == protocol
    if detail is not None:
        assert (found.method, found.host, found.path, found.server_name) == detail


def test_a_request_line_in_pieces_waits_for_the_headers() -> None:
    identifier = Identifier()
    assert identifier.feed(b"GE") is None
    assert identifier.feed(b"T / HTTP/1.1\r\n") is None
    found = identifier.feed(b"Host: a.example\r\n\r\n")
    assert found == Identification("http", method="GET", host="a.example", path="/")


def test_a_quiet_client_is_unknown() -> None:
    identifier = Identifier()
    assert identifier.feed(b"") is None
    assert identifier.give_up().protocol == "unknown"


@pytest.mark.parametrize(
    "record",
    [
        b"\x16\x03\x01\x00\x00",
        b"\x16\x03\x01\xff\xff",
        b"\x17\x03\x03\x00\x05hello",
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",
    ],
)
def test_records_that_cannot_be_a_client_hello_are_refused(record: bytes) -> None:
    with pytest.raises(NotClientHello):
        ClientHelloReader().feed(record)


def test_grease_values() -> None:
    assert all(is_grease(v) for v in (0x0A0A, 0x1A1A, 0xFAFA))
    assert not any(is_grease(v) for v in (0x0A1A, 0x1301, 0x0000))


def _survives(data: bytes) -> None:
    identifier = Identifier()
    for start in range(0, len(data), 97):
        if identifier.feed(data[start : start + 97]) is not None:
            break
    identifier.give_up().summary()
    identifier.give_up().as_json()


def test_truncated_and_garbled_hellos_never_crash() -> None:
    rng = random.Random(7)
    for good in (chrome_hello(), python_hello(), chrome_hello(record_size=40)):
        for cut in range(len(good)):
            _survives(good[:cut])
        for _ in range(300):
            data = bytearray(good)
            for _flip in range(rng.randint(1, 6)):
                data[rng.randrange(5, len(data))] = rng.randrange(256)
            _survives(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_are_identified_or_unknown(data: bytes) -> None:
    _survives(data)
    _survives(b"\x16\x03\x01" + data)
    _survives(b"GET " + data)


def test_oversized_fields_are_bounded() -> None:
    huge_sni = b"\x16\x03\x01\x40\x00\x01\xff\xff\xff" + bytes(16380)
    with pytest.raises(NotClientHello):
        ClientHelloReader().feed(huge_sni)
    identifier = Identifier()
    found = None
    for _ in range(20):
        found = identifier.feed(b"GET /" + b"a" * 4096)
        if found is not None:
            break
    assert found is not None
    assert found.protocol == "unknown"

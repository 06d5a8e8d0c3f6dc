"""SOCKS5 and HTTP proxy requests, byte by byte, including hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwarden.proxy import http_proxy, socks5


def _greet(server: socks5.Socks5Server, methods: bytes = b"\x00") -> None:
    [event] = server.receive(bytes([5, len(methods)]) + methods)
    assert isinstance(event, socks5.MethodChosen)


def test_connect_by_name_arriving_one_byte_at_a_time() -> None:
    server = socks5.Socks5Server(require_auth=False)
    _greet(server)
    request = b"\x05\x01\x00\x03" + bytes([11]) + b"example.org" + b"\x01\xbb" + b"GET"
    events: list[socks5.Event] = []
    for byte in request[:-3]:
        events += server.receive(bytes([byte]))
    assert events == [socks5.ConnectRequest("example.org", 443)]
    server.receive(b"GET")
    assert server.leftover() == b"GET"


def test_connect_by_ipv4_and_ipv6() -> None:
    for payload, host in ((b"\x01\x0a\x00\x00\x01", "10.0.0.1"),
                          (b"\x04" + bytes(15) + b"\x01", "::1")):  # fmt: skip
        server = socks5.Socks5Server(require_auth=False)
        _greet(server)
        assert server.receive(b"\x05\x01\x00" + payload + b"\x00\x50") == [
            socks5.ConnectRequest(host, 80)
        ]


def test_username_password() -> None:
    server = socks5.Socks5Server(require_auth=True)
    [chosen] = server.receive(b"\x05\x02\x00\x02")
    assert chosen == socks5.MethodChosen(socks5.USER_PASS, b"\x05\x02")
    [credentials] = server.receive(b"\x01\x03ann\x06secret")
    assert credentials == socks5.Credentials("ann", "secret")
    assert server.authenticated(True) == b"\x01\x00"
    assert server.receive(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x16") == [
        socks5.ConnectRequest("127.0.0.1", 22)
    ]


@pytest.mark.parametrize(
    ("require_auth", "data", "message"),
    [
        (False, b"\x04\x01\x00", "not SOCKS5"),
        (True, b"\x05\x01\x00", "no acceptable authentication"),
        (False, b"\x05\x01\x00\x05\x02\x00\x01\x0a\x00\x00\x01\x00\x50", "CONNECT only"),
        (False, b"\x05\x01\x00\x05\x01\x00\x09\x00\x00", "address type 9"),
        (False, b"\x05\x01\x00\x05\x01\x00\x03\x04\xff\xfe\xfd\xfc\x00\x50", "not a host name"),
        (False, b"\x05\x01\x00\x05\x01\x00\x03\x03a b\x00\x50", "not a host name"),
        (False, b"\x05\x01\x00\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x00", "port 0"),
    ],
)
def test_protocol_errors_fail_with_a_reply(require_auth: bool, data: bytes, message: str) -> None:
    server = socks5.Socks5Server(require_auth=require_auth)
    events = server.receive(data)
    assert isinstance(events[-1], socks5.Failed)
    assert message in events[-1].message


@settings(max_examples=300)
@given(st.binary(max_size=300), st.booleans())
def test_garbage_never_raises(data: bytes, require_auth: bool) -> None:
    server = socks5.Socks5Server(require_auth=require_auth)
    for event in server.receive(data):
        if isinstance(event, socks5.Credentials):
            server.authenticated(False)


def test_http_connect_and_absolute_uri() -> None:
    assert http_proxy.parse(b"CONNECT example.org:443 HTTP/1.1\r\nHost: x\r\n\r\n") == (
        http_proxy.Tunnel("example.org", 443)
    )
    assert http_proxy.parse(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n") == (
        http_proxy.Tunnel("2001:db8::1", 443)
    )
    forward = http_proxy.parse(
        b"GET http://example.org:8080/a?b=1 HTTP/1.1\r\nHost: example.org:8080\r\n"
        b"Proxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n"
    )
    assert isinstance(forward, http_proxy.Forward)
    assert (forward.host, forward.port) == ("example.org", 8080)
    assert forward.head == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: example.org:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    "head",
    [b"GARBAGE\r\n\r\n", b"GET /relative HTTP/1.1\r\n\r\n", b"CONNECT host HTTP/1.1\r\n\r\n",
     b"CONNECT host:99999 HTTP/1.1\r\n\r\n", b"GET https://x/ HTTP/1.1\r\n\r\n",
     b"GET http://x:port/ HTTP/1.1\r\n\r\n"],
)  # fmt: skip
def test_bad_http_requests_get_400(head: bytes) -> None:
    request = http_proxy.parse(head)
    assert isinstance(request, http_proxy.BadRequest)
    assert request.response().startswith(b"HTTP/1.1 400 ")


@given(st.binary(max_size=400))
def test_http_garbage_never_raises(data: bytes) -> None:
    http_proxy.parse(data)


def test_upstream_hops_parse_and_encode() -> None:
    from netwarden.proxy.upstream import Hop, socks5_connect, socks5_greeting, socks5_login

    hop = Hop.parse("socks5://ann:secret@127.0.0.1:1080")
    assert (hop.kind, hop.host, hop.port, hop.username, hop.password) == (
        "socks5",
        "127.0.0.1",
        1080,
        "ann",
        "secret",
    )
    assert Hop.parse("http://[::1]:3128") == Hop("http", "::1", 3128)
    assert socks5_greeting(hop) == b"\x05\x01\x02"
    assert socks5_login(hop) == b"\x01\x03ann\x06secret"
    assert socks5_connect("10.0.0.1", 80) == b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50"
    assert socks5_connect("example.org", 443) == b"\x05\x01\x00\x03\x0bexample.org\x01\xbb"
    # What our client sends, our server understands.
    server = socks5.Socks5Server(require_auth=False)
    server.receive(socks5_greeting(Hop("socks5", "h", 1)))
    assert server.receive(socks5_connect("::1", 22)) == [socks5.ConnectRequest("::1", 22)]


@pytest.mark.parametrize("text", ["ftp://h:1", "socks5://h", "http://:80", "socks5://h:x"])
def test_bad_upstreams_are_refused(text: str) -> None:
    from netwarden.proxy.upstream import Hop

    with pytest.raises(ValueError, match=r"upstream|port"):
        Hop.parse(text)

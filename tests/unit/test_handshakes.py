"""The user-mode listeners' handshakes as sans-io layers: what the client gets, the
server they ask for, what is handed over."""

from __future__ import annotations

from netwarden.inspect.commands import Close, Send, Side
from netwarden.proxy import http_proxy, socks5
from netwarden.proxy.handshakes import (
    Handover,
    HttpProxyHandshake,
    OpenServer,
    Refusal,
    Socks5Handshake,
)

GREETING_USER_PASS = b"\x05\x01\x02"
LOGIN = b"\x01\x03ann\x06secret"
CONNECT_NAME = b"\x05\x01\x00\x03\x0bweb.example\x00\x50"


def test_socks5_login_connect_and_handover_with_early_bytes() -> None:
    shake = Socks5Handshake({"ann": "secret"})
    assert shake.from_client(GREETING_USER_PASS) == [Send(Side.CLIENT, b"\x05\x02")]
    assert shake.from_client(LOGIN) == [Send(Side.CLIENT, b"\x01\x00")]
    assert shake.from_client(CONNECT_NAME + b"GET / HTTP/1.1\r\n") == [
        OpenServer("web.example", 80)
    ]
    reply, handover = shake.opened(("10.0.0.1", 40000))
    assert reply == Send(Side.CLIENT, socks5.reply(socks5.Reply.SUCCEEDED, ("10.0.0.1", 40000)))
    assert handover == Handover(b"GET / HTTP/1.1\r\n")


def test_socks5_refusals_answer_the_client_then_close() -> None:
    shake = Socks5Handshake({"ann": "secret"})
    shake.from_client(GREETING_USER_PASS)
    wrong = shake.from_client(b"\x01\x03ann\x05wrong")
    assert wrong[0] == Send(Side.CLIENT, b"\x01\x01")
    assert isinstance(wrong[1], Close)
    shake = Socks5Handshake(None)
    shake.from_client(b"\x05\x01\x00")
    shake.from_client(CONNECT_NAME)
    refused = shake.failed(Refusal.POLICY, "refused by the policy")
    assert refused == [
        Send(Side.CLIENT, socks5.reply(socks5.Reply.NOT_ALLOWED)),
        Close(reason="refused by the policy"),
    ]
    assert isinstance(Socks5Handshake(None).from_client(b"\x04\x01\x00")[-1], Close)


def test_http_connect_and_forward() -> None:
    shake = HttpProxyHandshake()
    assert shake.from_client(b"CONNECT web.example:443 HTTP/1.1\r\n") == []
    assert shake.from_client(b"Host: web.example:443\r\n\r\n\x16\x03\x01") == [
        OpenServer("web.example", 443)
    ]
    assert shake.opened(("10.0.0.1", 40000)) == [
        Send(Side.CLIENT, http_proxy.ESTABLISHED),
        Handover(b"\x16\x03\x01"),
    ]
    forward = HttpProxyHandshake()
    assert forward.from_client(
        b"GET http://web.example/a HTTP/1.1\r\nHost: web.example\r\n\r\n"
    ) == [OpenServer("web.example", 80)]
    (handover,) = forward.opened(("10.0.0.1", 40000))
    assert isinstance(handover, Handover)
    assert handover.early.startswith(b"GET /a HTTP/1.1\r\n")


def test_http_refusals_are_answered_with_a_status() -> None:
    shake = HttpProxyHandshake()
    shake.from_client(b"CONNECT web.example:443 HTTP/1.1\r\n\r\n")
    answer, close = shake.failed(Refusal.POLICY, "refused by the policy")
    assert isinstance(answer, Send)
    assert answer.data.startswith(b"HTTP/1.1 403")
    assert close == Close(reason="refused by the policy")
    unreachable = HttpProxyHandshake()
    unreachable.from_client(b"CONNECT web.example:443 HTTP/1.1\r\n\r\n")
    sent = unreachable.failed(Refusal.UNREACHABLE, "no route")[0]
    assert isinstance(sent, Send)
    assert sent.data.startswith(b"HTTP/1.1 502")
    huge = HttpProxyHandshake().from_client(b"GET http://a/ HTTP/1.1\r\nX: " + b"x" * 70_000)
    assert isinstance(huge[0], Send)
    assert huge[0].data.startswith(b"HTTP/1.1 431")
    bad = HttpProxyHandshake().from_client(b"NONSENSE\r\n\r\n")
    assert isinstance(bad[-1], Close)

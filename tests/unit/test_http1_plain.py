"""Plain HTTP/1.1 exchanges pass their heads on as they came (no h11); anything else,
also in the middle of an exchange, goes through h11 as before. The head reader never
takes what h11 would read otherwise."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwarden.inspect.commands import Close, Command, HttpExchange, Send, Side
from netwarden.inspect.http1 import Http1Filter
from netwarden.inspect.http1_heads import NotPlain, request_head, response_head
from netwarden.policy.inspect_model import HttpAction, HttpRule

RULES = (
    HttpRule("no-ads", 3, HttpAction.BLOCK, hosts=("*.ads.example",)),
    HttpRule("no-zip", 11, HttpAction.BLOCK, content_types=("application/zip",)),
)
ODD_REQUEST = b"GET /a?b=c HTTP/1.1\r\nhOsT:  www.example \r\nX-Many: 1\r\nX-Many: 2\r\n\r\n"
ODD_RESPONSE = b"HTTP/1.1 200 Fine by me\r\nserver:s\r\nContent-Length: 2\r\nX-E:\r\n\r\nhi"


def _sent(commands: list[Command], side: Side) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, Send) and c.side is side)


def _exchanges(commands: list[Command]) -> list[tuple[str, str, str, int]]:
    return [(c.path, c.verdict, c.rule, c.status) for c in commands if isinstance(c, HttpExchange)]


def test_plain_heads_go_on_byte_for_byte_and_keep_alive_goes_on() -> None:
    layer = Http1Filter(RULES, "192.0.2.1")
    for _ in range(3):
        assert _sent(layer.from_client(ODD_REQUEST), Side.SERVER) == ODD_REQUEST
        out = layer.from_server(ODD_RESPONSE)
        assert _sent(out, Side.CLIENT) == ODD_RESPONSE  # h11 would lower-case and reorder
        assert _exchanges(out) == [("/a?b=c", "allowed", "", 200)]
    assert layer.h11_idle  # h11 never read a byte


def test_pipelined_requests_wait_and_blocked_ones_still_get_the_block_page() -> None:
    layer = Http1Filter(RULES, "192.0.2.1")
    out = layer.from_client(
        b"GET /a HTTP/1.1\r\nHost: www.example\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x.ads.example\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: www.example\r\n\r\n"
    )
    assert _sent(out, Side.SERVER) == b"GET /a HTTP/1.1\r\nHost: www.example\r\n\r\n"
    out = layer.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    assert b"403 Forbidden" in _sent(out, Side.CLIENT)
    assert _sent(out, Side.SERVER) == b"GET /c HTTP/1.1\r\nHost: www.example\r\n\r\n"
    out = layer.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc")
    assert _sent(out, Side.CLIENT).endswith(b"\r\n\r\nc")
    assert [e[:2] for e in _exchanges(out)] == [("/c", "allowed")]
    assert layer.h11_idle  # the next exchange may be plain again
    assert _sent(layer.from_client(ODD_REQUEST), Side.SERVER) == ODD_REQUEST


@pytest.mark.parametrize(
    ("response", "pieces"),
    [
        # chunks, then the next request
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            b"hi\r\n0\r\n\r\n",
        ),
        # an informational answer first
        (
            b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
        ),
        # the head in two pieces
        (b"HTTP/1.1 200 OK\r\nContent-Len", b""),
    ],
)
def test_h11_takes_over_an_answer_that_is_not_plain(response: bytes, pieces: bytes) -> None:
    layer = Http1Filter(RULES, "h")
    layer.from_client(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    layer.from_client(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")  # waits for the answer
    out = layer.from_server(response)
    if not pieces:
        out += layer.from_server(b"gth: 2\r\n\r\nok")
        pieces = b"ok"
    assert _sent(out, Side.CLIENT).endswith(pieces)
    assert _sent(out, Side.SERVER) == b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    assert [e[:2] for e in _exchanges(out)] == [("/x", "allowed")]


def test_an_answer_without_length_ends_with_the_connection() -> None:
    layer = Http1Filter(RULES, "h")
    layer.from_client(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    out = layer.from_server(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert _sent(out, Side.CLIENT).endswith(b"\r\n4\r\nsome\r\n")  # h11 sends it in chunks
    assert layer.from_server(b"")[-1] == Close()


def test_a_client_leaving_mid_answer_half_closes() -> None:
    leaving = Http1Filter(RULES, "h")
    leaving.from_client(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not any(isinstance(c, Close) for c in leaving.from_client(b""))  # half-closed
    out = leaving.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert _sent(out, Side.CLIENT).endswith(b"ok")


def test_what_the_reader_leaves_to_h11() -> None:
    for head in (
        b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 20_000 + b"\r\n",
    ):
        with pytest.raises(NotPlain):
            request_head(head, 64 * 1024)
    assert request_head(b"GET / HTTP/1.1\r\nHost: h\r\n", 64 * 1024) is None  # not all yet
    for head in (
        b"HTTP/1.1 200 OK\r\n\r\n",  # to the end of the connection
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
    ):
        with pytest.raises(NotPlain):
            response_head(head, 64 * 1024, to_head=False)
    to_head = response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", 1024, to_head=True)
    assert to_head is not None
    assert to_head.length == 0


FIELD_NAMES = st.sampled_from(
    [b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-A", b"Expect"]
)
FIELD_BYTES = st.binary(max_size=6) | st.sampled_from([b"0", b"12", b"close", b"chunked", b"h"])


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([b"GET", b"HEAD", b"G T", b"get"]),
    st.sampled_from([b"/", b"/a b", b"http://h/p", b"/\x7f"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1 "]),
    st.lists(st.tuples(FIELD_NAMES | st.binary(max_size=4), FIELD_BYTES), max_size=5),
)
def test_a_request_the_reader_takes_reads_the_same_in_h11(
    method: bytes, target: bytes, version: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    head = b"%s %s %s\r\n" % (method, target, version)
    head += b"".join(b"%s: %s\r\n" % field for field in fields) + b"\r\n"
    try:
        plain = request_head(head, 64 * 1024)
    except NotPlain:
        return
    assert plain is not None
    server = h11.Connection(h11.SERVER)
    server.receive_data(head)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, request.target) == (plain.method.encode(), plain.target.encode())
    assert dict(request.headers)[b"host"].decode("latin-1") == plain.host
    assert isinstance(server.next_event(), h11.EndOfMessage)  # no body


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 204", b"HTTP/1.1 304 x", b"HTTP/1.1 99 x"]),
    st.lists(st.tuples(FIELD_NAMES | st.binary(max_size=4), FIELD_BYTES), max_size=5),
    st.booleans(),
)
def test_a_response_the_reader_takes_has_the_same_body_in_h11(
    status: bytes, fields: list[tuple[bytes, bytes]], to_head: bool
) -> None:
    head = status + b"\r\n" + b"".join(b"%s: %s\r\n" % field for field in fields) + b"\r\n"
    try:
        plain = response_head(head, 64 * 1024, to_head)
    except NotPlain:
        return
    assert plain is not None
    client = h11.Connection(h11.CLIENT)
    client.send(
        h11.Request(method=b"HEAD" if to_head else b"GET", target=b"/", headers=[(b"host", b"h")])
    )
    client.send(h11.EndOfMessage())
    client.receive_data(head + b"x" * plain.length + b"trailing")
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == plain.status
    body = b""
    while isinstance(event := client.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    assert len(body) == plain.length

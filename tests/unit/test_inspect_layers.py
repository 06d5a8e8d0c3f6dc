"""The sans-io inspection layers byte by byte: HTTP/1.1 and HTTP/2 filtering, TLS
interception between two in-memory TLS peers; garbage never crashes them."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwarden.inspect.commands import (
    Close,
    Command,
    HttpExchange,
    Relay,
    Send,
    Side,
    TlsFailed,
    TlsIntercepted,
)
from netwarden.inspect.http1 import Http1Filter
from netwarden.inspect.http2 import Http2Filter
from netwarden.inspect.identify import Identifier
from netwarden.inspect.scanning import EICAR, ContentScanning, Direction, EicarScanner, ScanAction
from netwarden.inspect.tls_intercept import TlsInterception, Untouched
from netwarden.policy.inspect_model import BlockResponse, HttpAction, HttpRule
from netwarden.testing.certs import make_server_files
from netwarden.tls import ca as ca_module
from netwarden.tls.contexts import TlsContexts
from netwarden.tls.leaves import LeafStore

RULES = (
    HttpRule("no-ads", 3, HttpAction.BLOCK, hosts=("*.ads.example",)),
    HttpRule(
        "no-uploads",
        7,
        HttpAction.BLOCK,
        methods=("POST",),
        path_prefixes=("/up",),
        respond=BlockResponse.RESET,
    ),
    HttpRule("no-exe", 9, HttpAction.BLOCK, path_regex=re.compile(r"\.exe$")),
    HttpRule("no-zip", 11, HttpAction.BLOCK, content_types=("application/zip",)),
    HttpRule(
        "tag",
        13,
        HttpAction.REWRITE,
        set_request_headers=(("X-Tag", "1"),),
        remove_response_headers=("server",),
    ),
)


def _sent(commands: list[Command], side: Side) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, Send) and c.side is side)


def _exchanges(commands: list[Command]) -> list[tuple[str, str, str]]:
    return [(c.path, c.verdict, c.rule) for c in commands if isinstance(c, HttpExchange)]


def test_http1_pipelined_requests_are_each_decided() -> None:
    layer = Http1Filter(RULES, "192.0.2.1")
    out = layer.from_client(
        b"GET /a HTTP/1.1\r\nHost: www.example\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x.ads.example\r\n\r\n"
        b"GET /setup.exe HTTP/1.1\r\nHost: www.example\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: www.example\r\n\r\n"
    )
    assert _sent(out, Side.SERVER) == b"GET /a HTTP/1.1\r\nHost: www.example\r\nX-Tag: 1\r\n\r\n"
    out = layer.from_server(b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\n\r\nhi")
    to_client = _sent(out, Side.CLIENT)
    assert to_client.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")  # no Server
    assert to_client.count(b"403 Forbidden") == 2  # /b and /setup.exe, in order
    assert b"no-ads" in to_client
    assert b"no-exe" in to_client
    assert _sent(out, Side.SERVER) == b"GET /c HTTP/1.1\r\nHost: www.example\r\nX-Tag: 1\r\n\r\n"
    assert _exchanges(out) == [
        ("/a", "allowed", ""),
        ("/b", "blocked", "no-ads"),
        ("/setup.exe", "blocked", "no-exe"),
    ]


def test_http1_reset_rule_and_body_streaming() -> None:
    layer = Http1Filter(RULES, "h")
    out = layer.from_client(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
    assert any(isinstance(c, Close) and c.reset for c in out)
    layer = Http1Filter(RULES, "h")
    out = layer.from_client(
        b"POST /other HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    assert _sent(out, Side.SERVER).endswith(b"5\r\nhello\r\n")
    out = layer.from_client(b"0\r\n\r\n")
    assert _sent(out, Side.SERVER) == b"0\r\n\r\n"


@pytest.mark.parametrize("rules", [RULES, RULES[:-1]], ids=["through h11", "plain heads"])
def test_http1_blocked_by_response_content_type(rules: tuple[HttpRule, ...]) -> None:
    layer = Http1Filter(rules, "h")
    layer.from_client(b"GET /file HTTP/1.1\r\nHost: h\r\n\r\n")
    out = layer.from_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: 4\r\n\r\nPK\x03\x04"
    )
    assert b"403 Forbidden" in _sent(out, Side.CLIENT)
    assert b"PK" not in _sent(out, Side.CLIENT)
    assert isinstance(out[-1], Close)


def test_http1_gives_up_on_what_is_not_http() -> None:
    assert Http1Filter(RULES, "h").from_client(b"\x00\x01binary\r\n\r\n") == [Relay()]


def test_http1_upgrade_switches_to_untouched_bytes() -> None:
    layer = Http1Filter(RULES, "h")
    layer.from_client(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    out = layer.from_server(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n\x81\x02hi"
    )
    assert _sent(out, Side.CLIENT).endswith(b"\x81\x02hi")
    assert _sent(layer.from_client(b"\x81\x05hello"), Side.SERVER) == b"\x81\x05hello"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.binary(max_size=600))
def test_http1_survives_garbage(from_client: bytes, from_server: bytes) -> None:
    layer = Http1Filter(RULES, "h")
    layer.from_client(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" + from_client)
    layer.from_server(from_server)
    layer.from_client(b"")
    layer.from_server(b"")


def _h2_peer(client_side: bool) -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )
    peer.initiate_connection()
    return peer


class _H2Wire:
    """A real h2 client and server on either side of the filter, bytes moved until
    nobody has anything more to say."""

    def __init__(
        self, respond: dict[bytes, tuple[bytes, bytes]], scanning: ContentScanning | None = None
    ) -> None:
        self.layer = Http2Filter(RULES, "h", scanning=scanning)
        self.client, self.server = _h2_peer(True), _h2_peer(False)
        self.respond = respond  # path -> (content type, body)
        self.client_events: list[h2.events.Event] = []
        self.commands: list[Command] = []
        self._deliver(self.layer.start())

    def request(self, stream_id: int, path: bytes, host: bytes = b"h") -> None:
        self.client.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":path", path), (b":scheme", b"https"), (b":authority", host)],
            end_stream=True,
        )

    def run(self) -> None:
        for _ in range(1000):
            moved = False
            data = self.client.data_to_send()
            if data:
                self._deliver(self.layer.from_client(data))
                moved = True
            data = self.server.data_to_send()
            if data:
                self._deliver(self.layer.from_server(data))
                moved = True
            if not moved:
                return

    def _deliver(self, commands: list[Command]) -> None:
        self.commands += commands
        for command in commands:
            if not isinstance(command, Send):
                continue
            if command.side is Side.CLIENT:
                events = self.client.receive_data(command.data)
                self.client_events += events
                for event in events:
                    if isinstance(event, h2.events.DataReceived):
                        self.client.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                continue
            for event in self.server.receive_data(command.data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict(event.headers or [])
                    kind, body = self.respond[headers[b":path"]]
                    self.server.send_headers(
                        event.stream_id,
                        [
                            (b":status", b"200"),
                            (b"content-type", kind),
                            (b"server", b"s"),
                            (b"x-seen-tag", headers.get(b"x-tag", b"-")),
                        ],
                    )
                    self._send_body(event.stream_id, body)

    def _send_body(self, stream_id: int, body: bytes) -> None:
        while body:
            window = min(
                self.server.local_flow_control_window(stream_id),
                self.server.max_outbound_frame_size,
            )
            if window <= 0:  # the filter's window is full: the test's bodies fit it
                raise AssertionError("the filter stopped reading")
            self.server.send_data(stream_id, body[:window])
            body = body[window:]
        self.server.end_stream(stream_id)

    def body_of(self, stream_id: int) -> bytes:
        return b"".join(
            e.data or b""
            for e in self.client_events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )

    def headers_of(self, stream_id: int) -> dict[bytes, bytes]:
        for event in self.client_events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                return dict(event.headers or [])
        return {}


def test_http2_streams_are_each_decided() -> None:
    wire = _H2Wire({b"/a": (b"text/plain", b"x" * 200_000), b"/z": (b"application/zip", b"PK")})
    wire.request(1, b"/a")
    wire.request(3, b"/", host=b"t.ads.example")
    wire.request(5, b"/z")
    wire.run()
    assert wire.body_of(1) == b"x" * 200_000
    assert wire.headers_of(1)[b"x-seen-tag"] == b"1"  # rewritten request
    assert b"server" not in wire.headers_of(1)  # rewritten response
    assert wire.headers_of(3)[b":status"] == b"403"
    assert b"no-ads" in wire.body_of(3)
    assert wire.headers_of(5)[b":status"] == b"403"  # by its content type
    assert b"PK" not in wire.body_of(5)
    assert sorted(_exchanges(wire.commands)) == [
        ("/", "blocked", "no-ads"),
        ("/a", "allowed", ""),
        ("/z", "blocked", "no-zip"),
    ]


def test_http2_scanned_downloads_each_decided() -> None:
    scanning = ContentScanning([EicarScanner(ScanAction.BLOCK, frozenset(Direction))], 1000)
    big = b"y" * 200_000 + EICAR
    wire = _H2Wire(
        {
            b"/a": (b"text/plain", b"x" * 200_000),
            b"/eicar": (b"text/plain", EICAR),
            b"/late": (b"text/plain", big),
        },
        scanning,
    )
    for stream_id, path in ((1, b"/a"), (3, b"/eicar"), (5, b"/late")):
        wire.request(stream_id, path)
    wire.run()
    assert wire.body_of(1) == b"x" * 200_000
    assert wire.headers_of(3)[b":status"] == b"403"
    assert b"EICAR-Test-File" in wire.body_of(3)
    assert EICAR not in wire.body_of(3)
    assert wire.headers_of(5)[b":status"] == b"200"  # the head went before the signature
    assert len(wire.body_of(5)) < len(big) - 900  # the hold-back never went
    reset = [e for e in wire.client_events if isinstance(e, h2.events.StreamReset)]
    assert [e.stream_id for e in reset] == [5]
    assert sorted(_exchanges(wire.commands)) == [
        ("/a", "allowed", ""),
        ("/eicar", "blocked", "eicar:EICAR-Test-File"),
        ("/late", "allowed", ""),
        ("/late", "blocked", "eicar:EICAR-Test-File"),
    ]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_http2_survives_garbage(data: bytes) -> None:
    layer = Http2Filter(RULES, "h")
    layer.start()
    layer.from_client(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + data)
    layer.from_server(data)


@pytest.fixture(scope="module")
def tls_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsContexts, Path, Path]:
    """Our CA and contexts (trusting a test CA for upstreams), and the test CA's
    server certificate and key."""
    base = tmp_path_factory.mktemp("tls")
    test_ca, cert, key = make_server_files(base / "server", ["web.test", "192.0.2.7"])
    ours = ca_module.create(base / "ca")
    contexts = TlsContexts(LeafStore(ours, base / "ca" / "leaves"), str(test_ca))
    return contexts, cert, key


class _Peer:
    def __init__(self, context: ssl.SSLContext, server_side: bool) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else "web.test",
        )
        self.plain = b""
        self.failure = ""

    def take(self, data: bytes) -> bytes:
        """Feed bytes from the wire; what the peer answers."""
        self.incoming.write(data)
        try:
            self.tls.do_handshake()
            self.plain += self.tls.read(65536)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:  # its alert still goes out
            self.failure = str(exc)
        return self.outgoing.read()


class _TlsWire:
    """A TLS client and server with the interception between them, in memory."""

    def __init__(
        self, contexts: TlsContexts, cert: Path, key: Path, trust_ours: bool, server_alpn: list[str]
    ) -> None:
        client_context = ssl.create_default_context(
            cafile=str(contexts.leaves.ca.certificate_path) if trust_ours else None
        )
        client_context.set_alpn_protocols(["h2", "http/1.1"])
        self.client = _Peer(client_context, server_side=False)
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert, key)
        server_context.set_alpn_protocols(server_alpn)
        self.server = _Peer(server_context, server_side=True)
        hello = self.client.take(b"")
        found = Identifier().feed(hello)
        assert found is not None
        assert found.hello is not None
        self.layer = TlsInterception(
            found.hello, hello, "192.0.2.7", contexts, lambda alpn, host: Untouched()
        )
        self.commands: list[Command] = []
        self.run(self.layer.start())

    def run(self, pending: list[Command]) -> None:
        for _ in range(50):
            self.commands += pending
            later: list[Command] = []
            for command in pending:
                if not isinstance(command, Send):
                    continue
                if command.side is Side.CLIENT:
                    reply = self.client.take(command.data)
                    later += self.layer.from_client(reply) if reply else []
                else:
                    reply = self.server.take(command.data)
                    later += self.layer.from_server(reply) if reply else []
            if not later:
                return
            pending = later

    def send(self, side: Side, data: bytes) -> None:
        peer = self.client if side is Side.CLIENT else self.server
        peer.tls.write(data)
        cipher = peer.outgoing.read()
        self.run(
            self.layer.from_client(cipher)
            if side is Side.CLIENT
            else self.layer.from_server(cipher)
        )


def test_tls_interception_between_two_real_tls_peers(
    tls_world: tuple[TlsContexts, Path, Path],
) -> None:
    wire = _TlsWire(*tls_world, trust_ours=True, server_alpn=["http/1.1"])
    intercepted = [c for c in wire.commands if isinstance(c, TlsIntercepted)]
    assert intercepted == [TlsIntercepted("web.test", "http/1.1", "TLSv1.3")]
    assert wire.client.tls.selected_alpn_protocol() == "http/1.1"  # as the server chose
    certificate = wire.client.tls.getpeercert()
    assert certificate is not None
    issuer = dict(pair[0] for pair in certificate["issuer"])  # type: ignore[misc]
    assert issuer["organizationName"] == "netwarden"
    wire.send(Side.CLIENT, b"ping")
    assert wire.server.plain == b"ping"
    wire.send(Side.SERVER, b"pong")
    assert wire.client.plain == b"pong"


def test_a_client_refusing_our_certificate_is_reported(
    tls_world: tuple[TlsContexts, Path, Path],
) -> None:
    wire = _TlsWire(*tls_world, trust_ours=False, server_alpn=["h2"])
    failed = [c for c in wire.commands if isinstance(c, TlsFailed)]
    assert [(f.side, f.server_name) for f in failed] == [(Side.CLIENT, "web.test")]
    assert "certificate verify failed" in wire.client.failure
    assert "UNKNOWN_CA" in failed[0].reason.upper() or "CERTIFICATE" in failed[0].reason.upper()


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=500))
def test_tls_interception_survives_garbage(
    tls_world: tuple[TlsContexts, Path, Path], data: bytes
) -> None:
    wire = _TlsWire(*tls_world, trust_ours=True, server_alpn=["http/1.1"])
    wire.layer.from_server(data)
    wire.layer.from_client(data)
    wire.layer.from_client(b"")
    wire.layer.from_server(b"")


def test_http1_long_bodies_pass_by_count_and_the_next_request_follows() -> None:
    layer = Http1Filter(RULES, "h")
    layer.from_client(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n"
    out = layer.from_server(head + b"a" * 1000)
    assert layer.counted == 199_000  # the rest passes by count
    body = _sent(out, Side.CLIENT)[len(head) :]
    assert layer.from_client(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n") == []  # waits
    for _ in range(19):
        body += _sent(layer.from_server(b"b" * 10_000), Side.CLIENT)
    last = layer.from_server(b"c" * 9_000)
    body += _sent(last, Side.CLIENT)
    assert body == b"a" * 1000 + b"b" * 190_000 + b"c" * 9_000
    assert _sent(last, Side.SERVER) == b"GET /next HTTP/1.1\r\nHost: h\r\nX-Tag: 1\r\n\r\n"
    out = layer.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert _sent(out, Side.CLIENT).endswith(b"\r\n\r\nok")
    assert _exchanges(out) == [("/next", "allowed", "")]


def test_http1_counted_body_then_close_or_short_bodies_through_h11() -> None:
    layer = Http1Filter(RULES, "h")
    layer.from_client(b"GET /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    layer.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    assert layer.counted == 100_000
    assert layer.from_server(b"x" * 100_000)[-1] == Close()
    short = Http1Filter(RULES, "h")
    short.from_client(b"GET /small HTTP/1.1\r\nHost: h\r\n\r\n")
    short.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert short.counted is None
    assert _sent(short.from_server(b"x" * 1000), Side.CLIENT) == b"x" * 1000  # through h11


def test_leaves_are_cached_and_signed_anew_before_they_expire(
    tls_world: tuple[TlsContexts, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime

    from cryptography import x509

    from netwarden.tls import leaves

    contexts = tls_world[0]
    first = contexts.for_client(None, "renew.test", "")
    assert contexts.for_client(None, "renew.test", "") is first  # cached
    path, expires = contexts.leaves.leaf(("renew.test",))
    stored = x509.load_pem_x509_certificate(path.read_bytes())
    assert stored.issuer == contexts.leaves.ca.certificate.subject
    assert expires - datetime.datetime.now(datetime.UTC) <= leaves.LEAF_VALIDITY
    # Within a day of expiry (here: always), the leaf is signed again and the context
    # presenting it is made again.
    monkeypatch.setattr(leaves, "RENEW_BEFORE", leaves.LEAF_VALIDITY * 2)
    renewed = contexts.for_client(None, "renew.test", "")
    assert renewed is not first
    assert x509.load_pem_x509_certificate(path.read_bytes()).serial_number != (stored.serial_number)


def test_expired_leaf_files_are_removed_when_the_store_opens(tmp_path: Path) -> None:
    import os

    ours = ca_module.create(tmp_path / "ca")
    store = LeafStore(ours, tmp_path / "leaves")
    fresh = store.chain_file(("fresh.test",))
    old = store.chain_file(("old.test",))
    long_ago = old.stat().st_mtime - 30 * 86400
    os.utime(old, (long_ago, long_ago))
    LeafStore(ours, tmp_path / "leaves")
    assert fresh.exists()
    assert not old.exists()

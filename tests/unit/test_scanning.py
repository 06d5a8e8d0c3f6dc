"""Content scanning and DLP as logic: signatures and patterns found across pieces, the
hold-back, what the HTTP layers do with a finding, clamd's protocol."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwarden.inspect.clamd import UNAVAILABLE, ClamdScanner, parse_address
from netwarden.inspect.commands import Close, Command, Detected, HttpExchange, Send, Side
from netwarden.inspect.dlp import (
    BUILTIN,
    Candidates,
    DlpRule,
    DlpScanner,
    candidates_in_python,
    find_candidates,
    luhn_valid,
    user_pattern,
)
from netwarden.inspect.dlp import CARD as CARD_REGEX
from netwarden.inspect.http1 import Http1Filter
from netwarden.inspect.http2 import Http2Filter
from netwarden.inspect.scanning import (
    EICAR,
    BodyScan,
    ContentScanning,
    Direction,
    EicarScanner,
    ScanAction,
)
from netwarden.inspect.stream_scan import StreamScan
from netwarden.policy.quantities import parse_bytes, parse_rate

BOTH = frozenset(Direction)
CARD = b"4111 1111 1111 1111"  # passes Luhn
NOT_A_CARD = b"4111 1111 1111 1112"


def _eicar(action: ScanAction = ScanAction.BLOCK) -> EicarScanner:
    return EicarScanner(action, BOTH)


def _dlp(action: ScanAction = ScanAction.BLOCK) -> DlpScanner:
    return DlpScanner(
        [
            DlpRule("cards", 1, BUILTIN["card"], action),
            DlpRule("keys", 2, BUILTIN["private_key"], action),
            DlpRule("cloud", 3, BUILTIN["cloud_key"], action),
            DlpRule("codename", 4, user_pattern(r"ZEPHYR-[0-9]{4}"), ScanAction.LOG),
        ]
    )


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _scan_all(scan: BodyScan, data: bytes, size: int) -> tuple[bytes, list[str], bool]:
    released = b""
    found: list[str] = []
    for piece in _pieces(data, size):
        step = scan.feed(piece)
        released += step.release
        found += [f.signature for f in step.found]
    step = scan.finish()
    found += [f.signature for f in step.found]
    return released + step.release, found, scan.blocked is not None


@pytest.mark.parametrize("size", [1, 7, 67, 68, 4096])
def test_eicar_is_found_whatever_the_pieces(size: int) -> None:
    body = b"x" * 1000 + EICAR + b"y" * 1000
    scan = ContentScanning([_eicar()], hold_back=0).body(Direction.DOWNLOAD)
    assert scan is not None
    released, found, blocked = _scan_all(scan, body, size)
    assert found == ["EICAR-Test-File"]
    assert blocked
    assert len(released) < 1000 + len(EICAR)  # the signature's end never went


def test_clean_bodies_pass_whole_and_the_end_waits_for_the_scan() -> None:
    body = bytes(range(256)) * 100
    scan = ContentScanning([_eicar()], hold_back=1000).body(Direction.UPLOAD)
    assert scan is not None
    first = scan.feed(body[:5000])
    assert first.release == body[:4000]  # the last 1000 bytes are held
    released, found, blocked = _scan_all(scan, body[5000:], 333)
    assert first.release + released == body
    assert not found
    assert not blocked


def test_a_finding_only_logged_lets_the_body_pass() -> None:
    scan = ContentScanning([_eicar(ScanAction.LOG)], hold_back=10).body(Direction.DOWNLOAD)
    assert scan is not None
    released, found, blocked = _scan_all(scan, EICAR * 2, 5)
    assert released == EICAR * 2
    assert found == ["EICAR-Test-File"]
    assert not blocked


def test_max_size_limits_what_is_scanned() -> None:
    scan = ContentScanning([_eicar()], hold_back=0, max_size=100).body(Direction.DOWNLOAD)
    assert scan is not None
    released, found, blocked = _scan_all(scan, b"z" * 200 + EICAR, 50)
    assert not found
    assert not blocked
    assert released.endswith(EICAR)
    assert scan.unscanned == 100 + len(EICAR)


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize("size", [1, 5, 16, 1000])
def test_dlp_finds_cards_keys_and_own_patterns_across_pieces(size: int) -> None:
    body = (
        b"name=a&card="
        + CARD
        + b"&other="
        + NOT_A_CARD
        + b"&k=-----BEGIN RSA PRIVATE KEY-----\nMIIE&aws=AKIAIOSFODNN7EXAMPLE&note=ZEPHYR-2291"
    )
    session = _dlp().session(Direction.UPLOAD)
    assert session is not None
    found = []
    for piece in _pieces(body, size):
        found += session.feed(piece)
    found += session.finish()
    seen = sorted((f.signature, f.matched, f.action.value) for f in found)
    assert seen == [
        ("cards", "************1111", "block"),
        ("cloud", "AKIA************MPLE", "block"),
        ("codename", "*" * 11, "log"),
        ("keys", "-----BEGIN RSA PRIVATE KEY-----", "block"),
    ]


def test_dlp_looks_at_uploads_only() -> None:
    assert _dlp().session(Direction.DOWNLOAD) is None


def test_a_card_number_at_the_very_end_is_found_at_finish() -> None:
    session = _dlp().session(Direction.UPLOAD)
    assert session is not None
    assert session.feed(b"card=" + CARD[:10]) == []
    assert session.feed(CARD[10:]) == []  # it could go on
    assert [f.matched for f in session.finish()] == ["************1111"]


def test_quantities() -> None:
    assert parse_bytes(5) == 5
    assert parse_bytes("1 MiB") == 1 << 20
    assert parse_bytes("5MB") == 5_000_000
    assert parse_rate("2 MB/s") == 2_000_000
    for bad in ("1 XB", "-1", True, "MB", 1.5):
        with pytest.raises(ValueError, match="not an amount"):
            parse_bytes(bad)
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate("2 MB")


def _sent(commands: list[Command], side: Side) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, Send) and c.side is side)


def _scanning(hold_back: int = 1 << 20) -> ContentScanning:
    return ContentScanning([_eicar(), _dlp()], hold_back)


def test_http1_eicar_download_gets_the_block_page() -> None:
    layer = Http1Filter((), "h", scanning=_scanning())
    layer.from_client(b"GET /eicar.com HTTP/1.1\r\nHost: files.example\r\n\r\n")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(EICAR)
    out = layer.from_server(head) + layer.from_server(EICAR[:30]) + layer.from_server(EICAR[30:])
    page = _sent(out, Side.CLIENT)
    assert page.startswith(b"HTTP/1.1 403 Forbidden")
    assert b"EICAR-Test-File" in page
    assert EICAR not in page
    assert isinstance(out[-1], Close)
    detected = [c for c in out if isinstance(c, Detected)]
    assert [(d.scanner, d.action, d.direction, d.path) for d in detected] == [
        ("eicar", "blocked", "download", "/eicar.com")
    ]
    assert [c.verdict for c in out if isinstance(c, HttpExchange)] == ["blocked"]


def test_http1_clean_download_and_keep_alive_go_on() -> None:
    layer = Http1Filter((), "h", scanning=_scanning(hold_back=10))
    layer.from_client(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    out = layer.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
    assert _sent(out, Side.CLIENT) == b""  # the head waits for the body's first release
    out = layer.from_server(b"0123456789abcdefghij")
    assert _sent(out, Side.CLIENT) == b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + (
        b"0123456789abcdefghij"
    )
    assert _sent(out, Side.SERVER) == b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"  # the next one


def test_http1_eicar_after_the_hold_back_resets_the_client() -> None:
    layer = Http1Filter((), "h", scanning=_scanning(hold_back=100))
    layer.from_client(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    out = layer.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1068\r\n\r\n" + b"a" * 1000)
    assert len(_sent(out, Side.CLIENT)) > 900  # 900 bytes of body went, with the head
    out = layer.from_server(EICAR)
    assert out[-1] == Close(reset=True, reason="eicar found EICAR-Test-File in the download")


def test_http1_upload_with_a_card_number_never_reaches_the_server() -> None:
    layer = Http1Filter((), "h", scanning=_scanning())
    body = b"card=" + CARD
    out = layer.from_client(
        b"POST /pay HTTP/1.1\r\nHost: shop.example\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert _sent(out, Side.SERVER) == b""  # not even the request's head
    assert _sent(out, Side.CLIENT).startswith(b"HTTP/1.1 403 Forbidden")
    detected = [c for c in out if isinstance(c, Detected)]
    assert [(d.signature, d.matched) for d in detected] == [("cards", "************1111")]


def test_http1_upload_failing_luhn_passes() -> None:
    layer = Http1Filter((), "h", scanning=_scanning())
    body = b"card=" + NOT_A_CARD
    out = layer.from_client(
        b"POST /pay HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert _sent(out, Side.SERVER).endswith(body)
    assert not [c for c in out if isinstance(c, Detected | Close)]


def test_http1_upload_waiting_for_100_continue_gets_it_from_netwarden() -> None:
    layer = Http1Filter((), "h", scanning=_scanning(hold_back=4))
    out = layer.from_client(
        b"POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
    )
    assert _sent(out, Side.CLIENT) == b"HTTP/1.1 100 \r\n\r\n"
    assert _sent(out, Side.SERVER) == b""
    out = layer.from_client(b"0123456789")
    assert _sent(out, Side.SERVER) == (
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"
    )


def test_raw_streams_are_scanned_piece_by_piece() -> None:
    layer = StreamScan(_scanning())
    out = layer.from_client(b"hello ") + layer.from_server(b"world")
    assert _sent(out, Side.SERVER) == b"hello "
    assert _sent(out, Side.CLIENT) == b"world"
    out = layer.from_server(EICAR[:40]) + layer.from_server(EICAR[40:])
    assert isinstance(out[-1], Close)
    assert out[-1].reset


class _FakeClamd:
    """clamd's INSTREAM protocol, for the adapter's logic (the real clamd is used in the
    integration tests): answers FOUND when the stream holds `marker`."""

    def __init__(self, path: Path, marker: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.marker = marker
        self.streams: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\0"):
                    data += conn.recv(1)
                assert data == b"zINSTREAM\0"
                stream = b""
                while True:
                    (length,) = struct.unpack("!I", self._exactly(conn, 4))
                    if not length:
                        break
                    stream += self._exactly(conn, length)
                self.streams.append(stream)
                verdict = b"Test.Marker FOUND" if self.marker in stream else b"OK"
                conn.sendall(b"stream: " + verdict + b"\0")

    @staticmethod
    def _exactly(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            data += conn.recv(size - len(data))
        return data


def test_clamd_adapter_streams_bodies_and_reads_the_verdict(tmp_path: Path) -> None:
    clamd = _FakeClamd(tmp_path / "clamd.sock", b"MARKER")
    scanner = ClamdScanner(str(tmp_path / "clamd.sock"), ScanAction.BLOCK, ScanAction.LOG, BOTH)
    scan = ContentScanning([scanner], hold_back=1 << 20).body(Direction.DOWNLOAD)
    assert scan is not None
    released, found, blocked = _scan_all(scan, b"a" * 5000 + b"MARKER" + b"b" * 5000, 1000)
    assert found == ["Test.Marker"]
    assert blocked
    assert released == b""
    assert clamd.streams == [b"a" * 5000 + b"MARKER" + b"b" * 5000]
    clean = ContentScanning([scanner], hold_back=10).body(Direction.DOWNLOAD)
    assert clean is not None
    assert _scan_all(clean, b"c" * 3000, 1000) == (b"c" * 3000, [], False)


def test_clamd_down_gives_the_configured_fail_mode(tmp_path: Path) -> None:
    missing = str(tmp_path / "nobody.sock")
    for on_error, blocked in ((ScanAction.BLOCK, True), (ScanAction.LOG, False)):
        scanner = ClamdScanner(missing, ScanAction.BLOCK, on_error, BOTH)
        scan = ContentScanning([scanner], hold_back=100).body(Direction.UPLOAD)
        assert scan is not None
        step = scan.feed(b"data")
        assert [f.signature for f in step.found] == [UNAVAILABLE]
        assert "No such file" in step.found[0].matched
        assert (scan.blocked is not None) is blocked
        assert scan.finish().release == (b"" if blocked else b"data")


def test_clamd_addresses() -> None:
    assert parse_address("/run/clamav/clamd.ctl") == "/run/clamav/clamd.ctl"
    assert parse_address("127.0.0.1:3310") == ("127.0.0.1", 3310)
    assert parse_address("[::1]:3310") == ("::1", 3310)
    for bad in ("clamd", "host:0", ":3310", "host:http"):
        with pytest.raises(ValueError, match="neither a unix socket path nor host:port"):
            parse_address(bad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["4111", "1", " ", "-", "x", "1111 ", "0000-", "a9"]), max_size=80))
def test_the_card_search_finds_what_the_full_regex_finds(parts: list[str]) -> None:
    text = "".join(parts).encode()
    wanted = [(m.start(), m.end()) for m in CARD_REGEX.finditer(text)]
    for find in (candidates_in_c, candidates_in_python):
        fast = BUILTIN["card"].matches(text, find(text))
        assert [(m.start(), m.end()) for m in fast] == wanted


def candidates_in_c(buffer: bytes) -> Candidates:
    """The C module's candidates (setup builds it; the dev setup has a compiler)."""
    from netwarden.inspect._dlpscan import candidates

    card_runs, key_starts = candidates(buffer)
    return Candidates(card_runs, key_starts)


def test_the_dlp_candidates_come_from_c_where_it_was_built() -> None:
    assert find_candidates is not candidates_in_python


KEY_PARTS = ["AKIA", "ASIA", "AIza", "ghp_", "xoxb-", "Q", "7", " ", "_"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(KEY_PARTS), max_size=60))
def test_cloud_keys_are_found_by_their_prefixes_as_by_the_regexes(parts: list[str]) -> None:
    text = "".join(parts).encode()
    found = []
    for find in (candidates_in_c, candidates_in_python):
        keys = BUILTIN["cloud_key"].matches(text, find(text))
        found.append(sorted((m.start(), m.end()) for m in keys))
    assert found[0] == found[1]


def test_http1_long_bodies_by_count_are_still_scanned_and_held() -> None:
    layer = Http1Filter((), "h", scanning=_scanning(hold_back=1000))
    layer.from_client(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    body = b"z" * 200_000
    out = layer.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + body[:100])
    assert layer.counted is not None  # passed on by count, not through h11
    out += layer.from_server(body[100:150_000])
    sent = _sent(out, Side.CLIENT)
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert sent.endswith(b"z" * 1000)
    assert len(sent) == len(sent.split(b"\r\n\r\n", 1)[0]) + 4 + 149_000  # 1000 held
    out = layer.from_server(body[150_000:])
    assert _sent(out, Side.CLIENT) == b"z" * 51_000
    assert _sent(out, Side.SERVER) == b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"  # the next one
    out = layer.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 500)
    out += layer.from_server(b"y" * 99_000)
    out += layer.from_server(EICAR[:30])
    assert not [c for c in out if isinstance(c, Close)]
    out = layer.from_server(EICAR[30:] + b"y" * (500 - len(EICAR)))
    assert out[-1] == Close(reset=True, reason="eicar found EICAR-Test-File in the download")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"5\r\nhello\r\n",
                b"0\r\n\r\n",
                EICAR[:30],
                EICAR[30:],
                CARD,
                b"z" * 40_000,
                b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
                b"\x00\xff garbage \r\n\r\n",
                b"",
            ]
        ),
        max_size=12,
    ),
    st.lists(st.booleans(), max_size=12),
)
def test_scanning_layers_survive_anything_either_side_sends(
    pieces: list[bytes], sides: list[bool]
) -> None:
    """Whatever arrives in whatever order (as the proxy would deliver it: nothing after
    a side's end or a Close): commands out, never an exception."""
    layers: list[Http1Filter | StreamScan] = [
        Http1Filter((), "h", scanning=_scanning(hold_back=100)),
        StreamScan(_scanning(hold_back=100)),
    ]
    for layer in layers:
        ended: set[bool] = set()
        out = layer.from_client(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n")
        for piece, from_client in zip(pieces, sides, strict=False):
            if any(isinstance(c, Close) for c in out) or from_client in ended:
                break
            out = layer.from_client(piece) if from_client else layer.from_server(piece)
            if not piece:
                ended.add(from_client)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=400))
def test_http2_with_scanning_survives_garbage(from_client: bytes, from_server: bytes) -> None:
    layer = Http2Filter((), "h", scanning=_scanning(hold_back=100))
    layer.start()
    layer.from_client(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + from_client)
    layer.from_server(from_server)


def _h2(client_side: bool) -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )
    peer.initiate_connection()
    return peer


def test_http2_uploads_go_upstream_only_once_scanned() -> None:
    """A blocked upload never reaches the server, not even its headers; a clean one
    arrives whole."""
    layer = Http2Filter((), "h", scanning=_scanning(hold_back=1000))
    client, server = _h2(True), _h2(False)
    to_server: list[h2.events.Event] = []
    to_client: list[h2.events.Event] = []

    def move(commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Send):
                if command.side is Side.CLIENT:
                    to_client.extend(client.receive_data(command.data))
                else:
                    to_server.extend(server.receive_data(command.data))

    move(layer.start())
    for stream_id, body in ((1, b"words, then " + EICAR), (3, b"just words")):
        headers = [
            (b":method", b"POST"),
            (b":path", b"/up"),
            (b":scheme", b"https"),
            (b":authority", b"h"),
        ]
        client.send_headers(stream_id, headers)
        client.send_data(stream_id, body, end_stream=True)
    move(layer.from_client(client.data_to_send()))
    move(layer.from_server(server.data_to_send()))
    opened = [e for e in to_server if isinstance(e, h2.events.RequestReceived)]
    assert len(opened) == 1  # only the clean one
    data = b"".join(e.data or b"" for e in to_server if isinstance(e, h2.events.DataReceived))
    assert data == b"just words"
    answers = {
        e.stream_id: dict(e.headers or [])[b":status"]
        for e in to_client
        if isinstance(e, h2.events.ResponseReceived)
    }
    assert answers == {1: b"403"}

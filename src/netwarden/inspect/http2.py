"""HTTP/2 between a client and a server, stream by stream (sans-io, on h2).

netwarden terminates HTTP/2 on both sides: each client stream is decided by the HTTP
rules like an HTTP/1.1 request; allowed ones open a stream upstream, blocked ones are
answered with the block page (or reset) and never leave. Data moves under both
sides' flow control: what a side sent is acknowledged only once it has been passed
on, so a slow reader slows its writer instead of filling memory.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from netwarden.inspect.commands import Close, Command, HttpExchange, Observed, Send, Side
from netwarden.inspect.http_rules import (
    RequestVerdict,
    block_page,
    blocked_by_content,
    decide_request,
    rewritten,
    scan_block_page,
)
from netwarden.inspect.scanning import (
    BodyScan,
    ContentScanning,
    Direction,
    Finding,
    Scanned,
    detections,
)
from netwarden.policy.inspect_model import BlockResponse, HttpRule

STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 8 << 20
Headers = list[tuple[bytes, bytes]]


@dataclass
class _Outbound:
    """Data waiting for the receiving side's flow-control window."""

    chunks: deque[tuple[bytes, int]] = field(default_factory=deque)  # (data, to acknowledge)
    end: bool = False
    trailers: Headers | None = None


@dataclass
class _Stream:
    method: str
    host: str
    path: str
    verdict: RequestVerdict
    client_id: int
    server_id: int = 0  # 0: never sent upstream (blocked)
    status: int = 0
    blocked: bool = False
    request_ended: bool = False  # with its headers
    to_server: _Outbound = field(default_factory=_Outbound)
    to_client: _Outbound = field(default_factory=_Outbound)
    upload: BodyScan | None = None
    download: BodyScan | None = None
    held: Headers | None = None  # the response's headers, until its body is scanned
    pending: Headers | None = None  # the request's headers, until its body is scanned
    answered: bool = False  # the client has the response's headers
    decided_by: str = ""  # what blocked it when no rule did (a scanner)

    def report(self) -> HttpExchange:
        rule = self.verdict.blocked_by or self.verdict.allowed_by
        verdict = "blocked" if self.blocked else "allowed"
        name = self.decided_by or (rule.name if rule else "")
        return HttpExchange(self.method, self.host, self.path, verdict, name, self.status)


def _connection(client_side: bool) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    connection = h2.connection.H2Connection(config=config)
    settings = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 128,
    }
    if client_side:
        settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    connection.local_settings = h2.settings.Settings(client=client_side, initial_values=settings)
    connection.initiate_connection()
    connection.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return connection


def _pseudo(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


def _bare(authority: str) -> str:
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


class Http2Filter:
    def __init__(
        self,
        rules: Sequence[HttpRule],
        default_host: str,
        observe: bool = False,
        scanning: ContentScanning | None = None,
    ) -> None:
        self.observe = observe
        self.scanning = scanning
        self.rules = tuple(rules)
        self.default_host = default_host
        self.client = _connection(client_side=False)
        self.server = _connection(client_side=True)
        self.by_client: dict[int, _Stream] = {}
        self.by_server: dict[int, _Stream] = {}

    def start(self) -> list[Command]:
        return self._flush([])

    # -- bytes in ----------------------------------------------------------------

    def from_client(self, data: bytes) -> list[Command]:
        if not data:
            return [Close()]
        out: list[Command] = []
        try:
            for event in self.client.receive_data(data):
                out += self._client_event(event)
        except h2.exceptions.ProtocolError as exc:
            return [Close(reason=f"client broke HTTP/2: {exc}")]
        return self._flush(out)

    def from_server(self, data: bytes) -> list[Command]:
        if not data:
            return [Close()]
        out: list[Command] = []
        try:
            for event in self.server.receive_data(data):
                out += self._server_event(event)
        except h2.exceptions.ProtocolError as exc:
            return [Close(reason=f"server broke HTTP/2: {exc}")]
        return self._flush(out)

    # -- the client's side -------------------------------------------------------

    def _client_event(self, event: h2.events.Event) -> list[Command]:
        if isinstance(event, h2.events.RequestReceived):
            return self._request(event)
        if isinstance(event, h2.events.ConnectionTerminated):
            return [Close()]
        if isinstance(event, h2.events.WindowUpdated):
            self._drain_all(Side.CLIENT)
            return []
        stream_id = getattr(event, "stream_id", 0)
        stream = self.by_client.get(stream_id)
        if stream is None:
            if isinstance(event, h2.events.DataReceived):
                self.client.acknowledge_received_data(event.flow_controlled_length, stream_id)
            return []
        if isinstance(event, h2.events.StreamEnded) and stream.request_ended and not stream.blocked:
            return self._observed(stream, Side.CLIENT, b"", end=True)  # sent with its headers
        if isinstance(
            event, h2.events.DataReceived | h2.events.TrailersReceived | h2.events.StreamEnded
        ):
            return self._pass_on(stream, Side.CLIENT, event)
        if isinstance(event, h2.events.StreamReset):
            if stream.server_id:
                self._reset(self.server, stream.server_id, event.error_code)
            self._forget(stream)
        return []

    def _request(self, event: h2.events.RequestReceived) -> list[Command]:
        headers = list(event.headers or [])
        method = _pseudo(headers, b":method")
        host = _bare(
            _pseudo(headers, b":authority") or _pseudo(headers, b"host") or self.default_host
        )
        path = _pseudo(headers, b":path") or "/"
        verdict = decide_request(self.rules, method, host, path)
        stream = _Stream(method, host, path, verdict, event.stream_id)
        self.by_client[event.stream_id] = stream
        if verdict.blocked_by is not None:
            return self._refuse(stream, verdict.blocked_by)
        changed = rewritten(
            headers,
            ((_lower(r.set_request_headers), r.remove_request_headers) for r in verdict.rewrites),
        )
        ended = stream.request_ended = event.stream_ended is not None
        if not ended and self.scanning is not None:
            stream.upload = self.scanning.body(Direction.UPLOAD)
        if stream.upload is not None:
            # Opened upstream with the first part of the body the scanners release: a
            # body blocked within the hold-back never reaches the server at all.
            stream.pending = changed
            return []
        return self._open_upstream(stream, changed, ended)

    def _open_upstream(self, stream: _Stream, headers: Headers, ended: bool) -> list[Command]:
        stream.server_id = self.server.get_next_available_stream_id()
        self.by_server[stream.server_id] = stream
        try:
            self.server.send_headers(stream.server_id, headers, end_stream=ended)
        except h2.exceptions.ProtocolError as exc:
            return self._refuse_error(stream, f"cannot open the stream upstream: {exc}")
        return []

    def _refuse(self, stream: _Stream, rule: HttpRule) -> list[Command]:
        stream.blocked = True
        if rule.respond is BlockResponse.RESET:
            self._reset(self.client, stream.client_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._forget(stream)
            return [stream.report()]
        headers, body = block_page(rule, stream.method, stream.host, stream.path)
        stream.status = 403
        return self._answer(stream, 403, headers, body)

    def _refuse_error(self, stream: _Stream, reason: str) -> list[Command]:
        stream.blocked = True
        body = f"netwarden: {reason}\n".encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        stream.status = 502
        return self._answer(stream, 502, headers, body)

    def _answer(self, stream: _Stream, status: int, headers: Headers, body: bytes) -> list[Command]:
        try:
            self.client.send_headers(
                stream.client_id, [(b":status", str(status).encode()), *headers]
            )
        except h2.exceptions.ProtocolError:
            self._forget(stream)
            return [stream.report()]
        stream.to_client.chunks.append((body, 0))
        stream.to_client.end = True
        self._drain(stream, Side.CLIENT)
        return [stream.report()]

    # -- the server's side -------------------------------------------------------

    def _server_event(self, event: h2.events.Event) -> list[Command]:
        if isinstance(event, h2.events.ConnectionTerminated):
            return [Close(reason="the server ended the HTTP/2 connection")]
        if isinstance(event, h2.events.WindowUpdated):
            self._drain_all(Side.SERVER)
            return []
        stream_id = getattr(event, "stream_id", 0)
        stream = self.by_server.get(stream_id)
        if stream is None:
            if isinstance(event, h2.events.DataReceived):
                self.server.acknowledge_received_data(event.flow_controlled_length, stream_id)
            return []
        if isinstance(event, h2.events.ResponseReceived):
            return self._response(stream, list(event.headers or []), event.stream_ended is not None)
        if isinstance(event, h2.events.InformationalResponseReceived):
            self._send_headers(stream, list(event.headers or []), end=False)
        elif isinstance(
            event, h2.events.DataReceived | h2.events.TrailersReceived | h2.events.StreamEnded
        ):
            return self._pass_on(stream, Side.SERVER, event)
        elif isinstance(event, h2.events.StreamReset):
            self._reset(self.client, stream.client_id, event.error_code)
            self._forget(stream)
        return []

    def _response(self, stream: _Stream, headers: Headers, ended: bool) -> list[Command]:
        stream.status = int(_pseudo(headers, b":status") or 0)
        rule = blocked_by_content(stream.verdict, _pseudo(headers, b"content-type"))
        if rule is not None:
            self._reset(self.server, stream.server_id, h2.errors.ErrorCodes.CANCEL)
            del self.by_server[stream.server_id]
            stream.server_id = 0
            stream.verdict = RequestVerdict(blocked_by=rule)
            return self._refuse(stream, rule)
        changed = rewritten(
            headers,
            (
                (_lower(r.set_response_headers), r.remove_response_headers)
                for r in stream.verdict.rewrites
            ),
        )
        if not ended and self._scans_download(stream):
            stream.held = changed
            return []
        self._send_headers(stream, changed, end=ended)
        if ended:
            self._forget(stream)
        return [stream.report()]

    def _scans_download(self, stream: _Stream) -> bool:
        if self.scanning is None or stream.method == "HEAD" or stream.status in (204, 304):
            return False
        stream.download = self.scanning.body(Direction.DOWNLOAD)
        return stream.download is not None

    def _send_headers(self, stream: _Stream, headers: Headers, end: bool) -> None:
        stream.answered = stream.answered or not _pseudo(headers, b":status").startswith("1")
        try:
            self.client.send_headers(stream.client_id, headers, end_stream=end)
        except h2.exceptions.ProtocolError:
            self._reset(self.server, stream.server_id, h2.errors.ErrorCodes.CANCEL)
            self._forget(stream)

    def _pass_on(
        self,
        stream: _Stream,
        source: Side,
        event: h2.events.DataReceived | h2.events.TrailersReceived | h2.events.StreamEnded,
    ) -> list[Command]:
        """A stream's data, trailers or end, from source to the other side (dropped,
        and its data acknowledged at once, when the stream is blocked)."""
        connection = self.client if source is Side.CLIENT else self.server
        outbound = stream.to_server if source is Side.CLIENT else stream.to_client
        scan = stream.upload if source is Side.CLIENT else stream.download
        if isinstance(event, h2.events.DataReceived):
            if stream.blocked:
                connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return []
            data = event.data or b""
            seen = self._observed(stream, source, data)
            if scan is None:
                outbound.chunks.append((data, event.flow_controlled_length))
                self._drain(stream, source.other)
                return seen
            # What the scan holds back is acknowledged at once (it is bounded by the
            # hold-back), what it releases when it is passed on.
            scanned = scan.feed(data)
            held = max(0, event.flow_controlled_length - len(scanned.release))
            if held:
                connection.acknowledge_received_data(held, event.stream_id)
            released = event.flow_controlled_length - held
            return seen + self._scanned(stream, source, scanned, released)
        if stream.blocked:
            return []
        if isinstance(event, h2.events.TrailersReceived):
            outbound.trailers = list(event.headers or [])
        out: list[Command] = []
        if scan is not None:
            out = self._scanned(stream, source, scan.finish(), 0, end=True)
            if stream.blocked:
                return out
        outbound.end = True
        self._drain(stream, source.other)
        return out + self._observed(stream, source, b"", end=True)

    def _scanned(
        self, stream: _Stream, source: Side, scanned: Scanned, acknowledge: int, end: bool = False
    ) -> list[Command]:
        """A scan's step: its findings reported; what it released passed on (the
        response's headers first), or the stream refused."""
        way = Direction.UPLOAD if source is Side.CLIENT else Direction.DOWNLOAD
        out: list[Command] = [*detections(scanned, way, stream.method, stream.host, stream.path)]
        if scanned.blocked is not None:
            return out + self._refuse_scanned(stream, scanned.blocked, way)
        if stream.held is not None and source is Side.SERVER and (scanned.release or end):
            self._send_headers(stream, stream.held, end=False)
            stream.held = None
            out.append(stream.report())
        if stream.pending is not None and source is Side.CLIENT and (scanned.release or end):
            headers, stream.pending = stream.pending, None
            out += self._open_upstream(stream, headers, ended=False)
        if scanned.release:
            outbound = stream.to_server if source is Side.CLIENT else stream.to_client
            outbound.chunks.append((scanned.release, acknowledge))
            self._drain(stream, source.other)
        return out

    def _refuse_scanned(self, stream: _Stream, finding: Finding, way: Direction) -> list[Command]:
        """The upstream stream is cancelled; the client gets the block page when it has
        no response yet, else its stream is reset."""
        stream.blocked = True
        stream.decided_by = f"{finding.scanner}:{finding.signature}"
        self._reset(self.server, stream.server_id, h2.errors.ErrorCodes.CANCEL)
        self.by_server.pop(stream.server_id, None)
        for connection, stream_id, outbound in (
            (self.client, stream.client_id, stream.to_server),
            (self.server, stream.server_id, stream.to_client),
        ):
            dropped = sum(acknowledge for _, acknowledge in outbound.chunks)
            if dropped and stream_id:
                connection.acknowledge_received_data(dropped, stream_id)
        stream.server_id = 0
        stream.to_server, stream.to_client = _Outbound(), _Outbound()
        stream.held = stream.pending = None
        if stream.answered:
            self._reset(self.client, stream.client_id, h2.errors.ErrorCodes.CANCEL)
            self._forget(stream)
            stream.status = 0
            return [stream.report()]
        headers, body = scan_block_page(finding, way, stream.method, stream.host, stream.path)
        stream.status = 403
        return self._answer(stream, 403, headers, body)

    def _observed(
        self, stream: _Stream, side: Side, data: bytes, end: bool = False
    ) -> list[Command]:
        if not self.observe:
            return []
        return [Observed(side, data, stream.method, stream.host, stream.path, stream.status, end)]

    # -- flow control ------------------------------------------------------------

    def _drain_all(self, side: Side) -> None:
        for stream in list(self.by_client.values()):
            self._drain(stream, side)

    def _drain(self, stream: _Stream, side: Side) -> None:
        """Send what the receiving side's window lets through; acknowledge it to the
        side it came from."""
        if side is Side.SERVER:
            target, source = self.server, self.client
            target_id, source_id, outbound = stream.server_id, stream.client_id, stream.to_server
        else:
            target, source = self.client, self.server
            target_id, source_id, outbound = stream.client_id, stream.server_id, stream.to_client
        if not target_id:
            return
        try:
            while outbound.chunks:
                data, acknowledge = outbound.chunks[0]
                window = min(
                    target.local_flow_control_window(target_id), target.max_outbound_frame_size
                )
                if data and window <= 0:
                    return
                piece = data[:window]
                target.send_data(target_id, piece)
                if len(piece) == len(data):
                    outbound.chunks.popleft()
                    if acknowledge and source_id:
                        source.acknowledge_received_data(acknowledge, source_id)
                else:
                    outbound.chunks[0] = (data[len(piece) :], acknowledge)
            if outbound.end:
                if outbound.trailers is not None:
                    target.send_headers(target_id, outbound.trailers, end_stream=True)
                else:
                    target.end_stream(target_id)
                outbound.end = False
                self._finish(stream, side)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self._forget(stream)

    def _finish(self, stream: _Stream, side: Side) -> None:
        """One direction of a stream is over; forget the stream once both are."""
        if side is Side.CLIENT:
            self._forget(stream)

    def _reset(self, connection: h2.connection.H2Connection, stream_id: int, code: int) -> None:
        if not stream_id:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            connection.reset_stream(stream_id, code)

    def _forget(self, stream: _Stream) -> None:
        self.by_client.pop(stream.client_id, None)
        if stream.server_id:
            self.by_server.pop(stream.server_id, None)

    def _flush(self, out: list[Command]) -> list[Command]:
        for side, connection in ((Side.SERVER, self.server), (Side.CLIENT, self.client)):
            data = connection.data_to_send()
            if data:
                out.append(Send(side, data))
        return out


def _lower(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((name.lower(), value) for name, value in headers)

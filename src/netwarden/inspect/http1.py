"""HTTP/1.x between a client and a server, request by request (sans-io, on h11).

Each request, keep-alive and pipelined ones too, is decided on its own by the HTTP
rules: allowed requests go upstream with their headers rewritten as rules say; blocked
ones get the block page (or a reset) and never leave. Bodies stream through as they
come, so memory stays bounded whatever their size. A stream that is not HTTP from its
first byte is handed back as Relay; a protocol switch (101, e.g. WebSocket) too.
"""

from __future__ import annotations

from collections.abc import Sequence

import h11

from netwarden.inspect.commands import (
    Close,
    Command,
    Detected,
    EndOfData,
    HttpExchange,
    Observed,
    Relay,
    Send,
    Side,
)
from netwarden.inspect.http1_heads import NotPlain, request_head, response_head
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

MAX_HEAD = 64 * 1024
COUNTED_MIN = 64 * 1024  # shorter bodies go through h11: counting them saves nothing


def _send(side: Side, data: bytes | None) -> list[Command]:
    return [Send(side, data)] if data else []


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


class _Exchange:
    """The request in progress: what was decided and what is still to come."""

    def __init__(self, method: str, host: str, path: str, verdict: RequestVerdict) -> None:
        self.method, self.host, self.path, self.verdict = method, host, path, verdict
        self.blocked = verdict.blocked_by is not None
        self.response_blocked = False  # by its content type: the rest of it is dropped
        self.status = 0
        self.request_close = False  # the client asked to close after this one
        self.upload: BodyScan | None = None
        self.download: BodyScan | None = None
        self.held: h11.Response | None = None  # the response's head, until its body is scanned
        self.held_request: h11.Request | None = None  # the same for an upload

    def blocked_report(self, by: str, status: int) -> HttpExchange:
        return HttpExchange(self.method, self.host, self.path, "blocked", by, status)

    def report(self, status: int) -> HttpExchange:
        rule = self.verdict.blocked_by or self.verdict.allowed_by
        return HttpExchange(
            self.method,
            self.host,
            self.path,
            "blocked" if self.blocked else "allowed",
            rule.name if rule else "",
            status,
        )


class Http1Filter:
    def __init__(
        self,
        rules: Sequence[HttpRule],
        default_host: str,
        observe: bool = False,
        scanning: ContentScanning | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.scanning = scanning
        self.observe = observe
        self.default_host = default_host
        self._fresh_h11()
        self.exchange: _Exchange | None = None
        self.requests = 0
        self.relaying = False
        # A response body nobody needs to see, passed on by count without h11: bytes
        # still to come, whether the connection is kept alive after it, and what the
        # client sent meanwhile (its next requests).
        self.counted: int | None = None
        self.keep_alive = False
        self.waiting = bytearray()
        # Plain exchanges (see http1_heads) pass their heads on as they came, without
        # h11, while nothing needs to see their bodies: the request head sent (for h11
        # to take over should the answer not be plain), and whether both h11
        # connections are between exchanges with nothing unread.
        self.plain_possible = not observe and scanning is None
        self.plain_request: bytes | None = None
        self.h11_idle = True

    def _fresh_h11(self) -> None:
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.server = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.h11_idle = True

    # -- bytes in ----------------------------------------------------------------

    def from_client(self, data: bytes) -> list[Command]:
        if self.relaying:
            return [Send(Side.SERVER, data)] if data else [EndOfData(Side.SERVER)]
        if self.counted is not None:
            if not data:
                return [Close(reason="the client left during a response")]
            self.waiting += data
            return []
        if self.plain_request is not None:
            if data:
                self.waiting += data  # the next requests wait for this answer
                return []
            refused = self._to_h11()
            if refused:
                return refused
        elif self.h11_idle and self.plain_possible and data:
            plain = self._plain_request(data)
            if plain is not None:
                return plain
        self.h11_idle = False
        self.client.receive_data(data)
        return self._client_events()

    def from_server(self, data: bytes) -> list[Command]:
        if self.relaying:
            return [Send(Side.CLIENT, data)] if data else [EndOfData(Side.CLIENT)]
        if self.counted is not None:
            return self._counted_body(data)
        if self.plain_request is not None:
            plain = self._plain_response(data)
            if plain is not None:
                return plain
            refused = self._to_h11()
            if refused:
                return refused
        if data and self.exchange is not None and self.exchange.held_request is not None:
            return [Close(reason="the server spoke before it had the request")]
        self.server.receive_data(data)
        return self._server_events()

    # -- plain exchanges -----------------------------------------------------------

    def _plain_request(self, data: bytes) -> list[Command] | None:
        """A whole plain request head, allowed with no rewrite: sent on as it came.
        None when h11 is to read it."""
        try:
            head = request_head(data, MAX_HEAD)
        except NotPlain:
            return None
        if head is None:
            return None
        exchange = self._exchange_for(head.method, head.target, head.host)
        if exchange.blocked or exchange.verdict.rewrites:
            return None
        self.requests += 1
        self.exchange = exchange
        exchange.request_close = head.close
        self.plain_request = data[: head.size]
        self.waiting += data[head.size :]
        return [Send(Side.SERVER, self.plain_request)]

    def _plain_response(self, data: bytes) -> list[Command] | None:
        """The answer to a plain request, when it is plain too and all its head came in
        this piece: sent on as it came, its body by count. None when h11 is to read it."""
        exchange = self.exchange
        if not data or exchange is None:
            return None
        try:
            head = response_head(data, MAX_HEAD, to_head=exchange.method == "HEAD")
        except NotPlain:
            return None
        if head is None or blocked_by_content(exchange.verdict, head.content_type):
            return None
        self.plain_request = None
        exchange.status = head.status
        self.keep_alive = not (exchange.request_close or head.close)
        end = min(len(data), head.size + head.length)
        self.counted = head.size + head.length - end
        out: list[Command] = [exchange.report(head.status), Send(Side.CLIENT, data[:end])]
        if self.counted:
            return out
        return out + self._after_counted_body(data[end:])

    def _to_h11(self) -> list[Command]:
        """h11 takes over a plain exchange in the middle: it reads the request already
        sent (and what the client sent since), as though it had read it all along."""
        request, self.plain_request = self.plain_request, None
        assert request is not None
        self.h11_idle = False
        self.client.receive_data(request)
        try:
            for _ in range(2):  # the request and its end (it has no body)
                event = self.client.next_event()
                if not isinstance(event, h11.Request | h11.EndOfMessage):
                    raise h11.LocalProtocolError(f"h11 read the request as {event}")
                self.server.send(event)  # what it would send went already
        except h11.ProtocolError as exc:
            return [Close(reason=f"cannot pass it on: {exc}")]
        if self.waiting:
            self.client.receive_data(bytes(self.waiting))
            self.waiting.clear()
        return []

    # -- bodies passed on by count ------------------------------------------------

    def _count_body(self, request_close: bool, response: h11.Response) -> None:
        """Pass the rest of this response's body on by count (when nobody needs to see
        it and its length is known), sparing h11 a copy of each piece."""
        exchange = self.exchange
        length = _header(response.headers, b"content-length")
        if (
            self.observe
            or exchange is None
            or exchange.method == "HEAD"
            or response.status_code in (204, 304)
            or not length.isdigit()
            or int(length) < COUNTED_MIN
            or _header(response.headers, b"transfer-encoding")
            or self.client.their_state not in (h11.DONE, h11.MUST_CLOSE)
            or len(self.server.trailing_data[0]) >= int(length)
        ):
            return
        response_close = b"close" in _header(response.headers, b"connection").lower().encode()
        self.keep_alive = not (request_close or response_close) and (
            response.http_version == b"1.1"
        )
        self.counted = int(length)

    def _counted_body(self, data: bytes) -> list[Command]:
        assert self.counted is not None
        if not data:
            return [Close(reason="the server closed in the middle of a response")]
        piece = data[: self.counted]
        self.counted -= len(piece)
        out = self._pass_counted(piece)
        exchange = self.exchange
        if self.counted or (exchange is not None and exchange.blocked):
            return out
        if exchange is not None and exchange.download is not None:
            out += self._counted_download(exchange, exchange.download.finish(), end=True)
            if exchange.blocked:
                return out
        return out + self._after_counted_body(data[len(piece) :])

    def _pass_counted(self, piece: bytes) -> list[Command]:
        """A piece of a body passed on by count (through the download's scan when there
        is one)."""
        exchange = self.exchange
        if exchange is None or exchange.download is None:
            return [Send(Side.CLIENT, piece)] if piece else []
        return self._counted_download(exchange, exchange.download.feed(piece))

    def _counted_download(
        self, exchange: _Exchange, scanned: Scanned, end: bool = False
    ) -> list[Command]:
        out: list[Command] = [*self._detected(exchange, scanned, Direction.DOWNLOAD)]
        if scanned.blocked is not None:
            exchange.response_blocked = True
            return out + self._refuse_scanned(exchange, scanned.blocked, Direction.DOWNLOAD)
        if exchange.held is not None and (scanned.release or end):
            out += [
                exchange.report(exchange.status),
                *_send(Side.CLIENT, self.client.send(exchange.held)),
            ]
            exchange.held = None
        if scanned.release:
            out.append(Send(Side.CLIENT, scanned.release))
        return out

    def _after_counted_body(self, beyond: bytes) -> list[Command]:
        """The body is through: both sides start afresh at their next request (new h11
        connections, with what the client sent meanwhile), or the connection closes."""
        self.counted = None
        if not self.keep_alive or beyond:
            return [Close()]
        waiting = bytes(self.waiting)
        self.waiting.clear()
        if not self.h11_idle:
            unread, _closed = self.client.trailing_data
            waiting = bytes(unread) + waiting
            self._fresh_h11()
        self.exchange = None
        return self.from_client(waiting) if waiting else []

    # -- the client's side -------------------------------------------------------

    def _client_events(self) -> list[Command]:
        return self._events(Side.CLIENT)

    def _events(self, side: Side) -> list[Command]:
        """Handle the events h11 has for one side until it needs more bytes."""
        connection = self.client if side is Side.CLIENT else self.server
        handle = self._client_event if side is Side.CLIENT else self._server_event
        out: list[Command] = []
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as exc:
                if side is Side.CLIENT and self.requests == 0 and self.exchange is None:
                    return [Relay()]  # not HTTP: hand it back untouched
                return [*out, Close(reason=f"{side.value} broke HTTP/1.1: {exc}")]
            if not isinstance(event, h11.Event):  # NEED_DATA, PAUSED
                return out
            try:
                out += handle(event)
            except h11.LocalProtocolError as exc:
                return [*out, Close(reason=f"cannot pass it on: {exc}")]
            if isinstance(event, h11.ConnectionClosed) or (
                out and isinstance(out[-1], Close | Relay)
            ):
                return out

    def _client_event(self, event: h11.Event) -> list[Command]:
        if isinstance(event, h11.Request):
            return self._request(event)
        exchange = self.exchange
        if isinstance(event, h11.Data):
            if exchange is None or exchange.blocked:
                return []
            seen = self._observed(Side.CLIENT, bytes(event.data))
            if exchange.upload is not None:
                return seen + self._upload(exchange, exchange.upload.feed(bytes(event.data)))
            return [*seen, *_send(Side.SERVER, self.server.send(event))]
        if isinstance(event, h11.EndOfMessage):
            if exchange is None or exchange.blocked:
                return self._next_cycle()
            seen = self._observed(Side.CLIENT, b"", end=True)
            if exchange.upload is not None:
                sent = self._upload(exchange, exchange.upload.finish(), event)
                return seen + sent + ([] if exchange.blocked else self._next_cycle())
            return [*seen, *_send(Side.SERVER, self.server.send(event)), *self._next_cycle()]
        if isinstance(event, h11.ConnectionClosed):
            if self.server.our_state in (h11.IDLE, h11.DONE, h11.MUST_CLOSE):
                return [EndOfData(Side.SERVER)] if self.requests else [Close()]
            return [Close(reason="client closed in the middle of a request")]
        return []

    def _exchange_for(self, method: str, target: str, host: str) -> _Exchange:
        """A request's exchange, decided by the rules."""
        host = host or self.default_host
        path = target
        if target.startswith(("http://", "https://")):  # absolute form
            rest = target.split("://", 1)[1]
            host, _, tail = rest.partition("/")
            path = "/" + tail
        bare_host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host.strip("[]")
        verdict = decide_request(self.rules, method, bare_host, path)
        return _Exchange(method, bare_host, path, verdict)

    def _request(self, request: h11.Request) -> list[Command]:
        self.requests += 1
        exchange = self.exchange = self._exchange_for(
            request.method.decode("ascii", "replace"),
            request.target.decode("ascii", "replace"),
            _header(request.headers, b"host"),
        )
        verdict = exchange.verdict
        exchange.request_close = request.http_version != b"1.1" or (
            b"close" in _header(request.headers, b"connection").lower().encode()
        )
        if verdict.blocked_by is not None:
            return self._refuse(exchange, verdict.blocked_by)
        if self.scanning is not None and (
            _header(request.headers, b"content-length") not in ("", "0")
            or _header(request.headers, b"transfer-encoding")
        ):
            exchange.upload = self.scanning.body(Direction.UPLOAD)
        forwarded = request  # as parsed (no second validation) unless a rule rewrites it
        if verdict.rewrites:
            headers = rewritten(
                request.headers.raw_items(),
                ((r.set_request_headers, r.remove_request_headers) for r in verdict.rewrites),
            )
            forwarded = h11.Request(method=request.method, target=request.target, headers=headers)
        if exchange.upload is not None:
            return self._hold_request(exchange, forwarded)
        return _send(Side.SERVER, self.server.send(forwarded))

    def _hold_request(self, exchange: _Exchange, request: h11.Request) -> list[Command]:
        """The request goes with the first part of its body the scanners release: a body
        blocked within the hold-back never reaches the server at all. A client waiting
        for 100 Continue gets it from here."""
        if _header(request.headers, b"expect").lower() != "100-continue":
            exchange.held_request = request
            return []
        exchange.held_request = h11.Request(
            method=request.method,
            target=request.target,
            headers=[(n, v) for n, v in request.headers.raw_items() if n.lower() != b"expect"],
        )
        go_on = h11.InformationalResponse(status_code=100, headers=[])
        return _send(Side.CLIENT, self.client.send(go_on))

    def _refuse(self, exchange: _Exchange, rule: HttpRule) -> list[Command]:
        if rule.respond is BlockResponse.RESET:
            return [exchange.report(0), Close(reset=True, reason=f"blocked by {rule.name}")]
        out: list[Command] = [exchange.report(403), self._block_page(exchange, rule)]
        if self.client.their_state is h11.DONE:
            out += self._next_cycle()
        return out

    # -- the server's side -------------------------------------------------------

    def _server_events(self) -> list[Command]:
        return self._events(Side.SERVER)

    def _server_event(self, event: h11.Event) -> list[Command]:
        exchange = self.exchange
        if isinstance(event, h11.InformationalResponse):
            data = self.client.send(event) or b""
            if event.status_code == 101:
                return [Send(Side.CLIENT, data), *self._switch()]
            return [Send(Side.CLIENT, data)]
        if isinstance(event, h11.Response):
            assert exchange is not None
            rule = blocked_by_content(exchange.verdict, _header(event.headers, b"content-type"))
            if rule is not None:
                exchange.blocked = exchange.response_blocked = True
                exchange.verdict = RequestVerdict(blocked_by=rule)
                return [*self._refuse_response(exchange, rule)]
            response = event
            if exchange.verdict.rewrites:
                headers = rewritten(
                    event.headers.raw_items(),
                    (
                        (r.set_response_headers, r.remove_response_headers)
                        for r in exchange.verdict.rewrites
                    ),
                )
                response = h11.Response(
                    status_code=event.status_code, headers=headers, reason=event.reason
                )
            exchange.status = event.status_code
            if self._scans_download(exchange, response):
                exchange.held = response
                self._count_body(exchange.request_close, response)
                return []
            sent = [
                exchange.report(event.status_code),
                *_send(Side.CLIENT, self.client.send(response)),
            ]
            self._count_body(exchange.request_close, response)
            return sent
        if isinstance(event, h11.Data):
            if exchange is not None and exchange.response_blocked:
                return []
            if self.counted is not None:  # what h11 had of the body already (not all of it)
                self.counted -= len(event.data)
                return self._pass_counted(bytes(event.data))
            seen = self._observed(Side.SERVER, bytes(event.data))
            if exchange is not None and exchange.download is not None:
                return seen + self._download(exchange, exchange.download.feed(bytes(event.data)))
            return [*seen, *_send(Side.CLIENT, self.client.send(event))]
        if isinstance(event, h11.EndOfMessage):
            if exchange is not None and exchange.response_blocked:
                return [Close(reason="response blocked by its content type")]
            if exchange is not None and exchange.download is not None:
                seen = self._observed(Side.SERVER, b"", end=True)
                sent = self._download(exchange, exchange.download.finish(), event)
                return seen + sent + ([] if exchange.blocked else self._next_cycle())
            out: list[Command] = [
                *self._observed(Side.SERVER, b"", end=True),
                *_send(Side.CLIENT, self.client.send(event)),
            ]
            return out + self._next_cycle()
        if isinstance(event, h11.ConnectionClosed):
            return [Close()]
        return []

    def _refuse_response(self, exchange: _Exchange, rule: HttpRule) -> list[Command]:
        """A response blocked by its content type: the client gets the block page instead
        and the upstream connection (with the rest of that body) is dropped."""
        if rule.respond is BlockResponse.RESET:
            return [exchange.report(0), Close(reset=True, reason=f"blocked by {rule.name}")]
        page = self._block_page(exchange, rule, close=True)
        return [exchange.report(403), page, Close(reason=f"blocked by {rule.name}")]

    def _block_page(self, exchange: _Exchange, rule: HttpRule, close: bool = False) -> Send:
        headers, body = block_page(rule, exchange.method, exchange.host, exchange.path)
        if close:
            headers.append((b"connection", b"close"))
        response = h11.Response(status_code=403, headers=headers, reason=b"Forbidden")
        events = (response, h11.Data(data=body), h11.EndOfMessage())
        return Send(Side.CLIENT, b"".join(self.client.send(e) or b"" for e in events))

    # -- scanned bodies ------------------------------------------------------------

    def _scans_download(self, exchange: _Exchange, response: h11.Response) -> bool:
        if self.scanning is None or exchange.method == "HEAD":
            return False
        if response.status_code in (204, 304):
            return False
        exchange.download = self.scanning.body(Direction.DOWNLOAD)
        return exchange.download is not None

    def _upload(
        self, exchange: _Exchange, scanned: Scanned, end: h11.EndOfMessage | None = None
    ) -> list[Command]:
        out: list[Command] = [*self._detected(exchange, scanned, Direction.UPLOAD)]
        if scanned.blocked is not None:
            return out + self._refuse_scanned(exchange, scanned.blocked, Direction.UPLOAD)
        if exchange.held_request is not None and (scanned.release or end is not None):
            out += _send(Side.SERVER, self.server.send(exchange.held_request))
            exchange.held_request = None
        if scanned.release:
            out += _send(Side.SERVER, self.server.send(h11.Data(data=scanned.release)))
        if end is not None:
            out += _send(Side.SERVER, self.server.send(end))
        return out

    def _download(
        self, exchange: _Exchange, scanned: Scanned, end: h11.EndOfMessage | None = None
    ) -> list[Command]:
        out: list[Command] = [*self._detected(exchange, scanned, Direction.DOWNLOAD)]
        if scanned.blocked is not None:
            exchange.response_blocked = True
            return out + self._refuse_scanned(exchange, scanned.blocked, Direction.DOWNLOAD)
        if exchange.held is not None and (scanned.release or end is not None):
            out += [
                exchange.report(exchange.status),
                *_send(Side.CLIENT, self.client.send(exchange.held)),
            ]
            exchange.held = None
        if scanned.release:
            out += _send(Side.CLIENT, self.client.send(h11.Data(data=scanned.release)))
        if end is not None:
            out += _send(Side.CLIENT, self.client.send(end))
        return out

    def _detected(self, exchange: _Exchange, scanned: Scanned, way: Direction) -> list[Detected]:
        return detections(scanned, way, exchange.method, exchange.host, exchange.path)

    def _refuse_scanned(
        self, exchange: _Exchange, finding: Finding, way: Direction
    ) -> list[Command]:
        """The client gets the block page when no answer went to it yet; else (part of a
        download went) a reset. The server's connection, in the middle of a body, goes."""
        exchange.blocked = True
        reason = f"{finding.scanner} found {finding.signature} in the {way.value}"
        rule = f"{finding.scanner}:{finding.signature}"
        if self.client.our_state is not h11.SEND_RESPONSE:
            return [exchange.blocked_report(rule, 0), Close(reset=True, reason=reason)]
        headers, body = scan_block_page(finding, way, exchange.method, exchange.host, exchange.path)
        headers.append((b"connection", b"close"))
        response = h11.Response(status_code=403, headers=headers, reason=b"Forbidden")
        events = (response, h11.Data(data=body), h11.EndOfMessage())
        page = b"".join(self.client.send(e) or b"" for e in events)
        return [exchange.blocked_report(rule, 403), Send(Side.CLIENT, page), Close(reason=reason)]

    def _observed(self, side: Side, data: bytes, end: bool = False) -> list[Command]:
        exchange = self.exchange
        if not self.observe or exchange is None:
            return []
        return [
            Observed(
                side, data, exchange.method, exchange.host, exchange.path, exchange.status, end
            )
        ]

    # -- between requests --------------------------------------------------------

    def _next_cycle(self) -> list[Command]:
        """Both sides finished this request: start the next one (a pipelined request
        h11 held back comes out now)."""
        states = (self.client.our_state, self.client.their_state)
        if any(state not in (h11.DONE, h11.MUST_CLOSE) for state in states):
            return []  # the request or its answer is still under way
        if h11.MUST_CLOSE in states:
            return [Close()]
        try:
            self.client.start_next_cycle()
            if (self.server.our_state, self.server.their_state) == (h11.DONE, h11.DONE):
                self.server.start_next_cycle()
        except h11.LocalProtocolError:
            return [Close()]
        self.exchange = None
        out = self._client_events()
        self.h11_idle = self._h11_between_exchanges()
        return out

    def _h11_between_exchanges(self) -> bool:
        """Both h11 connections wait for a next exchange, with nothing unread."""
        idle = (h11.IDLE, h11.IDLE)
        return (
            (self.client.our_state, self.client.their_state) == idle
            and (self.server.our_state, self.server.their_state) == idle
            and not self.client.trailing_data[0]
            and not self.server.trailing_data[0]
        )

    def _switch(self) -> list[Command]:
        self.relaying = True
        out: list[Command] = []
        client_rest, _ = self.client.trailing_data
        server_rest, _ = self.server.trailing_data
        if client_rest:
            out.append(Send(Side.SERVER, bytes(client_rest)))
        if server_rest:
            out.append(Send(Side.CLIENT, bytes(server_rest)))
        return out

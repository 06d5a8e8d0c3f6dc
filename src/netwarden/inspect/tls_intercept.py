"""TLS interception between a client and its server (sans-io, on ssl.SSLObject).

The upstream handshake comes first, offering the ALPN protocols the client offered:
its certificate names the leaf presented to the client, and its chosen protocol is the
only one the client is answered with. The client's ClientHello, already read, is then
fed to our side. Decrypted bytes go to an inner layer (HTTP, or untouched), whose
commands are encrypted on the way out.

An upstream that fails verification is never accepted: the client is told why (a 502
page when it speaks HTTP/1.1) and the connection closed. A client that aborts the
handshake against our certificate is reported (TlsFailed on the client side), so the
proxy can pass its next connections through.
"""

from __future__ import annotations

import contextlib
import html
import re
import ssl
from collections.abc import Callable
from typing import Protocol

from netwarden.inspect.commands import (
    Close,
    Command,
    EndOfData,
    Observed,
    Relay,
    Send,
    Side,
    TlsFailed,
    TlsIntercepted,
)
from netwarden.inspect.tls_hello import ClientHello

SESSION_TRIES = 3  # a server's ticket comes right after the handshake, or never
READ_SIZE = 16 * 1024  # a TLS record at most; a larger buffer is allocated on every read
HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62}\.)*[a-z0-9_-]{1,63}", re.ASCII)


class Layer(Protocol):
    def from_client(self, data: bytes) -> list[Command]: ...
    def from_server(self, data: bytes) -> list[Command]: ...


class Starting(Protocol):
    """A layer that speaks first (HTTP/2 sends its settings)."""

    def start(self) -> list[Command]: ...


class Contexts(Protocol):
    def upstream(self, alpn: tuple[str, ...]) -> ssl.SSLContext: ...
    def session(self, server: str) -> ssl.SSLSession | None: ...
    def keep_session(self, server: str, session: ssl.SSLSession) -> None: ...
    def for_client(
        self, certificate: bytes | None, server_name: str, alpn: str
    ) -> ssl.SSLContext: ...


class Untouched:
    """The layer for bytes passed on as they are (observed, for STREAM callouts, when
    observe is set)."""

    def __init__(self, observe: bool = False) -> None:
        self.observe = observe

    def from_client(self, data: bytes) -> list[Command]:
        return self._pass(Side.CLIENT, data)

    def from_server(self, data: bytes) -> list[Command]:
        return self._pass(Side.SERVER, data)

    def _pass(self, side: Side, data: bytes) -> list[Command]:
        out: list[Command] = [Observed(side, data, end=not data)] if self.observe else []
        out.append(Send(side.other, data) if data else EndOfData(side.other))
        return out


class _Tls:
    """One side's TLS session over memory buffers."""

    def __init__(
        self,
        context: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
        self.done = False
        self.closed = False

    def handshake(self) -> bool:
        """Go on with the handshake; True once it is complete. Raises ssl.SSLError."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.done = True
        return True

    def pending(self) -> bytes:
        return self.outgoing.read()

    def read_all(self) -> tuple[bytes, bool]:
        """Decrypted bytes available, and whether the peer has finished."""
        chunks: list[bytes] = []
        incoming = self.incoming
        while True:
            try:
                chunk = self.obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                return b"".join(chunks), False
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            if not (incoming.pending or incoming.eof or self.obj.pending()):
                return b"".join(chunks), False  # all read: no need to be told so


class TlsInterception:
    def __init__(
        self,
        hello: ClientHello,
        hello_bytes: bytes,
        address: str,
        contexts: Contexts,
        inner: Callable[[str, str], Layer],
    ) -> None:
        """inner(alpn, host) makes the layer for the decrypted stream."""
        self.hello = hello
        # A name no certificate could carry (a hostile or broken client's) is not used.
        name = hello.server_name or ""
        self.server_name = name if HOSTNAME.fullmatch(name) else ""
        self.address = address
        self.contexts = contexts
        self.make_inner = inner
        self.inner: Layer | None = None
        self.alpn = ""
        self.upstream_error = ""
        self._from_client = bytearray(hello_bytes)  # until our side of TLS exists
        self.session_tries = SESSION_TRIES  # reads of the server left to find its ticket
        self.server = _Tls(
            contexts.upstream(hello.alpn_names),
            False,
            self.server_name or address,
            contexts.session(self._session_key),
        )
        self.client: _Tls | None = None

    @property
    def _session_key(self) -> str:
        return f"{self.server_name or self.address} {','.join(self.hello.alpn_names)}"

    def start(self) -> list[Command]:
        return self._handshake_upstream()

    # -- handshakes --------------------------------------------------------------

    def _handshake_upstream(self) -> list[Command]:
        try:
            done = self.server.handshake()
        except ssl.SSLCertVerificationError as exc:
            self.upstream_error = f"upstream certificate refused: {exc.verify_message}"
            return self._start_client(None)
        except ssl.SSLError as exc:
            self.upstream_error = f"upstream TLS failed: {exc.reason or exc}"
            return self._start_client(None)
        out = self._flush(self.server, Side.SERVER)
        if not done:
            return out
        if self.server.obj.session_reused:  # the kept ticket served: it is kept on
            self.session_tries = 0
        self.alpn = self.server.obj.selected_alpn_protocol() or ""
        certificate = self.server.obj.getpeercert(binary_form=True)
        return out + self._start_client(certificate)

    def _start_client(self, certificate: bytes | None) -> list[Command]:
        alpn = self.alpn
        if self.upstream_error:  # the client is told in HTTP/1.1, if it speaks it
            alpn = "http/1.1" if "http/1.1" in self.hello.alpn_names else ""
        self.client = _Tls(
            self.contexts.for_client(certificate, self.server_name or self.address, alpn), True
        )
        buffered, self._from_client = bytes(self._from_client), bytearray()
        return self.from_client(buffered)

    def _handshake_client(self) -> list[Command]:
        assert self.client is not None
        try:
            done = self.client.handshake()
        except ssl.SSLError as exc:
            reason = f"the client refused our certificate ({exc.reason or exc})"
            return [
                *self._flush(self.client, Side.CLIENT),
                TlsFailed(Side.CLIENT, self.server_name, reason),
                Close(reason=reason),
            ]
        out = self._flush(self.client, Side.CLIENT)
        if not done:
            return out
        if self.upstream_error:
            return out + self._refuse_upstream()
        self.inner = self.make_inner(self.alpn, self.server_name or self.address)
        version = self.server.obj.version() or ""
        out.append(TlsIntercepted(self.server_name, self.alpn, version))
        start = getattr(self.inner, "start", None)  # a Starting layer (isinstance is slow)
        if start is not None:
            out += self._outer(start(), Side.CLIENT, b"")
        # What either side sent right behind its handshake is waiting decrypted already.
        return (
            out
            + self._decrypted(self.client, Side.CLIENT)
            + self._decrypted(self.server, Side.SERVER)
        )

    def _refuse_upstream(self) -> list[Command]:
        assert self.client is not None
        failure = TlsFailed(Side.SERVER, self.server_name, self.upstream_error)
        if self.client.obj.selected_alpn_protocol() != "http/1.1" and (
            "http/1.1" not in self.hello.alpn_names and self.hello.alpn
        ):
            return [failure, Close(reason=self.upstream_error)]
        server = html.escape(self.server_name or self.address)
        body = (
            "<!doctype html><title>netwarden: upstream refused</title><h1>502 Bad Gateway"
            f"</h1><p>netwarden did not connect to {server}: "
            f"{html.escape(self.upstream_error)}</p>\n"
        ).encode()
        response = (
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.client.obj.write(response)
        return [failure, *self._flush(self.client, Side.CLIENT), Close(reason=self.upstream_error)]

    # -- bytes in ----------------------------------------------------------------

    def from_client(self, data: bytes) -> list[Command]:
        if self.client is None:
            if not data:
                return [Close(reason="the client left during the upstream handshake")]
            self._from_client += data
            return []
        self._feed(self.client, data)
        if not self.client.done:
            if not data:
                reason = "the client closed during the handshake (our certificate refused?)"
                return [TlsFailed(Side.CLIENT, self.server_name, reason), Close(reason=reason)]
            return self._handshake_client()
        return self._decrypted(self.client, Side.CLIENT)

    def from_server(self, data: bytes) -> list[Command]:
        self._feed(self.server, data)
        if not self.server.done and not self.upstream_error:
            if not data:
                self.upstream_error = "the server closed during the TLS handshake"
                return self._start_client(None)
            return self._handshake_upstream()
        if self.upstream_error:
            return []
        return self._decrypted(self.server, Side.SERVER)

    def _feed(self, tls: _Tls, data: bytes) -> None:
        if data:
            tls.incoming.write(data)
        else:
            tls.incoming.write_eof()

    def _decrypted(self, tls: _Tls, side: Side) -> list[Command]:
        if self.inner is None:
            return []
        try:
            plain, finished = tls.read_all()
        except ssl.SSLError as exc:
            return [Close(reason=f"{side.value} TLS failed: {exc.reason or exc}")]
        if side is Side.SERVER and self.session_tries:
            self._keep_session()
        out: list[Command] = []
        if plain:
            out += self._inner(side, plain)
        if finished and not tls.closed:
            tls.closed = True
            out += self._inner(side, b"")
        return out + self._flush(tls, side)

    def _inner(self, side: Side, plain: bytes) -> list[Command]:
        assert self.inner is not None
        commands = (
            self.inner.from_client(plain) if side is Side.CLIENT else self.inner.from_server(plain)
        )
        return self._outer(commands, side, plain)

    def _outer(self, commands: list[Command], side: Side, plain: bytes) -> list[Command]:
        """The inner layer's commands, encrypted where they send."""
        out: list[Command] = []
        for command in commands:
            if isinstance(command, Send):
                out += self._encrypt(command.side, command.data)
            elif isinstance(command, EndOfData):
                out += self._close_notify(command.side)
            elif isinstance(command, Relay):
                self.inner = Untouched(getattr(self.inner, "observe", False))
                out += self._inner(side, plain)
            else:
                out.append(command)
        return out

    def _keep_session(self) -> None:
        """The upstream's session ticket (TLS 1.3 sends it after the handshake), so the
        next connection to it resumes: one signature and verification less."""
        self.session_tries -= 1
        session = self.server.obj.session  # costs ~0.5 ms: asked of a few reads only
        if session is not None and session.has_ticket:
            self.contexts.keep_session(self._session_key, session)
            self.session_tries = 0

    def _tls_of(self, side: Side) -> _Tls:
        tls = self.client if side is Side.CLIENT else self.server
        assert tls is not None
        return tls

    def _encrypt(self, side: Side, data: bytes) -> list[Command]:
        tls = self._tls_of(side)
        try:
            tls.obj.write(data)
        except ssl.SSLError as exc:
            return [Close(reason=f"{side.value} TLS failed: {exc.reason or exc}")]
        return self._flush(tls, side)

    def _close_notify(self, side: Side) -> list[Command]:
        tls = self._tls_of(side)
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
            tls.obj.unwrap()
        return [*self._flush(tls, side), EndOfData(side)]

    @staticmethod
    def _flush(tls: _Tls, side: Side) -> list[Command]:
        data = tls.pending()
        return [Send(side, data)] if data else []

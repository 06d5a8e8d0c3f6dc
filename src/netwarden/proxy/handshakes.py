"""The user-mode listeners' handshakes as sans-io layers (bytes in, commands out) over
the SOCKS5 and HTTP proxy parsers: the I/O module (proxy/inspecting.py) reads the
client, opens the server the handshake names, and hands the connection on to
inspection, or to the splice fast path, when the handshake says so."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from netwarden.inspect.commands import Close, Send, Side
from netwarden.proxy import http_proxy, socks5

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class OpenServer:
    """Connect to host:port (a name is resolved by the proxy, each address asked of
    the policy); the handshake hears back with opened() or failed()."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Handover:
    """The handshake is over: what follows is the client's own stream, starting with
    `early` (what the client sent behind its request, or the request itself)."""

    early: bytes


class Refusal(enum.Enum):
    POLICY = "not allowed by the policy"
    REFUSED = "connection refused"
    UNREACHABLE = "unreachable"


HandshakeCommand = Send | Close | OpenServer | Handover

_SOCKS_REPLIES = {
    Refusal.POLICY: socks5.Reply.NOT_ALLOWED,
    Refusal.REFUSED: socks5.Reply.CONNECTION_REFUSED,
    Refusal.UNREACHABLE: socks5.Reply.HOST_UNREACHABLE,
}


def _to_client(data: bytes) -> list[HandshakeCommand]:
    return [Send(Side.CLIENT, data)] if data else []


class Socks5Handshake:
    kind = "socks5"

    def __init__(self, users: dict[str, str] | None) -> None:
        self.users = users
        self.protocol = socks5.Socks5Server(require_auth=users is not None)

    def from_client(self, data: bytes) -> list[HandshakeCommand]:
        out: list[HandshakeCommand] = []
        for event in self.protocol.receive(data):
            if isinstance(event, socks5.Failed):
                return [*out, *_to_client(event.reply), Close(reason=event.message)]
            if isinstance(event, socks5.MethodChosen):
                out += _to_client(event.reply)
            elif isinstance(event, socks5.Credentials):
                ok = self.users is not None and self.users.get(event.username) == event.password
                out += _to_client(self.protocol.authenticated(ok))
                if not ok:
                    return [*out, Close(reason=f"wrong password for {event.username!r}")]
            else:
                return [*out, OpenServer(event.host, event.port)]
        return out

    def opened(self, bound: Address) -> list[HandshakeCommand]:
        return [
            Send(Side.CLIENT, socks5.reply(socks5.Reply.SUCCEEDED, bound)),
            Handover(self.protocol.leftover()),
        ]

    def failed(self, why: Refusal, message: str) -> list[HandshakeCommand]:
        return [Send(Side.CLIENT, socks5.reply(_SOCKS_REPLIES[why])), Close(reason=message)]


class HttpProxyHandshake:
    kind = "http"

    def __init__(self) -> None:
        self.buffer = b""
        self.request: http_proxy.Tunnel | http_proxy.Forward | None = None

    def from_client(self, data: bytes) -> list[HandshakeCommand]:
        if self.request is not None:  # waiting for the server: keep what comes
            self.buffer += data
            return []
        self.buffer += data
        end = http_proxy.head_complete(self.buffer)
        if not end:
            if len(self.buffer) > http_proxy.MAX_HEAD:
                return self._bad(http_proxy.BadRequest(431, "request head too large"))
            return []
        request = http_proxy.parse(self.buffer[:end])
        if isinstance(request, http_proxy.BadRequest):
            return self._bad(request)
        self.buffer = self.buffer[end:]
        self.request = request
        return [OpenServer(request.host, request.port)]

    def opened(self, bound: Address) -> list[HandshakeCommand]:
        assert self.request is not None
        if isinstance(self.request, http_proxy.Tunnel):
            return [Send(Side.CLIENT, http_proxy.ESTABLISHED), Handover(self.buffer)]
        return [Handover(self.request.head + self.buffer)]

    def failed(self, why: Refusal, message: str) -> list[HandshakeCommand]:
        status = 403 if why is Refusal.POLICY else 502
        return self._bad(http_proxy.BadRequest(status, message))

    @staticmethod
    def _bad(request: http_proxy.BadRequest) -> list[HandshakeCommand]:
        return [Send(Side.CLIENT, request.response()), Close(reason=request.message)]


Handshake = Socks5Handshake | HttpProxyHandshake

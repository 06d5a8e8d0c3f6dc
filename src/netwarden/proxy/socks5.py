"""SOCKS5 (RFC 1928) with username/password (RFC 1929), server side, sans-io:
bytes in, events out; replies are built by functions. Only CONNECT is offered."""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from dataclasses import dataclass

VERSION = 5
NO_AUTH, USER_PASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CMD_CONNECT = 1
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_\-.]{0,252})")
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4


class Reply(enum.IntEnum):
    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2  # connection not allowed by ruleset
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


@dataclass(frozen=True, slots=True)
class MethodChosen:
    """The reply to the greeting was decided; send `reply` (bytes)."""

    method: int
    reply: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    host: str  # an address or a name to resolve here (remote DNS)
    port: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The client broke the protocol; send `reply` (possibly empty) and close."""

    reply: bytes
    message: str


Event = MethodChosen | Credentials | ConnectRequest | Failed


class _State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    AUTH_WAIT = "auth-wait"  # credentials handed out, waiting for the caller's verdict
    REQUEST = "request"
    DONE = "done"


class Socks5Server:
    def __init__(self, require_auth: bool) -> None:
        self.require_auth = require_auth
        self._buffer = bytearray()
        self._state = _State.GREETING

    def receive(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while True:
            event = self._step()
            if event is None:
                return events
            events.append(event)
            if isinstance(event, Failed | ConnectRequest) or self._state is _State.AUTH_WAIT:
                return events

    def authenticated(self, ok: bool) -> bytes:
        """The caller's verdict on the credentials; the bytes to send back."""
        if self._state is not _State.AUTH_WAIT:
            raise RuntimeError("no credentials are waiting for a verdict")
        self._state = _State.REQUEST if ok else _State.DONE
        return bytes([1, 0 if ok else 1])

    def _step(self) -> Event | None:
        buffer = self._buffer
        if self._state is _State.GREETING:
            if len(buffer) < 2 or len(buffer) < 2 + buffer[1]:
                return None
            if buffer[0] != VERSION:
                self._state = _State.DONE
                return Failed(b"", f"not SOCKS5 (version byte {buffer[0]})")
            methods = set(buffer[2 : 2 + buffer[1]])
            del buffer[: 2 + buffer[1]]
            wanted = USER_PASS if self.require_auth else NO_AUTH
            if wanted not in methods:
                self._state = _State.DONE
                return Failed(bytes([VERSION, NO_ACCEPTABLE]), "no acceptable authentication")
            self._state = _State.AUTH if self.require_auth else _State.REQUEST
            return MethodChosen(wanted, bytes([VERSION, wanted]))
        if self._state is _State.AUTH:
            if len(buffer) < 2 or len(buffer) < 3 + buffer[1]:
                return None
            user_end = 2 + buffer[1]
            if len(buffer) < user_end + 1 + buffer[user_end]:
                return None
            if buffer[0] != 1:
                self._state = _State.DONE
                return Failed(bytes([1, 1]), "bad username/password subnegotiation version")
            username = bytes(buffer[2:user_end]).decode(errors="replace")
            password_end = user_end + 1 + buffer[user_end]
            password = bytes(buffer[user_end + 1 : password_end]).decode(errors="replace")
            del buffer[:password_end]
            self._state = _State.AUTH_WAIT
            return Credentials(username, password)
        if self._state is _State.REQUEST:
            return self._request()
        return None

    def _request(self) -> Event | None:
        buffer = self._buffer
        if len(buffer) < 5:
            return None
        version, command, _reserved, atyp = buffer[:4]
        if version != VERSION:
            self._state = _State.DONE
            return Failed(reply(Reply.GENERAL_FAILURE), "bad request version")
        if atyp == ATYP_IPV4:
            end = 4 + 4
        elif atyp == ATYP_IPV6:
            end = 4 + 16
        elif atyp == ATYP_DOMAIN:
            end = 5 + buffer[4]
        else:
            self._state = _State.DONE
            return Failed(reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED), f"address type {atyp}")
        if len(buffer) < end + 2:
            return None
        if atyp == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(bytes(buffer[4:8])))
        elif atyp == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(bytes(buffer[4:20])))
        else:
            raw = bytes(buffer[5:end])
            host = raw.decode("ascii", errors="replace") if raw.isascii() else ""
        (port,) = struct.unpack_from("!H", buffer, end)
        del buffer[: end + 2]
        self._state = _State.DONE
        if atyp == ATYP_DOMAIN and not _HOSTNAME.fullmatch(host):
            return Failed(reply(Reply.HOST_UNREACHABLE), f"not a host name: {host[:64]!r}")
        if command != CMD_CONNECT:
            return Failed(reply(Reply.COMMAND_NOT_SUPPORTED), f"command {command} (CONNECT only)")
        if not host or port == 0:
            return Failed(reply(Reply.GENERAL_FAILURE), "empty host or port 0")
        return ConnectRequest(host, port)

    def leftover(self) -> bytes:
        """Bytes the client sent after its request: they belong to the relayed stream."""
        data, self._buffer = bytes(self._buffer), bytearray()
        return data


def reply(code: Reply, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    address = ipaddress.ip_address(bound[0])
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes([VERSION, int(code), 0, atyp]) + address.packed + struct.pack("!H", bound[1])

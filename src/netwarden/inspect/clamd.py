"""ClamAV's clamd as a scanner: each body streamed to it with INSTREAM (length-prefixed
pieces over its unix or TCP socket) as it passes; clamd answers at the end.

These sessions wait on clamd (blocking sockets, with a timeout): the proxy runs the
layers that use them in a thread. When clamd cannot be reached or fails, the session
reports it as a finding of the policy's fail mode (block: fail closed; log: open).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys

from netwarden.inspect.scanning import Direction, Finding, ScanAction, ScanSession

DEFAULT_SOCKET = "/run/clamav/clamd.ctl"  # Debian's clamav-daemon
TIMEOUT = 30.0
UNAVAILABLE = "clamd-unavailable"


class ClamdError(Exception):
    pass


def parse_address(text: str) -> str | tuple[str, int]:
    """A unix socket path (/...) or host:port; raises ValueError saying what is wrong."""
    if text.startswith("/"):
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"{text!r} is neither a unix socket path nor host:port")
    return host.strip("[]"), int(port)


def _connect(address: str | tuple[str, int], timeout: float) -> socket.socket:
    if isinstance(address, str):
        if sys.platform == "win32":
            raise OSError("on Windows, name clamd as host:port")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock
    return socket.create_connection(address, timeout)


def _reply(sock: socket.socket) -> str:
    data = bytearray()
    while not data.endswith(b"\0"):
        piece = sock.recv(4096)
        if not piece:
            break
        data += piece
    return data.rstrip(b"\0").decode("utf-8", "replace").strip()


def ping(address: str | tuple[str, int], timeout: float = 2.0) -> str:
    """clamd's version line; raises OSError when it does not answer."""
    with _connect(address, timeout) as sock:
        sock.sendall(b"zVERSION\0")
        return _reply(sock)


class ClamdSession:
    def __init__(
        self, address: str | tuple[str, int], action: ScanAction, on_error: ScanAction
    ) -> None:
        self.address = address
        self.action = action
        self.on_error = on_error
        self.sock: socket.socket | None = None
        self.failed = ""

    def feed(self, data: bytes) -> list[Finding]:
        if self.failed:
            return []
        try:
            if self.sock is None:
                self.sock = _connect(self.address, TIMEOUT)
                self.sock.sendall(b"zINSTREAM\0")
            self.sock.sendall(struct.pack("!I", len(data)) + data)
        except OSError as exc:
            return self._fail(f"clamd at {self._where()}: {exc.strerror or exc}")
        return []

    def finish(self) -> list[Finding]:
        if self.failed:
            return []
        try:
            if self.sock is None:  # an empty body: nothing to ask
                return []
            self.sock.sendall(b"\0\0\0\0")
            answer = _reply(self.sock)
        except OSError as exc:
            return self._fail(f"clamd at {self._where()}: {exc.strerror or exc}")
        finally:
            self._close()
        # "stream: OK", "stream: <signature> FOUND", or "<reason> ERROR"
        verdict = answer.split(":", 1)[-1].strip()
        if verdict == "OK":
            return []
        if verdict.endswith(" FOUND"):
            return [Finding("clamd", verdict.removesuffix(" FOUND"), self.action)]
        return self._fail(f"clamd answered {answer!r}")

    def _fail(self, reason: str) -> list[Finding]:
        self.failed = reason
        self._close()
        return [Finding("clamd", UNAVAILABLE, self.on_error, reason)]

    def _close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def _where(self) -> str:
        if isinstance(self.address, str):
            return self.address
        return f"{self.address[0]}:{self.address[1]}"


class ClamdScanner:
    name = "clamd"

    def __init__(
        self,
        address: str | tuple[str, int],
        action: ScanAction,
        on_error: ScanAction,
        directions: frozenset[Direction],
    ) -> None:
        self.address = address
        self.action = action
        self.on_error = on_error
        self.directions = directions

    def session(self, direction: Direction) -> ScanSession | None:
        if direction not in self.directions:
            return None
        return ClamdSession(self.address, self.action, self.on_error)

"""The running `netwarden up`'s control API, reached over its unix socket with the
token from netwarden's state directory (root's, as the daemon runs as root)."""

from __future__ import annotations

import http.client
import json
import socket
import sys
from typing import Any

from netwarden.daemon import state
from netwarden.daemon.web.token import token_path


class ApiError(Exception):
    """No daemon answers, or it refused the request (said in one sentence)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        if sys.platform == "win32":
            raise FileNotFoundError("no unix socket API on Windows")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def call(method: str, path: str, body: object = None, timeout: float = 10.0) -> Any:
    """The JSON answer of one request; ApiError when it fails."""
    socket_path = state.api_socket()
    try:
        token = token_path().read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ApiError(f"cannot read the API token ({exc.strerror}); run this as root") from None
    connection = _UnixConnection(str(socket_path), timeout)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        connection.request(
            method, path, body=None if body is None else json.dumps(body), headers=headers
        )
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    except (FileNotFoundError, ConnectionRefusedError):
        raise ApiError(
            "netwarden is not up here (`netwarden up --policy FILE` starts it)"
        ) from None
    except PermissionError:
        raise ApiError(f"cannot reach {socket_path}: run this as root") from None
    except OSError as exc:
        raise ApiError(f"the control API did not answer: {exc}") from None
    finally:
        connection.close()
    try:
        document = json.loads(text)
    except ValueError:
        document = text.strip()
    if response.status >= 400:
        detail = document.get("detail", document) if isinstance(document, dict) else document
        raise ApiError(f"{detail}")
    return document

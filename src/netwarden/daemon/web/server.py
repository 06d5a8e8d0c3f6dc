"""The web face's server: uvicorn, in a thread of its own, on a unix socket (mode
0600: root's `netwarden prompts` and tools) and, with --web, on a loopback TCP port
(the dashboard). The sockets are made here, not by uvicorn (which makes a unix socket
world-writable)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)


class WebError(Exception):
    """The web face cannot listen (said in one sentence)."""


def unix_listener(path: Path) -> socket.socket:
    if sys.platform == "win32":
        raise WebError("the control API's unix socket needs Linux; use --web on Windows")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a daemon that crashed (claim() refused a live one)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def tcp_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise WebError(f"--web: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(512)
    return sock


class WebServer:
    def __init__(self, app: ASGIApp, unix_path: Path, tcp: tuple[str, int] | None) -> None:
        self.unix_path = unix_path
        self.sockets = [unix_listener(unix_path)]
        try:
            if tcp is not None:
                self.sockets.append(tcp_listener(*tcp))
        except WebError:
            self.close_sockets()
            raise
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="netwarden-web", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=self.sockets))
        except Exception:
            log.exception("the web face stopped")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.close_sockets()

    def close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.unix_path.unlink()

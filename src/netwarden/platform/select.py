"""The one place that chooses the platform backend."""

from __future__ import annotations

import socket
import sys

from netwarden.platform.base import Backend, PlatformError


class UnsupportedPlatform(PlatformError):
    pass


def current() -> Backend:
    if sys.platform.startswith("linux"):
        from netwarden.platform.linux.backend import LinuxBackend

        return LinuxBackend()
    raise UnsupportedPlatform(
        f"netwarden has no backend for {sys.platform} yet (Linux works; Windows is planned)"
    )


def is_privileged() -> bool:
    if sys.platform == "win32":
        import ctypes

        return bool(ctypes.windll.shell32.IsUserAnAdmin())
    import os

    return os.geteuid() == 0


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where an accepted, redirected TCP connection was originally going.

    For any local listener that netwarden redirects connections to: call it on the
    accepted socket. See docs/redirect.md.
    """
    if sys.platform.startswith("linux"):
        from netwarden.platform.linux.original_dst import original_destination as linux

        return linux(sock)
    raise UnsupportedPlatform(f"original_destination has no backend for {sys.platform} yet")

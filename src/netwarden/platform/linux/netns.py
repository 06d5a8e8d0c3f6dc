"""Open kernel sockets inside a named network namespace (/run/netns/NAME).

A socket belongs to the namespace it was created in, so the monitor enters the
namespace only while it opens its sockets, then returns to its own.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from netwarden.platform.base import PlatformError

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(PlatformError):
    pass


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(name: str) -> Path:
    if not name or "/" in name or name in {".", ".."}:
        raise NetnsError(f"{name!r} is not a network namespace name")
    path = NETNS_RUN_DIR / name
    if not path.exists():
        known = ", ".join(sorted(p.name for p in NETNS_RUN_DIR.glob("*"))) or "none"
        raise NetnsError(f"network namespace {name!r} does not exist (known: {known})")
    return path


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body with this thread in namespace NAME (None: stay where we are)."""
    if name is None:
        yield
        return
    path = netns_path(name)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
        except OSError as exc:
            raise NetnsError(f"cannot enter network namespace {name!r}: {exc.strerror}") from exc
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)


def inode_of(name: str | None) -> int:
    """The namespace's inode, which /proc/PID/ns/net links name as net:[INODE]."""
    path = "/proc/self/ns/net" if name is None else str(netns_path(name))
    return os.stat(path).st_ino

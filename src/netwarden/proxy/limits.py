"""Bounds on what a proxy listener holds: a redirection loop or a flood meets a clear
log line and refused connections, never a process out of file descriptors."""

from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger(__name__)

RESERVED_FDS = 64  # for listeners, logs, the history database, netlink sockets
MAX_DEFAULT = 10_000
LOG_EVERY = 10.0  # seconds between two "limit reached" lines of one listener


def default_limit() -> int:
    """Connections a proxy may relay at once: each holds two descriptors."""
    if sys.platform == "win32":
        return MAX_DEFAULT
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT
    return max(16, min(MAX_DEFAULT, (soft - RESERVED_FDS) // 2))


class ConnectionLimit:
    """A count of open relayed connections, safe from any thread."""

    def __init__(self, name: str, limit: int | None = None) -> None:
        self.name = name
        self.limit = limit if limit is not None else default_limit()
        self.open = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._logged = 0.0

    def enter(self) -> bool:
        """Take a place; False (and a log line now and then) when none is left."""
        with self._lock:
            if self.open < self.limit:
                self.open += 1
                return True
            self.refused += 1
            now = time.monotonic()
            if now - self._logged < LOG_EVERY:
                return False
            self._logged = now
        log.error(
            "%s: %d connections open, the limit; refusing new ones (%d so far). A "
            "redirection loop looks like this: give the proxy's upstream connections "
            "the mark redirect rules skip",
            self.name,
            self.limit,
            self.refused,
        )
        return False

    def leave(self) -> None:
        with self._lock:
            self.open -= 1

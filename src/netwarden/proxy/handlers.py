"""What the listeners do when a connection's handler task ends."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


def forget_handler(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    """A handler ended: drop its reference; one that failed (a bug) is logged, and must
    not take the listener down."""
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.error(
            "a proxy handler failed (a bug): %s: %s",
            type(error).__name__,
            error,
            exc_info=error,
        )

"""The policy's byte quotas at the CONNECT layer: a program (user, scope) that used up
a blocking quota has its next connections refused until the period ends."""

from __future__ import annotations

import logging

from netwarden.callout.api import Connection
from netwarden.engine.quotas import QuotaBook
from netwarden.model.connect import BLOCK, Verdict

log = logging.getLogger(__name__)


class QuotaGuard:
    name = "quotas"
    weight = 999_999  # right after the policy's own program rules

    def __init__(self, book: QuotaBook) -> None:
        self.book = book

    def classify(self, connection: Connection) -> Verdict | None:
        process = connection.process
        quota = self.book.exhausted(
            process.exe if process else "",
            process.name if process else "",
            connection.uid,
            process.cgroup if process else "",
        )
        if quota is None:
            return None
        log.info("quota %r used up: refused %s", quota.name, connection)
        return BLOCK

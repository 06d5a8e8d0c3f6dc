"""Tell when a program makes its first connection (as OpenSnitch asks about programs
it has not seen): one log line per new executable, with where it connected. It
decides nothing.

    netwarden up --policy policy.toml --callouts examples/callouts/new_program_notifier.py
"""

from __future__ import annotations

import logging

from netwarden.callout.api import Callout, Connection
from netwarden.model.connect import Verdict

log = logging.getLogger("netwarden.new-program")


class NewProgramNotifier(Callout):
    name = "new program notifier"
    weight = 100  # hear of every connection before anything decides it

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def classify(self, connection: Connection) -> Verdict | None:
        exe = connection.exe or "(unknown program)"
        if exe not in self.seen:
            self.seen.add(exe)
            user = connection.process.user if connection.process else "?"
            log.warning("new program on the network: %s (user %s) -> %s %s",
                        exe, user, connection.transport, connection.remote)  # fmt: skip
        return None


callouts = [NewProgramNotifier()]

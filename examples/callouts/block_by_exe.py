"""Block every connection of one executable; others go on to the next callout and
the policy. Edit BLOCKED (or set NETWARDEN_BLOCK_EXE) and run:

    netwarden up --policy policy.toml --callouts examples/callouts/block_by_exe.py
"""

from __future__ import annotations

import os

from netwarden.callout.api import Callout, Connection
from netwarden.model.connect import BLOCK, Verdict

BLOCKED = os.environ.get("NETWARDEN_BLOCK_EXE", "/usr/bin/telnet")


class BlockExecutable(Callout):
    def __init__(self, exe: str) -> None:
        self.exe = exe
        self.name = f"block {os.path.basename(exe)}"

    def classify(self, connection: Connection) -> Verdict | None:
        return BLOCK if connection.exe == self.exe else None


callouts = [BlockExecutable(BLOCKED)]

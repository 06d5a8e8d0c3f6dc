"""Send one program's outgoing connections to port 80 to a local listener, as the
brief's connect-redirect example, but only for that program: others go out as
usual. The listener reads the original destination with
netwarden.engine.host.original_destination(sock).

    NETWARDEN_REDIRECT_EXE=/usr/bin/curl netwarden up --policy policy.toml \\
        --callouts examples/callouts/redirect_one_program.py
"""

from __future__ import annotations

import os

from netwarden.callout.api import Callout, Connection
from netwarden.model import Transport
from netwarden.model.connect import ConnectDirection, Verdict, redirect

PROGRAM = os.environ.get("NETWARDEN_REDIRECT_EXE", "/usr/bin/curl")
PORT = int(os.environ.get("NETWARDEN_REDIRECT_PORT", "80"))
LISTENER = os.environ.get("NETWARDEN_REDIRECT_TO", "127.0.0.1:55555")


class RedirectOneProgram(Callout):
    name = "redirect one program"

    def __init__(self, exe: str, port: int, listener: str) -> None:
        self.exe, self.port = exe, port
        address, _, listener_port = listener.rpartition(":")
        self.target = (address.strip("[]"), int(listener_port))

    def classify(self, connection: Connection) -> Verdict | None:
        if (
            connection.transport is Transport.TCP
            and connection.direction is ConnectDirection.OUT
            and connection.remote.port == self.port
            and connection.exe == self.exe
        ):
            return redirect(*self.target)
        return None


callouts = [RedirectOneProgram(PROGRAM, PORT, LISTENER)]

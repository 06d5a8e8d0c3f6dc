"""A STREAM callout: reset any connection through netwarden's inspecting proxy that
sends a secret word out (in an HTTP body, plain or intercepted, or in raw bytes), and
count what HTTP bodies carried each way. Edit SECRET (or set NETWARDEN_SECRET) and run
with a policy that redirects connections to netwarden's proxy:

    netwarden up --policy policy.toml --callouts examples/callouts/stream_secret_guard.py

A word split across two pieces is still found: the tail of each piece is kept.
"""

from __future__ import annotations

import collections
import os

from netwarden.callout.api import Callout
from netwarden.model.connect import BLOCK, StreamData, Verdict

SECRET = os.environ.get("NETWARDEN_SECRET", "TOP-SECRET").encode()


class SecretGuard(Callout):
    name = "secret guard"

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.tails: dict[tuple[str, str], bytes] = {}
        self.body_bytes: collections.Counter[str] = collections.Counter()

    def stream(self, data: StreamData) -> Verdict | None:
        key = (str(data.client), "out" if data.outbound else "in")
        if data.method:
            self.body_bytes[key[1]] += len(data.data)
        if not data.outbound:
            return None
        seen = self.tails.get(key, b"") + data.data
        if self.secret in seen:
            self.tails.pop(key, None)
            return BLOCK
        if data.end:
            self.tails.pop(key, None)
        else:
            self.tails[key] = seen[-(len(self.secret) - 1) :] if len(self.secret) > 1 else b""
        return None


callouts = [SecretGuard(SECRET)]

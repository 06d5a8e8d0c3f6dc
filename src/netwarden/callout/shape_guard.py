"""The policy's rate limits at the CONNECT layer: a new connection of a limited
program, user, scope or host is handed to the kernel's shaper (by its local port)
before its first packet goes on; it is released when the flow ends."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from netwarden.callout.api import Connection
from netwarden.engine.host import Shaper
from netwarden.model import Endpoint, Flow, Transport
from netwarden.model.connect import Verdict
from netwarden.policy.limits_model import Shape

NONE = -1


class ShapeGuard:
    name = "shaping"
    weight = 2_000_000  # asked before anything that could decide first

    def __init__(self, shapes: Sequence[Shape], shaper: Shaper) -> None:
        self.shapes = tuple(shapes)
        self.shaper = shaper
        # The limit each TCP connection fell under (NONE: none), by its two ends: for
        # netwarden's proxy, which paces the connections redirected to it itself.
        self.decided: dict[tuple[Endpoint, Endpoint], int] = {}

    def classify(self, connection: Connection) -> Verdict | None:
        process = connection.process
        request = connection.request
        chosen = NONE
        for index, shape in enumerate(self.shapes):
            if shape.who.matches(
                process.exe if process else "",
                process.name if process else "",
                connection.uid,
                process.cgroup if process else "",
                request.remote.address,
            ):
                version = ipaddress.ip_address(request.local.address).version
                self.shaper.assign(str(request.transport), version, request.local.port, index)
                chosen = index
                break
        if request.transport is Transport.TCP and process is not None:
            self.decided[(request.local, request.remote)] = chosen
        return None  # shaping decides nothing: the next callouts and the policy do

    def shape_of(self, client: Endpoint, destination: Endpoint) -> int | None:
        """The limit a TCP connection fell under when it started (NONE: none); None
        when it was not seen."""
        return self.decided.get((client, destination))

    def flow_deleted(self, flow: Flow) -> None:
        local = flow.key.local
        version = ipaddress.ip_address(local.address).version
        self.shaper.release(str(flow.key.transport), version, local.port)
        self.decided.pop((local, flow.key.remote), None)

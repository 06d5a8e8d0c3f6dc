"""New connections held at their first packet (WFP's ALE connect and accept layers),
and the verdicts that release them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from netwarden.model.flow import Endpoint, Transport


class ConnectDirection(enum.StrEnum):
    OUT = "out"  # this host connects (or sends the first datagram)
    IN = "in"  # a connection (or first datagram) arrives for this host


class Action(enum.StrEnum):
    PERMIT = "permit"
    BLOCK = "block"
    REDIRECT = "redirect"
    CONTINUE = "continue"  # no opinion: the next callout decides, then the policy
    ASK = "ask"  # hold the connection while a person is asked (`netwarden prompts`)


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    target: Endpoint | None = None  # REDIRECT only: a local listener

    def __str__(self) -> str:
        return f"redirect to {self.target}" if self.target is not None else str(self.action)


PERMIT = Verdict(Action.PERMIT)
BLOCK = Verdict(Action.BLOCK)
CONTINUE = Verdict(Action.CONTINUE)
ASK = Verdict(Action.ASK)


def redirect(address: str, port: int) -> Verdict:
    """Send the connection to a local listener instead (outgoing TCP only)."""
    return Verdict(Action.REDIRECT, Endpoint(address, port))


@dataclass(slots=True)
class ConnectRequest:
    """A new connection the kernel holds until it is decided. `ticket` is the
    backend's handle on it."""

    ticket: int
    transport: Transport
    direction: ConnectDirection
    local: Endpoint
    remote: Endpoint
    uid: int | None = None  # of the local socket, when the kernel said
    interface: int = 0  # interface index the packet leaves or arrives by

    def __str__(self) -> str:
        arrow = "->" if self.direction is ConnectDirection.OUT else "<-"
        return f"{self.transport} {self.direction} {self.local} {arrow} {self.remote}"


@dataclass(slots=True)
class FlowPacket:
    """One packet of a connection a callout watches (the PACKET layer), held until
    decided: PERMIT or CONTINUE lets it pass, BLOCK drops it."""

    ticket: int
    transport: Transport
    direction: ConnectDirection  # OUT: sent by this host; IN: arriving for it
    local: Endpoint
    remote: Endpoint
    size: int  # of the IP packet
    payload: bytes  # the transport's payload (what the application sent), as copied

    def __str__(self) -> str:
        arrow = "->" if self.direction is ConnectDirection.OUT else "<-"
        return f"{self.transport} {self.local} {arrow} {self.remote}, {self.size} bytes"


@dataclass(frozen=True, slots=True)
class StreamData:
    """STREAM layer: bytes netwarden's inspecting proxy passes on, in one direction,
    decrypted when TLS is intercepted; for HTTP, a message's body de-chunked, with the
    request it belongs to. `end`: that body (or direction) is complete."""

    client: Endpoint
    destination: Endpoint
    outbound: bool  # client -> server
    data: bytes
    app: str = ""  # what the first bytes were: "tls example.com h2", "http GET host"
    method: str = ""  # HTTP: the request this body belongs to
    host: str = ""
    path: str = ""
    status: int = 0  # HTTP: the response's status (inbound)
    end: bool = False

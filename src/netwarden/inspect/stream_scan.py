"""Raw TCP streams (not HTTP) through the scanners, when the policy asks for it: each
piece is scanned before it is passed on (nothing is held back, since a protocol may wait
for an answer to what it sent); a blocking finding resets the connection."""

from __future__ import annotations

from netwarden.inspect.commands import Close, Command, EndOfData, Observed, Send, Side
from netwarden.inspect.scanning import BodyScan, ContentScanning, Direction, detections


class StreamScan:
    def __init__(self, scanning: ContentScanning, observe: bool = False) -> None:
        self.observe = observe
        self.scans: dict[Side, BodyScan | None] = {
            Side.CLIENT: scanning.body(Direction.UPLOAD, hold_back=0),
            Side.SERVER: scanning.body(Direction.DOWNLOAD, hold_back=0),
        }

    def from_client(self, data: bytes) -> list[Command]:
        return self._pass(Side.CLIENT, data)

    def from_server(self, data: bytes) -> list[Command]:
        return self._pass(Side.SERVER, data)

    def _pass(self, side: Side, data: bytes) -> list[Command]:
        out: list[Command] = [Observed(side, data, end=not data)] if self.observe else []
        scan = self.scans[side]
        if scan is None:
            out.append(Send(side.other, data) if data else EndOfData(side.other))
            return out
        way = Direction.UPLOAD if side is Side.CLIENT else Direction.DOWNLOAD
        scanned = scan.feed(data) if data else scan.finish()
        out += detections(scanned, way)
        if scanned.blocked is not None:
            found = scanned.blocked
            reason = f"{found.scanner} found {found.signature} in the {way.value}"
            return [*out, Close(reset=True, reason=reason)]
        if scanned.release:
            out.append(Send(side.other, scanned.release))
        if not data:
            out.append(EndOfData(side.other))
        return out

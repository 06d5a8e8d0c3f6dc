"""The PACKET layer on Linux: every packet of the connections a callout watches
(their conntrack mark carries WATCH_BIT), queued after the CONNECT layer's queue."""

from __future__ import annotations

from netwarden.model.connect import FlowPacket
from netwarden.platform.linux.connect_queue import open_queue, sides_of
from netwarden.platform.packet_headers import ip_length, parse_headers, payload_at
from netwarden.policy.connect_layer import ConnectLayer

COPY = 65535  # whole packets: a callout that watches them wants their payload


class LinuxPacketQueue:
    """The rules that fill it are the CONNECT layer's (connect_queue.queue_rules)."""

    def __init__(self, layer: ConnectLayer) -> None:
        self._queue = open_queue(layer.packet_queue, layer.fail_open, COPY)

    def fileno(self) -> int:
        return self._queue.fileno()

    def receive(self) -> list[FlowPacket]:
        packets = []
        for queued in self._queue.receive():
            data = queued.payload
            parsed = parse_headers(data)  # once a packet: this is the per-packet path
            if parsed is None:
                self._queue.verdict(queued.packet_id, True)
                continue
            addresses, header = parsed
            direction, local, remote = sides_of(queued.hook, addresses[1], addresses[2])
            payload = payload_at(data, addresses[0], header)
            packets.append(
                FlowPacket(
                    queued.packet_id,
                    addresses[0],
                    direction,
                    local,
                    remote,
                    ip_length(data),
                    payload,
                )
            )
        return packets

    def decide(self, packet: FlowPacket, accept: bool) -> None:
        self._queue.verdict(packet.ticket, accept)

    def close(self) -> None:
        self._queue.close()

"""The PACKET layer on Linux: every packet of the connections a callout watches
(their conntrack mark carries WATCH_BIT), queued after the CONNECT layer's queue."""

from __future__ import annotations

from types import TracebackType

from netwarden.model.connect import ConnectDirection, FlowPacket
from netwarden.platform.linux.nfqueue import NfQueue
from netwarden.platform.packet_headers import ip_length, parse_ip, transport_payload
from netwarden.policy.connect_layer import ConnectLayer

NF_INET_LOCAL_IN = 1
COPY = 65535  # whole packets: a callout that watches them wants their payload


class LinuxPacketQueue:
    """The rules that fill it are the CONNECT layer's (connect_queue.queue_rules)."""

    def __init__(self, layer: ConnectLayer) -> None:
        self._queue = NfQueue(layer.packet_queue, fail_open=layer.fail_open, copy=COPY)

    def __enter__(self) -> LinuxPacketQueue:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()

    def fileno(self) -> int:
        return self._queue.fileno()

    def receive(self) -> list[FlowPacket]:
        packets = []
        for queued in self._queue.receive():
            addresses = parse_ip(queued.payload)
            if addresses is None:
                self._queue.verdict(queued.packet_id, True)
                continue
            transport, source, destination = addresses
            if queued.hook == NF_INET_LOCAL_IN:
                direction, local, remote = ConnectDirection.IN, destination, source
            else:
                direction, local, remote = ConnectDirection.OUT, source, destination
            packets.append(FlowPacket(
                queued.packet_id, transport, direction, local, remote,
                ip_length(queued.payload), transport_payload(queued.payload),
            ))  # fmt: skip
        return packets

    def decide(self, packet: FlowPacket, accept: bool) -> None:
        self._queue.verdict(packet.ticket, accept)

    def close(self) -> None:
        self._queue.close()

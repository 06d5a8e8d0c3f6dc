"""HTTP/2 for the test web server (netwarden.testing.web), on h2 over a blocking
socket: the same paths, answered stream by stream under flow control."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions

Answer = Callable[[str, dict[str, str], bytes], tuple[dict[str, str], int, bytes]]


class _Body:
    """A body to send: a size of 'x' bytes made as it goes, then data."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.filler = data, size
        self.left = size + len(data)

    def take(self, count: int) -> bytes:
        count = min(count, self.left)
        self.left -= count
        filler = min(count, self.filler)
        self.filler -= filler
        piece, self.data = self.data[: count - filler], self.data[count - filler :]
        return b"x" * filler + piece


def serve(sock: socket.socket, answer: Answer) -> None:
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    connection.initiate_connection()
    sock.sendall(connection.data_to_send())
    requests: dict[int, dict[str, str]] = {}
    bodies: dict[int, bytes] = {}
    sending: dict[int, _Body] = {}
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        try:
            events = connection.receive_data(data)
        except h2.exceptions.ProtocolError:
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                requests[event.stream_id] = dict(event.headers or [])  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                bodies[event.stream_id] = bodies.get(event.stream_id, b"") + (event.data or b"")
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id in requests:
                headers = requests.pop(event.stream_id)
                received = bodies.pop(event.stream_id, b"")
                response, size, body = answer(headers.get(":path", "/"), headers, received)
                connection.send_headers(event.stream_id, [(":status", "200"), *response.items()])
                sending[event.stream_id] = _Body(body, size)
            elif isinstance(event, h2.events.StreamReset):
                sending.pop(event.stream_id, None)
                requests.pop(event.stream_id, None)
                bodies.pop(event.stream_id, None)
        for stream_id, pending in list(sending.items()):
            while pending.left:
                window = min(
                    connection.local_flow_control_window(stream_id),
                    connection.max_outbound_frame_size,
                )
                if window <= 0:
                    break
                connection.send_data(stream_id, pending.take(window))
            if not pending.left:
                connection.end_stream(stream_id)
                del sending[stream_id]
        try:
            sock.sendall(connection.data_to_send())
        except OSError:
            return


def headers_json(headers: dict[str, str]) -> bytes:
    return json.dumps({k: v for k, v in headers.items() if not k.startswith(":")}).encode()

"""What netwarden's flow-event programs cost the processes they watch.

The programs run on every sendmsg and recvmsg of the host (the sock_send_length and
sock_recv_length tracepoints): the flow events' and, since the monitor counts raw and
packet sockets, the OtherSockets counters', which leave TCP at their third test. A
ping-pong of 1-byte messages over loopback TCP, four socket calls a round trip, is
about the worst case: it is timed without the programs, with them watching its
namespace, with them watching another namespace, and with the counters too, in
alternation (best of three each), and the ratios printed.

Run as root from the repository root: .venv/bin/python -m benchmarks.flow_event_cost
"""

from __future__ import annotations

import os
import socket
import time

from benchmarks.common import machine
from netwarden.testing.netlab import Lab

ROUND_TRIPS = 100_000


def round_trip_seconds() -> float:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    with client, accepted:
        for sock in (client, accepted):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        for _ in range(ROUND_TRIPS):
            client.send(b"x")
            accepted.recv(1)
            accepted.send(b"y")
            client.recv(1)
        return (time.perf_counter() - started) / ROUND_TRIPS


def main() -> None:
    from netwarden.platform.linux import _native

    print(f"machine: {machine()}")
    with Lab() as lab:
        elsewhere = os.stat(f"/run/netns/{lab.host('elsewhere').netns}").st_ino
        here = os.stat("/proc/self/ns/net").st_ino
        best: dict[str, float] = {}
        for _round in range(3):
            for name, netns, others in (
                ("without", None, False),
                ("watching this namespace", here, False),
                ("watching another namespace", elsewhere, False),
                ("watching this namespace, raw and packet counters too", here, True),
            ):
                events = None if netns is None else _native.FlowEvents(netns)
                counters = _native.OtherSockets(netns) if others and netns else None
                try:
                    seconds = round_trip_seconds()
                finally:
                    if events is not None:
                        events.close()
                    if counters is not None:
                        counters.close()
                best[name] = min(best.get(name, seconds), seconds)
    base = best["without"]
    for name, seconds in best.items():
        per_call = (seconds - base) / 4 * 1e9
        print(f"| 1-byte TCP ping-pong, {name} | {seconds * 1e6:.2f} us a round trip "
              f"| {seconds / base:.2f}x | +{per_call:.0f} ns a socket call |")  # fmt: skip


if __name__ == "__main__":
    main()

"""netwarden's own BPF flow events (the socket send/receive tracepoints) against real
processes in netlab: who is named, with which addresses, and what stays out."""

from __future__ import annotations

import json
import sys
import time

import pytest

from netwarden.model import Transport
from netwarden.platform.base import FlowStamps, ProcessStamp
from netwarden.platform.linux.flow_events import KernelFlowStamps
from netwarden.platform.linux.procfs import read_process
from netwarden.testing.netlab import Host, Lab
from tests.integration.conftest import start_server, traffic

pytestmark = pytest.mark.root

SILENT_CLIENT = """
import json, os, socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(json.dumps({"pid": os.getpid(), "local_port": sock.getsockname()[1]}))
sock.close()
"""
BRIEF_LISTENER = """
import json, os, socket
sock = socket.socket()
sock.bind(("127.0.0.1", 5604))
sock.listen()
print(json.dumps({"pid": os.getpid()}))
"""
SAME_PORT_PAIR = """
import json, os, socket, struct, sys
for _ in range(3):  # one port pair, three connections (closed by reset: no time-wait)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.bind(("127.0.0.1", 5700))
    sock.connect(("127.0.0.1", int(sys.argv[1])))
    sock.sendall(b"x")
    sock.close()
print(json.dumps({"pid": os.getpid()}))
"""
UDP_SENDER = """
import json, os, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    sock.sendto(b"d" * 100, (sys.argv[1], 5601))
print(json.dumps({"pid": os.getpid(), "local_port": sock.getsockname()[1]}))
"""


def _collect(stamps: FlowStamps, wanted: int, seconds: float = 5) -> list[ProcessStamp]:
    found: list[ProcessStamp] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(found) < wanted:
        time.sleep(0.05)
        found.extend(stamps.drain())
    return found


def test_first_bytes_name_the_process_in_the_watched_namespace_only(lab: Lab) -> None:
    watched, elsewhere = lab.host("watched"), lab.host("elsewhere")
    lab.link(watched, elsewhere)
    start_server(watched, "tcp-server", "--bind", "127.0.0.1", "--port", "5600")
    start_server(elsewhere, "tcp-server", "--bind", "127.0.0.1", "--port", "5600")
    stamps = KernelFlowStamps(read_process, watched.netns)
    try:
        quick = traffic(watched, "quick-exit", "--host", "127.0.0.1", "--port", "5600",
                        "--send", "100000")  # fmt: skip
        hidden = traffic(elsewhere, "quick-exit", "--host", "127.0.0.1", "--port", "5600",
                         "--send", "100000")  # fmt: skip
        udp = json.loads(_run_udp_sender(watched, elsewhere.ipv4))
        silent = json.loads(watched.run([sys.executable, "-c", SILENT_CLIENT, "5600"]).stdout)
        listener = json.loads(watched.run([sys.executable, "-c", BRIEF_LISTENER]).stdout)
        reused = json.loads(watched.run([sys.executable, "-c", SAME_PORT_PAIR, "5600"]).stdout)
        found = _collect(stamps, wanted=9)
    finally:
        stamps.close()
    by_port = {(s.transport.value, s.local.port): s for s in found}
    client = by_port[("tcp", quick["local_port"])]
    assert client.process.pid == quick["pid"]
    assert client.process.name.startswith("python")
    assert client.remote.address == "127.0.0.1"
    assert client.remote.port == 5600
    # The server's side is named by the server reading it.
    server = next(s for s in found if s.local.port == 5600 and s.remote.port == quick["local_port"])
    assert "tcp-server" in server.process.cmdline
    # An unconnected UDP socket: its local side, for every peer.
    sender = by_port[("udp", udp["local_port"])]
    assert sender.process.pid == udp["pid"]
    assert sender.remote.port == 0
    assert [s for s in found if s.process.pid == hidden["pid"]] == []
    # A connection that never carries a byte (a port scan) is named when it is made.
    assert by_port[("tcp", silent["local_port"])].process.pid == silent["pid"]
    # Each connection on a port pair used a moment before is named again.
    again = [s for s in found if s.local.port == 5700 and s.process.pid == reused["pid"]]
    assert len(again) == 3, again
    # So is a listener, as it starts listening.
    assert by_port[("tcp", 5604)].process.pid == listener["pid"]
    assert by_port[("tcp", 5604)].remote.port == 0
    # Each conversation once, however many datagrams it carried.
    assert len([s for s in found if s.local.port == udp["local_port"]]) == 1


def _run_udp_sender(host: Host, target: str) -> str:
    return host.run([sys.executable, "-c", UDP_SENDER, target]).stdout.strip()


def test_without_netwardens_programs_pydivert_names_the_process(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback for kernels without the tracepoints (or a module built without a
    compiler): pydivert's FLOW and SOCKET layers through the same stamp thread."""
    from netwarden.platform.linux import flow_events
    from netwarden.platform.linux.backend import LinuxBackend

    def unavailable(*_args: object) -> None:
        raise flow_events.FlowEventsUnavailable("switched off by the test")

    monkeypatch.setattr(flow_events, "KernelFlowStamps", unavailable)
    host = lab.host("watched")
    start_server(host, "tcp-server", "--bind", "127.0.0.1", "--port", "5602")
    missing: list[str] = []
    stamps = LinuxBackend._flow_stamps(host.netns, missing, read_process)
    assert stamps is not None, missing
    assert type(stamps).__name__ == "DivertFlowStamps"
    try:
        quick = traffic(host, "quick-exit", "--host", "127.0.0.1", "--port", "5602",
                        "--send", "100000")  # fmt: skip
        found = _collect(stamps, wanted=2)
    finally:
        stamps.close()
    client = [
        s for s in found if s.transport is Transport.TCP and s.local.port == quick["local_port"]
    ]
    assert client, found
    assert client[0].process.pid == quick["pid"]

"""The monitor against real traffic in netlab: bytes, processes, IPv4/IPv6, UDP, loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from netwarden.testing.netlab import Host
from tests.integration.conftest import start_server, traffic
from tests.integration.monitor_process import MonitorProcess, within

pytestmark = pytest.mark.root

PYTHON_EXE = os.path.realpath(sys.executable)


def _address(server: Host, family: int) -> str:
    return server.ipv4 if family == 4 else server.ipv6


def _is(port: int) -> Any:
    return lambda e: e["local_port"] == port


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_transfer_has_the_right_process_and_bytes(
    pair: tuple[Host, Host], monitor_client: MonitorProcess, family: int
) -> None:
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000", "--send", "3000000")
    report = traffic(
        client, "tcp-client", "--host", _address(server, family), "--port", "5000",
        "--send", "7000000", "--recv", "3000000",
    )  # fmt: skip
    [flow] = monitor_client.wait_closed(_is(report["local_port"]))
    assert flow["transport"] == "tcp"
    assert flow["remote_address"] == _address(server, family)
    assert flow["process"]["pid"] == report["pid"]
    assert flow["process"]["exe"] == PYTHON_EXE
    assert "tcp-client" in flow["process"]["cmdline"]
    assert within(flow["bytes_sent"], 7_000_000), flow["bytes_sent"]
    assert within(flow["bytes_received"], 3_000_000), flow["bytes_received"]


@pytest.mark.parametrize("family", [4, 6])
def test_udp_both_directions(
    pair: tuple[Host, Host], monitor_client: MonitorProcess, family: int
) -> None:
    client, server = pair
    start_server(server, "udp-server", "--port", "5001", "--reply", "300")
    report = traffic(
        client, "udp-client", "--host", _address(server, family), "--port", "5001",
        "--count", "40", "--size", "1200",
    )  # fmt: skip
    [flow] = monitor_client.wait_closed(_is(report["local_port"]))
    assert flow["transport"] == "udp"
    assert flow["process"]["pid"] == report["pid"]
    assert within(flow["bytes_sent"], 48_000), flow["bytes_sent"]
    assert within(flow["bytes_received"], 12_000), flow["bytes_received"]


def test_a_udp_query_is_not_mirrored_onto_a_local_server_of_that_port(
    pair: tuple[Host, Host], monitor_client: MonitorProcess
) -> None:
    """A server of this host on 0.0.0.0:5004 and a query from this host to another
    host's port 5004: one flow (the client's), none credited to the local server."""
    client, server = pair
    start_server(server, "udp-server", "--port", "5004", "--reply", "100")
    start_server(client, "udp-server", "--bind", "0.0.0.0", "--port", "5004")
    report = traffic(
        client,
        "udp-client",
        "--host",
        server.ipv4,
        "--port",
        "5004",
        "--count",
        "3",
        "--size",
        "50",
    )
    [flow] = monitor_client.wait_closed(_is(report["local_port"]))
    assert flow["process"]["pid"] == report["pid"]
    # Its bytes come from the conntrack entry a mirrored flow would come from: once they
    # are reported, so would the mirrored flow have been.
    assert flow["bytes_sent"] == 150
    assert monitor_client.seen(lambda e: e["local_address"] == server.ipv4) == []


@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_loopback_shows_both_ends(
    pair: tuple[Host, Host], monitor_client: MonitorProcess, loopback: str
) -> None:
    client, _server = pair
    srv = start_server(client, "tcp-server", "--bind", loopback, "--port", "5002",
                       "--send", "200000")  # fmt: skip
    report = traffic(
        client, "tcp-client", "--host", loopback, "--port", "5002", "--send", "500000",
        "--recv", "200000",
    )  # fmt: skip
    [mine] = monitor_client.wait_closed(_is(report["local_port"]))
    [theirs] = monitor_client.wait_closed(
        lambda e: e["local_port"] == 5002 and e["remote_port"] == report["local_port"]
    )
    assert mine["process"]["pid"] == report["pid"]
    assert theirs["process"]["pid"] != report["pid"]
    assert "tcp-server" in theirs["process"]["cmdline"]
    assert srv.pid in (theirs["process"]["pid"], _parent(theirs["process"]["pid"]))
    assert within(mine["bytes_sent"], 500_000)
    assert within(theirs["bytes_received"], 500_000)
    assert within(mine["bytes_received"], 200_000)
    assert within(theirs["bytes_sent"], 200_000)


def _parent(pid: int) -> int:
    """The nsenter wrapper that Host.popen starts is the server's parent."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def test_process_that_lives_milliseconds_is_attributed(
    pair: tuple[Host, Host], monitor_client: MonitorProcess
) -> None:
    client, server = pair
    start_server(server, "tcp-server", "--port", "5003")
    report = traffic(client, "quick-exit", "--host", server.ipv4, "--port", "5003",
                     "--send", "100000")  # fmt: skip
    [flow] = monitor_client.wait_closed(_is(report["local_port"]))
    assert flow["process"]["pid"] == report["pid"], flow
    assert flow["process"]["name"].startswith("python")
    assert flow["attribution"] in ("flow-event", "socket-owner")
    # Under heavy load the process can be gone before its executable is read; the
    # flow then says so rather than showing an empty path without a reason.
    if flow["process"]["exe"] != PYTHON_EXE:
        assert "exited before" in flow["attribution_reason"], flow
    assert within(flow["bytes_sent"], 100_000), flow["bytes_sent"]
    # The premise: the process lived for milliseconds from start to exit.
    print(f"process lifetime after interpreter start: {report['seconds'] * 1000:.1f} ms")


def test_200_short_connections_all_reach_history(
    pair: tuple[Host, Host], history_db: Path, monitor_client: MonitorProcess
) -> None:
    client, server = pair
    start_server(server, "tcp-server", "--port", "5004", "--send", "500")
    started = time.monotonic()
    report = traffic(client, "tcp-client", "--host", server.ipv4, "--port", "5004",
                     "--send", "1000", "--recv", "500", "--count", "200", "--quiet")  # fmt: skip
    elapsed = time.monotonic() - started
    assert report["connections"] == 200
    monitor_client.wait_closed(lambda e: e["remote_port"] == 5004, count=200)
    assert monitor_client.stop() == 0
    flows = _history(history_db, 5004)
    ports = {f["local_port"] for f in flows}
    assert len(flows) == 200, f"{len(flows)} flows in {elapsed:.2f}s"
    assert len(ports) == 200
    for flow in flows:
        assert flow["process"]["pid"] == report["pid"]
        assert within(flow["bytes_sent"], 1000), flow
        assert within(flow["bytes_received"], 500), flow


def test_a_thousand_loopback_connections_all_reach_history_with_both_processes(
    pair: tuple[Host, Host], history_db: Path, monitor_client: MonitorProcess
) -> None:
    """Load: both ends of each connection are in the watched namespace (2,000 flows of
    processes that make them back to back); every flow is named and counted."""
    client, _server = pair
    start_server(client, "tcp-server", "--bind", "127.0.0.1", "--port", "5005", "--send", "500")
    report = traffic(client, "tcp-client", "--host", "127.0.0.1", "--port", "5005",
                     "--send", "1000", "--recv", "500", "--count", "1000", "--quiet")  # fmt: skip
    monitor_client.wait_closed(lambda e: 5005 in (e["local_port"], e["remote_port"]), count=2000)
    assert monitor_client.stop() == 0
    flows = _history(history_db, 5005)
    clients = [f for f in flows if f["remote_port"] == 5005]
    servers = [f for f in flows if f["local_port"] == 5005 and f["remote_port"] != 0]
    assert len(clients) == len(servers) == 1000
    assert len({f["local_port"] for f in clients}) == 1000
    for flow in clients:
        assert flow["process"]["pid"] == report["pid"], flow
        assert within(flow["bytes_sent"], 1000), flow
    for flow in servers:
        assert "tcp-server" in flow["process"]["cmdline"], flow
        assert within(flow["bytes_received"], 1000), flow


def _history(db: Path, port: int) -> list[dict[str, Any]]:
    """`netwarden history --port PORT --format json` of the database."""
    result = subprocess.run(
        [sys.executable, "-m", "netwarden", "history", "--db", str(db),
         "--port", str(port), "--format", "json", "--limit", "5000"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    flows: list[dict[str, Any]] = json.loads(result.stdout)
    return flows


def test_monitor_removes_its_table_when_stopped(
    pair: tuple[Host, Host], monitor_client: MonitorProcess
) -> None:
    client, _server = pair
    assert "netwarden_monitor" in client.run(["nft", "list", "tables"]).stdout
    assert monitor_client.stop() == 0
    assert client.run(["nft", "list", "tables"]).stdout.strip() == ""


def test_processes_that_live_milliseconds_all_carry_exe_and_cmdline(
    pair: tuple[Host, Host], monitor_client: MonitorProcess, tmp_path: Path
) -> None:
    """20 processes started back to back, each connecting, sending 100 kB and exiting
    within a few milliseconds: /proc is gone before anyone can read it, what their exec
    recorded names them."""
    client, server = pair
    program = tmp_path / "shortlived"
    source = Path(__file__).with_name("shortlived.c")
    subprocess.run(["gcc", "-O2", "-o", str(program), str(source)], check=True)
    start_server(server, "tcp-server", "--port", "5010")
    burst = f"for i in $(seq 20); do {program} {server.ipv4} 5010 100000; done"
    lines = client.run(["bash", "-c", burst]).stdout.split("\n")
    ports = {int(port): int(pid) for pid, port in (line.split() for line in lines if line)}
    assert len(ports) == 20
    flows = monitor_client.wait_closed(lambda e: e["local_port"] in ports, count=20)
    for flow in flows:
        process = flow["process"]
        assert process["pid"] == ports[flow["local_port"]]
        assert process["exe"] == str(program), flow
        assert process["cmdline"] == [str(program), server.ipv4, "5010", "100000"], flow
        assert process["uid"] == 0
        assert flow["bytes_sent"] == 100_000


UNACKNOWLEDGED = """
import json, socket, struct, sys, time
sock = socket.create_connection((sys.argv[1], 5011))
print(json.dumps({"local_port": sock.getsockname()[1]}), flush=True)
sys.stdin.readline()  # the server's side now drops every packet
sock.sendall(b"u" * 1000)
time.sleep(1.5)  # retransmitted, never acknowledged
sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
sock.close()  # a reset
"""


def test_data_never_acknowledged_reads_what_was_sent_once(
    pair: tuple[Host, Host], monitor_client: MonitorProcess
) -> None:
    client, server = pair
    start_server(server, "tcp-server", "--port", "5011")
    sender = client.popen(
        [sys.executable, "-c", UNACKNOWLEDGED, server.ipv4],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert sender.stdout is not None
    assert sender.stdin is not None
    port = json.loads(sender.stdout.readline())["local_port"]
    drop = "add table inet t; add chain inet t c { type filter hook input priority 0; }; "
    server.run(["nft", drop + "add rule inet t c tcp dport 5011 drop"])
    sender.stdin.write("go\n")
    sender.stdin.flush()
    assert sender.wait(timeout=20) == 0
    (flow,) = monitor_client.wait_closed(
        lambda e: e["local_port"] == port and e["remote_port"] == 5011
    )
    assert flow["bytes_sent"] == 1000, flow  # not 1 (the SYN), nor the retransmissions
    # The reset socket, reported by the kernel with its peer's port zeroed, is no flow.
    phantoms = monitor_client.seen(lambda e: e["local_port"] == port and e["remote_port"] == 0)
    assert phantoms == []


STEADY_UDP = """
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect((sys.argv[1], int(sys.argv[2])))
print(json.dumps({"local_port": sock.getsockname()[1]}), flush=True)
sent, end = 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    sent += sock.send(b"d" * 100)
    time.sleep(0.05)
print(json.dumps({"sent": sent}), flush=True)
"""


def test_a_udp_conversation_under_way_at_the_start_is_counted_since_then(
    pair: tuple[Host, Host], history_db: Path
) -> None:
    client, server = pair
    start_server(server, "udp-server", "--port", "5012")
    before = client.popen(
        [sys.executable, "-c", STEADY_UDP, server.ipv4, "5012", "5"], stdout=subprocess.PIPE
    )
    assert before.stdout is not None
    old_port = json.loads(before.stdout.readline())["local_port"]
    time.sleep(1.5)
    monitor = MonitorProcess(client.netns, history_db)
    try:
        after = client.run([sys.executable, "-c", STEADY_UDP, server.ipv4, "5012", "1"])
        new_port = json.loads(after.stdout.splitlines()[0])["local_port"]
        new_sent = json.loads(after.stdout.splitlines()[1])["sent"]
        old_sent = json.loads(before.stdout.readline())["sent"]
        deadline = time.monotonic() + 10

        def last(port: int) -> dict[str, Any]:
            while time.monotonic() < deadline:
                seen = monitor.seen(lambda e: e["local_port"] == port and e["remote_port"] == 5012)
                sent = seen[-1]["bytes_sent"] if seen else 0
                whole = port != new_port or sent == new_sent  # the new one: all of it
                if sent and sent % 100 == 0 and whole:
                    return seen[-1]
                time.sleep(0.2)
            raise AssertionError(
                f"no flow for port {port}: {monitor.seen(lambda e: e['local_port'] == port)[-3:]}"
            )

        old = last(old_port)
        assert old["bytes_counted_since"] > 0, old
        assert "under way when the monitor started" in old["bytes_note"]
        assert 0 < old["bytes_sent"] < old_sent, old
        new = last(new_port)
        assert new["bytes_sent"] == new_sent
        assert "bytes_counted_since" not in new
    finally:
        monitor.stop()


LATE_CLOSER = """
import json, socket, sys, time
listener = socket.create_server(("0.0.0.0", 5013))
print("ready", flush=True)
peer, _ = listener.accept()
peer.sendall(b"s" * 500_000)
time.sleep(1.5)  # closes well after the client did: its FIN finds the client gone
peer.close()
"""


def test_a_client_that_closes_first_reads_exactly_what_it_received(
    pair: tuple[Host, Host], monitor_client: MonitorProcess
) -> None:
    """The client's socket is destroyed before the server's FIN comes: nothing of a FIN
    is in its count (one byte went missing when every destroyed socket was taken to
    have counted one)."""
    client, server = pair
    closer = server.popen([sys.executable, "-c", LATE_CLOSER], stdout=subprocess.PIPE)
    assert closer.stdout is not None
    assert closer.stdout.readline().strip() == "ready"
    exchange = ["--host", server.ipv4, "--port", "5013", "--send", "300", "--recv", "500000"]
    report = traffic(client, "tcp-client", *exchange)
    (flow,) = monitor_client.wait_closed(_is(report["local_port"]))
    assert (flow["bytes_sent"], flow["bytes_received"]) == (300, 500_000)

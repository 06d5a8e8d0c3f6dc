"""Raw IP, ICMP ping and AF_PACKET sockets in the monitor: every way of the traffic
zoo shows as a flow of its own, with the right program and the exact bytes it wrote
and read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from netwarden.testing.netlab import Host
from tests.integration.monitor_process import MonitorProcess

pytestmark = pytest.mark.root

PYTHON = os.path.realpath(sys.executable)
HOLD = """
import os, socket, sys
held = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
print(os.fstat(held.fileno()).st_ino, flush=True)
sys.stdin.read()
"""


def _socket_of(inode: int, event: dict[str, Any]) -> bool:
    return bool(event["remote_port"] == inode)


def test_every_way_shows_with_its_program_and_exact_bytes(
    pair: tuple[Host, Host], history_db: Path, monitor_client: MonitorProcess
) -> None:
    client, server = pair
    client.run(["sysctl", "-qw", "net.ipv4.ping_group_range=0 0"])  # ping sockets for root
    zoo_peers = ["--peer4", server.ipv4, "--peer6", server.ipv6, "--interface", "nw1a"]
    zoo = client.run([sys.executable, "-m", "netwarden.testing.traffic_zoo", *zoo_peers])
    ways: list[dict[str, Any]] = [json.loads(line) for line in zoo.stdout.splitlines()]
    assert len(ways) == 8
    for way in ways:
        assert way["sent"] + way["received"] > 0, way
        (flow,) = monitor_client.wait_closed(partial(_socket_of, way["inode"]))
        assert flow["transport"] == way["transport"], way["way"]
        assert (flow["bytes_sent"], flow["bytes_received"]) == (way["sent"], way["received"]), (
            way,
            flow,
        )
        assert flow["process"]["pid"] == way["pid"], way["way"]
        assert flow["process"]["exe"] == PYTHON, way["way"]
    assert monitor_client.stop() == 0
    # In the history, and found by its protocol.
    history = [sys.executable, "-m", "netwarden", "history", "--db", str(history_db)]
    shown = client.run([*history, "--format", "json"]).stdout
    recorded = {(flow["transport"], flow["remote_port"]) for flow in json.loads(shown)}
    assert {(way["transport"], way["inode"]) for way in ways} <= recorded

    # A socket open now is listed by --once, found by its protocol.
    holder = client.popen(
        [sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout is not None
    inode = int(holder.stdout.readline())
    once = [sys.executable, "-m", "netwarden", "monitor", "--once", "--filter"]
    listed = json.loads(client.run([*once, "proto:raw", "--format", "json"]).stdout)["flows"]
    assert [(f["remote_port"], f["process"]["exe"]) for f in listed] == [(inode, PYTHON)]
    assert client.run([*once, "proto:packet", "--format", "json"]).stdout.count("flows") == 1
    wrong = client.run([*once, "proto:smoke"], check=False)
    assert wrong.returncode == 2
    assert "proto: is one of tcp, udp, icmp, icmp6, raw, packet" in wrong.stderr

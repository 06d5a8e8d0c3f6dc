"""The native one-shot listing against the flow table's own, on real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from netwarden.model import Transport
from netwarden.monitor.filters import FlowFilter
from netwarden.monitor.oneshot import flow_key_order, write_flows_json
from netwarden.monitor.service import Monitor
from netwarden.platform.base import SocketRecord
from netwarden.platform.select import current
from netwarden.testing.netlab import Lab

pytestmark = pytest.mark.root


def _comparable(flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in f.items() if k not in ("first_seen", "last_seen")} for f in flows]


# Filters of `--once --format json --filter`: each kind of word, and none.
FILTERS = ["", "port:7301", "state:listen", "addr:::1", "tcp", "udp", "proc:python",
           "proc:nosuchprogram", "port:7302 udp", "state:fin_wait1 addr:127"]  # fmt: skip


def test_native_listing_is_the_flow_tables_listing(lab: Lab, tmp_path: Path) -> None:
    host = lab.host("zoo")
    zoo = host.popen([sys.executable, "-m", "tests.integration.socket_zoo"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert zoo.stdout is not None
    assert zoo.stdout.readline().strip() == "ready"
    listed: dict[str, list[dict[str, Any]]] = {}
    with current().open_sources(host.netns, events=False) as sources:
        for text in FILTERS:
            flow_filter = FlowFilter.parse(text)
            out = tmp_path / "native.json"
            with out.open("wb") as stream:
                assert write_flows_json(
                    Monitor(sources, record_events=False), sources.missing, stream,
                    is_root=True, flow_filter=flow_filter,
                )  # fmt: skip
            reference = Monitor(sources, record_events=False).snapshot()
            expected = [f.to_json() for f in sorted(reference, key=flow_key_order)
                        if flow_filter.matches(f)]  # fmt: skip
            listed[text] = json.loads(out.read_bytes())["flows"]
            assert _comparable(listed[text]) == _comparable(expected), text
    assert all(listed[text] for text in FILTERS if text != "proc:nosuchprogram"), listed
    document = {"missing": [], "flows": listed[""]}

    flows = document["flows"]
    assert document["missing"] == []
    assert [f["local_port"] for f in flows].count(7301) == 1  # two sockets, one flow
    owned = [f for f in flows if f["process"] and f["process"]["pid"] == zoo.pid]
    assert {f["transport"] for f in owned} == {"tcp", "udp"}
    assert any(f["bytes_sent"] == 70_000 and ":" in f["local_address"] for f in owned)
    assert any(f["bytes_received"] == 70_000 and "." in f["local_address"] for f in owned)
    bound = [f for f in owned if f["local_port"] == 7303]  # bound, not listening
    assert sorted(f["local_address"] for f in bound) == ["127.0.0.1", "::1"], flows
    orphans = [f for f in flows if f["state"] == "FIN_WAIT1"]
    assert orphans, flows
    assert all(f["process"] is None and "no file" in f["attribution_reason"] for f in orphans)


def _fields(records: list[SocketRecord]) -> list[tuple[object, ...]]:
    return sorted(
        (str(r.key), r.state, r.inode, r.uid, r.cgroup_id, r.bytes_sent, r.bytes_received, r.cookie)
        for r in records
    )


def test_tcp_changes_read_what_a_dump_reads(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The BPF tcp iterator behind the live view against a sock_diag dump."""
    from netwarden.platform.linux import sockdiag

    monkeypatch.setattr(sockdiag, "BOUND_SECONDS", 0.0)  # look for bound sockets each time
    host = lab.host("zoo")
    zoo = host.popen([sys.executable, "-m", "tests.integration.socket_zoo"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert zoo.stdout is not None
    assert zoo.stdin is not None
    assert zoo.stdout.readline().strip() == "ready"
    with current().open_sources(host.netns, events=False) as sources:
        first = sources.sockets.changes()
        assert first is not None, "root with BTF: the tcp iterator must load"
        dumped = [r for r in sources.sockets.snapshot() if r.transport is Transport.TCP]
        assert first.vanished == []
        keys = [r.key for r in dumped]
        twins = {key for key in keys if keys.count(key) > 1}  # SO_REUSEPORT: one flow
        assert len(twins) == 1
        assert len(first.changed) == len(set(keys)) == len(keys) - 1
        assert _fields([r for r in first.changed if r.key not in twins]) == _fields(
            [r for r in dumped if r.key not in twins]
        )
        assert [r.transport for r in first.others] == [Transport.UDP] * 2

        second = sources.sockets.changes()
        assert second is not None
        assert (second.changed, second.vanished) == ([], [])
        again = sources.sockets.changes(restart=True)  # a new reader starts from all
        assert again is not None
        assert _fields(again.changed) == _fields(first.changed)

        zoo.stdin.close()
        zoo.wait(timeout=10)
        third = sources.sockets.changes()
        assert third is not None
        gone = {(k.local.address, k.local.port) for k in third.vanished}
        assert {("127.0.0.1", 7301), ("127.0.0.1", 7303), ("::1", 7303)} <= gone
        assert not any(r.key.local.port == 7301 for r in third.changed)


def test_a_tcp_iterator_that_misreads_the_kernel_is_not_trusted(lab: Lab) -> None:
    """The iterator's program uses offsets found in BTF: its first reading is checked
    against sock_diag, and a reading that disagrees sends the monitor back to dumps."""
    from netwarden.platform.linux import _native
    from netwarden.platform.linux.sockdiag import SockDiagTable, reads_like_a_dump

    host = lab.host("zoo")
    zoo = host.popen([sys.executable, "-m", "tests.integration.socket_zoo"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert zoo.stdout is not None
    assert zoo.stdout.readline().strip() == "ready"
    with current().open_sources(host.netns, events=False) as sources:
        table = sources.sockets
        assert isinstance(table, SockDiagTable)
        read, _vanished = _native.TcpTracker(table._netns).refresh()
        assert reads_like_a_dump(read, table._dump_fields())
        misread = [(*r[:10], r[10] + 7, r[11]) for r in read]  # bytes sent misread
        assert reads_like_a_dump(misread, table._dump_fields()) is False
        foreign = [(*r[:6], r[6] + 1, *r[7:]) for r in read]  # uid misread
        assert reads_like_a_dump(foreign, table._dump_fields()) is False
        assert reads_like_a_dump(read, {}) is None  # nothing to compare: undecided


def test_destroy_broadcasts_read_in_c_are_what_python_reads(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netwarden.platform.linux import netns, sockdiag

    host = lab.host("closing")
    with netns.entered(host.netns):
        native, python = sockdiag.SockDiagDestroyEvents(), sockdiag.SockDiagDestroyEvents()
    wanted = {(Transport.TCP, "127.0.0.1"), (Transport.TCP, "::1"), (Transport.UDP, "::1")}
    read_in_c: list[SocketRecord] = []
    read_in_python: list[SocketRecord] = []
    try:
        host.run([sys.executable, "-c", CLOSE_SOME_SOCKETS])
        # Closing sockets finish in the kernel a moment later: read until the last
        # expected broadcast came, and until both readers have read as many.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            read_in_c += native.drain()
            with monkeypatch.context() as python_only:
                python_only.setattr(sockdiag, "_native", None)
                read_in_python += python.drain()
            got = {(r.transport, r.local.address) for r in read_in_c}
            if wanted <= got and len(read_in_c) == len(read_in_python):
                break
            time.sleep(0.05)
    finally:
        native.close()
        python.close()
    assert read_in_c == read_in_python
    assert wanted <= {(r.transport, r.local.address) for r in read_in_c}
    sent = {r.bytes_sent for r in read_in_c if r.transport is Transport.TCP}
    assert 70_000 in sent  # counters come through, the FIN taken out


CLOSE_SOME_SOCKETS = """
import socket
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    server = socket.socket(family)
    server.bind((host, 0))
    server.listen()
    client = socket.create_connection(server.getsockname()[:2])
    accepted, _ = server.accept()
    client.sendall(b"x" * 70_000)
    got = 0
    while got < 70_000:
        got += len(accepted.recv(65536))
    accepted.sendall(b"y" * 3_000)
    client.recv(65536)
    client.close(); accepted.close(); server.close()
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.bind((host, 0))
    udp.close()
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from netwarden.model import Attribution, AttributionMethod, Flow, FlowKey, ProcessInfo, Transport
from netwarden.monitor.history import HistoryError, HistoryQuery, HistoryStore
from netwarden.testing.fakes import endpoint

CURL = ProcessInfo(pid=42, name="curl", exe="/usr/bin/curl", cmdline=("curl", "x"), uid=1000)


def _flow(port: int, remote: str = "192.0.2.7:443", last: float = 1000.0,
          process: ProcessInfo | None = CURL) -> Flow:  # fmt: skip
    return Flow(
        key=FlowKey(Transport.TCP, endpoint(f"10.0.0.1:{port}"), endpoint(remote)),
        state="CLOSED", process=process,
        attribution=Attribution(AttributionMethod.FLOW_EVENT) if process
        else Attribution.unknown("gone"),
        bytes_sent=port * 10, bytes_received=port, first_seen=last - 5, last_seen=last,
        closed=True, uid=1000, cgroup="/user.slice", netns="lab",
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "h.sqlite", retention_days=1)


def test_round_trip_keeps_every_field(store: HistoryStore) -> None:
    flow = _flow(5000)
    store.record([flow])
    [back] = store.query(HistoryQuery())
    assert back == flow


def test_queries_by_process_time_host_and_port(store: HistoryStore) -> None:
    other = ProcessInfo(pid=7, name="nginx", exe="/usr/sbin/nginx")
    store.record([
        _flow(5000, last=1000), _flow(5001, "198.51.100.1:80", last=2000),
        _flow(5002, last=3000, process=other), _flow(5003, last=4000, process=None),
    ])  # fmt: skip

    def ports(query: HistoryQuery) -> list[int]:
        return sorted(f.key.local.port for f in store.query(query))

    assert ports(HistoryQuery(process="curl")) == [5000, 5001]
    assert ports(HistoryQuery(process="/usr/sbin/nginx")) == [5002]
    assert ports(HistoryQuery(process="7")) == [5002]
    assert ports(HistoryQuery(since=1500, until=3500)) == [5001, 5002]
    assert ports(HistoryQuery(host="198.51.100.1")) == [5001]
    assert ports(HistoryQuery(port=80)) == [5001]
    assert ports(HistoryQuery(limit=2)) == [5002, 5003]


def test_retention_prunes_old_flows_only(store: HistoryStore) -> None:
    store.record([_flow(1, last=1000.0), _flow(2, last=200_000.0)])
    assert store.prune(now=200_000.0) == 1
    assert [f.key.local.port for f in store.query(HistoryQuery())] == [2]


def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    HistoryStore(tmp_path / "w.sqlite").close()
    assert (tmp_path / "w.sqlite").exists()
    import sqlite3

    with sqlite3.connect(tmp_path / "w.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(HistoryError, match="cannot open history database"):
        HistoryStore(blocker / "h.sqlite")


def test_a_database_from_before_the_relay_column_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    from netwarden.monitor.history import SCHEMA

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript(SCHEMA.replace(",\n    relay TEXT NOT NULL DEFAULT ''", ""))
        assert "relay" not in {row[1] for row in old.execute("PRAGMA table_info(flows)")}
    store = HistoryStore(path)
    flow = dataclasses.replace(_flow(5000), relay="proxied: the proxy's upstream is x -> y")
    store.record([flow])
    assert store.query(HistoryQuery()) == [flow]


def test_host_takes_networks_and_bracketed_ipv6(store: HistoryStore) -> None:
    store.record(
        [_flow(5000, "10.77.0.9:443"), _flow(5001, "[fd00:77::2]:80"), _flow(5002, "192.0.2.7:443")]
    )

    def ports(host: str) -> list[int]:
        return sorted(f.key.local.port for f in store.query(HistoryQuery(host=host)))

    assert ports("10.77.0.0/24") == [5000]
    assert ports("[fd00:77::2]") == [5001]
    assert ports("fd00:77::/64") == [5001]
    assert ports("10.0.0.0/8") == [5000, 5001, 5002]  # every flow's local side is 10.0.0.1
    with pytest.raises(ValueError, match="not an IP address or network"):
        store.query(HistoryQuery(host="example.org"))

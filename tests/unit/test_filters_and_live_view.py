from __future__ import annotations

import dataclasses
import struct
from dataclasses import replace

import pytest

from netwarden.model import (
    Attribution,
    Flow,
    FlowEvent,
    FlowEventKind,
    FlowKey,
    ProcessInfo,
    Transport,
)
from netwarden.monitor.filters import FlowFilter
from netwarden.monitor.live import FADE_SECONDS, NEW_SECONDS, LiveView, RowStatus, SortKey
from netwarden.platform.divert_flows import windivert_address
from netwarden.testing.fakes import endpoint


def _flow(port: int, name: str = "curl", sent: int = 0, rate: float = 0.0,
          state: str = "ESTABLISHED", transport: Transport = Transport.TCP) -> Flow:  # fmt: skip
    return Flow(
        key=FlowKey(transport, endpoint(f"10.0.0.1:{port}"), endpoint("192.0.2.7:443")),
        state=state, process=ProcessInfo(pid=port, name=name, exe=f"/usr/bin/{name}"),
        attribution=Attribution.unknown(""), bytes_sent=sent, send_rate=rate,
    )  # fmt: skip


def test_filter_words() -> None:
    f = FlowFilter.parse("proc:curl port:443 state:established addr:192.0 tcp")
    assert f.matches(_flow(1))
    assert not f.matches(_flow(1, name="wget"))
    assert not f.matches(_flow(1, state="LISTEN"))
    assert not f.matches(_flow(1, transport=Transport.UDP))
    assert FlowFilter.parse("5000").matches(_flow(5000))
    assert FlowFilter.parse("pid:7").matches(_flow(7))
    assert not FlowFilter.parse("pid:7").matches(_flow(8))
    assert FlowFilter.parse("").matches(_flow(1))


def test_the_app_filter_matches_what_the_proxy_identified() -> None:
    tls = dataclasses.replace(_flow(1), app="tls web.example h2")
    assert FlowFilter.parse("app:tls").matches(tls)
    assert FlowFilter.parse("app:WEB.example").matches(tls)
    assert not FlowFilter.parse("app:ssh").matches(tls)
    assert not FlowFilter.parse("app:tls").matches(_flow(2))  # nothing identified


@pytest.mark.parametrize("text", ["colour:red", "port:http"])
def test_bad_filter_words_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"filter|port"):
        FlowFilter.parse(text)


def test_live_view_marks_new_and_fades_closed_rows() -> None:
    view = LiveView()
    view.apply([FlowEvent(FlowEventKind.OPENED, _flow(1))], now=10.0)
    [row] = view.rows(10.5)
    assert row.status is RowStatus.NEW
    [row] = view.rows(10.0 + NEW_SECONDS + 0.1)
    assert row.status is RowStatus.LIVE
    view.apply([FlowEvent(FlowEventKind.CLOSED, _flow(1))], now=20.0)
    [row] = view.rows(20.0 + FADE_SECONDS / 2)
    assert row.status is RowStatus.CLOSED
    assert row.fade == pytest.approx(0.5)
    view.expire(20.0 + FADE_SECONDS)
    assert view.rows(30.0) == []


def test_live_view_sorts_and_reverses() -> None:
    view = LiveView()
    view.load([_flow(1, sent=5, rate=1), _flow(2, sent=50, rate=3), _flow(3, sent=9, rate=2)], 0)
    assert [r.flow.key.local.port for r in view.rows(100)] == [2, 3, 1]  # by rate, busiest first
    view.sort_by(SortKey.SENT)
    assert [r.flow.key.local.port for r in view.rows(100)] == [2, 3, 1]
    view.sort_by(SortKey.SENT)
    assert [r.flow.key.local.port for r in view.rows(100)] == [1, 3, 2]
    view.sort_by(SortKey.LOCAL)
    assert [r.flow.key.local.port for r in view.rows(100)] == [1, 2, 3]


def test_per_process_totals() -> None:
    view = LiveView()
    view.load([_flow(1, "curl", sent=10, rate=1.0), _flow(1, "curl", sent=10)], 0)
    flows = [_flow(5, "nginx", sent=100, rate=4.0), _flow(5, "nginx", sent=1, rate=1.0)]
    view.load(
        [replace(f, key=FlowKey(Transport.TCP, endpoint(f"10.0.0.{i}:80"), endpoint("1.2.3.4:5")))
         for i, f in enumerate(flows)], 0,
    )  # fmt: skip
    [nginx, curl] = view.totals()
    assert (nginx.name, nginx.flows, nginx.bytes_sent, nginx.send_rate) == ("nginx", 2, 101, 5.0)
    assert (curl.name, curl.flows) == ("curl", 1)


def test_windivert_addresses() -> None:
    def words(*values: int) -> bytes:  # UINT32[4], least significant word first
        return struct.pack("<4I", *values)

    assert windivert_address(words(0x0A000001, 0xFFFF, 0, 0)) == "10.0.0.1"
    assert windivert_address(words(2, 0, 0, 0xFD000000)) == "fd00::2"
    assert windivert_address(words(1, 0, 0, 0)) == "::1"


def test_live_view_limit_keeps_the_top_rows_in_order() -> None:
    view = LiveView()
    view.load([_flow(port, rate=float(port)) for port in range(1, 101)], 0)
    assert [r.flow.key.local.port for r in view.rows(100, limit=3)] == [100, 99, 98]
    view.sort_by(SortKey.RATE)  # ascending now
    assert [r.flow.key.local.port for r in view.rows(100, limit=3)] == [1, 2, 3]
    assert view.matching() == 100


def test_live_view_rows_follow_every_change_of_flows_filter_and_order() -> None:
    """Rows are selected anew only when something changed; each kind of change shows."""
    view = LiveView()
    view.load([_flow(port, rate=float(port)) for port in range(1, 101)], 0)
    top = [r.flow.key.local.port for r in view.rows(100, limit=2)]
    assert top == [100, 99]
    assert [r.flow.key.local.port for r in view.rows(101, limit=2)] == top  # nothing new
    view.apply([FlowEvent(FlowEventKind.UPDATED, _flow(5, rate=1000.0))], 102)
    assert [r.flow.key.local.port for r in view.rows(103, limit=2)] == [5, 100]
    view.filter = FlowFilter(port=7)
    assert [r.flow.key.local.port for r in view.rows(104, limit=2)] == [7]
    assert view.matching() == 1
    view.filter = FlowFilter()
    view.apply([FlowEvent(FlowEventKind.CLOSED, _flow(5, rate=1000.0))], 105)
    view.expire(105 + FADE_SECONDS)
    assert [r.flow.key.local.port for r in view.rows(111, limit=2)] == [100, 99]
    assert view.matching() == 99


def test_per_process_totals_follow_new_events_and_filters() -> None:
    view = LiveView()
    view.load([_flow(1, sent=10), _flow(2, name="wget", sent=5)], 0)
    assert {t.name: t.bytes_sent for t in view.totals()} == {"curl": 10, "wget": 5}
    view.apply([FlowEvent(FlowEventKind.UPDATED, _flow(1, sent=70))], 1)
    assert {t.name: t.bytes_sent for t in view.totals()} == {"curl": 70, "wget": 5}
    view.filter = FlowFilter(process="wget")
    assert [t.name for t in view.totals()] == ["wget"]


def test_address_filters_take_networks_and_ports_are_bounded() -> None:
    from netwarden.monitor.filters import FlowFilter

    assert FlowFilter.parse("addr:10.0.0.0/8").network is not None
    assert FlowFilter.parse("addr:[fd00::1]").network is not None
    for bad in ("port:99999", "port:x", "addr:10.0.0.0/99"):
        with pytest.raises(ValueError, match=r"port must be|not an address"):
            FlowFilter.parse(bad)

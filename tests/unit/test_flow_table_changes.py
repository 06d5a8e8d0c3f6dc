"""The flow table fed with changes (what a native socket reader reports) against the
same table fed with full dumps: the same flows, events and rates."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from netwarden.model import FlowEvent, FlowKey, ProcessInfo, Transport
from netwarden.monitor.table import FlowTable
from netwarden.platform.base import CountedFlow, SocketChanges, SocketRecord
from netwarden.testing.fakes import FakeResolver, tcp_socket, udp_conntrack, udp_socket

CURL = ProcessInfo(pid=42, name="curl", exe="/usr/bin/curl")
NGINX = ProcessInfo(pid=7, name="nginx", exe="/usr/sbin/nginx")


def _changes(before: Sequence[SocketRecord], after: Sequence[SocketRecord]) -> SocketChanges:
    """What a native reader reports between two dumps."""
    old = {r.key: r for r in before if r.transport is Transport.TCP}
    new = {r.key: r for r in after if r.transport is Transport.TCP}
    return SocketChanges(
        [r for key, r in new.items() if old.get(key) != r],
        [key for key in old if key not in new],
        [r for r in after if r.transport is not Transport.TCP],
    )


def _view(events: list[FlowEvent]) -> list[tuple[str, FlowKey, Any, int, int, float, str]]:
    return sorted(
        (str(e.kind), e.flow.key, e.flow.process, e.flow.bytes_sent, e.flow.bytes_received,
         e.flow.send_rate, e.flow.attribution.method)
        for e in events
    )  # fmt: skip


def _both(
    dumps: list[tuple[float, list[SocketRecord], list[CountedFlow] | None]],
    resolver: FakeResolver,
    owners_later: dict[int, int] | None = None,
) -> tuple[FlowTable, FlowTable]:
    full, delta = FlowTable(resolver), FlowTable(resolver)
    before: list[SocketRecord] = []
    for step, (now, sockets, conntrack) in enumerate(dumps):
        if owners_later and step == len(dumps) // 2:
            resolver.owners.update(owners_later)
        by_full = full.apply_snapshot(sockets, conntrack, now)
        by_delta = delta.apply_changes(_changes(before, sockets), conntrack, now)
        assert _view(by_delta) == _view(by_full), f"step {step}"
        before = sockets
    return full, delta


def test_changes_give_the_events_and_rates_of_full_dumps() -> None:
    resolver = FakeResolver(owners={11: 42, 12: 7, 13: 42}, processes={42: CURL, 7: NGINX})
    a = tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11)
    b = tcp_socket("10.0.0.1:80", "10.0.0.3:4000", inode=12, sent=10)
    udp = udp_socket("10.0.0.1:5353", inode=13)
    ct = [udp_conntrack("10.0.0.1:5353", "10.0.0.9:53", 40, 120)]
    dumps: list[tuple[float, list[SocketRecord], list[CountedFlow] | None]] = [
        (1.0, [a, udp], ct),
        (2.0, [a, b, udp], None),
        (3.0, [tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11, sent=5000), b, udp], None),
        (4.0, [tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11, sent=5000), b, udp], None),
        (5.0, [tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11, sent=9000), udp], []),
        (6.5, [replace(a, bytes_sent=9000, state="CLOSE_WAIT")], []),
        (8.0, [], []),
        (10.0, [], []),
    ]
    full, delta = _both(dumps, resolver)
    assert len(full) == len(delta) == 0


def test_an_idle_flow_that_moves_again_has_its_true_rate() -> None:
    """Only moving flows have their rates computed, yet a flow idle for a while gets
    the rate of the last interval, not of the whole idle time."""
    resolver = FakeResolver(owners={11: 42}, processes={42: CURL})
    dumps: list[tuple[float, list[SocketRecord], list[CountedFlow] | None]] = [
        (float(t), [tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11, sent=sent)], None)
        for t, sent in ((1, 0), (2, 100), (3, 100), (4, 100), (5, 100), (6, 1100))
    ]
    full, delta = _both(dumps, resolver)
    [flow] = delta.flows()
    assert flow.send_rate == 1000.0
    assert [f.send_rate for f in full.flows()] == [1000.0]


def test_an_owner_found_later_is_found_from_changes_too() -> None:
    resolver = FakeResolver(processes={42: CURL})
    socket = tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11)
    dumps: list[tuple[float, list[SocketRecord], list[CountedFlow] | None]] = [
        (float(t), [socket], None) for t in range(1, 5)
    ]
    full, delta = _both(dumps, resolver, owners_later={11: 42})
    assert [f.process for f in delta.flows()] == [CURL]
    assert [f.process for f in full.flows()] == [CURL]


def test_a_monitor_whose_changes_fail_goes_on_with_full_dumps() -> None:
    """A reader of changes that breaks (say, its BPF link) must not stop the monitor."""
    from netwarden.monitor.service import Monitor
    from netwarden.testing.fakes import FakeSocketTable, FakeSources

    class Breaking(FakeSocketTable):
        def changes(self, *, restart: bool = False) -> SocketChanges | None:
            raise OSError(9, "Bad file descriptor")

    sockets = Breaking([tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11)])
    resolver = FakeResolver(owners={11: 42}, processes={42: CURL})
    monitor = Monitor(FakeSources(sockets=sockets, processes=resolver))
    assert [f.process for f in monitor.snapshot()] == [CURL]
    sockets.records = []
    assert monitor.snapshot()[0].key.local.port == 5000  # closing, not yet closed


def test_a_failing_monitor_step_is_logged_and_the_monitor_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in the bookkeeping must not stop a running monitor."""
    from netwarden.monitor.service import Monitor
    from netwarden.testing.fakes import FakeSocketTable, FakeSources

    class Flaky(FakeSocketTable):
        calls = 0

        def snapshot(self) -> list[SocketRecord]:
            self.calls += 1
            if self.calls <= 3:
                raise KeyError("a bug in the monitor's own bookkeeping")
            return super().snapshot()

    sockets = Flaky([tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11)])
    resolver = FakeResolver(owners={11: 42}, processes={42: CURL})
    monitor = Monitor(FakeSources(sockets=sockets, processes=resolver), interval=0.01)
    seen: list[FlowEvent] = []
    monitor.run(seen.extend, threading.Event(), duration=0.5)
    assert [e.flow.process for e in seen] == [CURL]
    failures = [r for r in caplog.records if "a monitor step failed" in r.getMessage()]
    assert len(failures) == 1  # the same failure again is not logged again

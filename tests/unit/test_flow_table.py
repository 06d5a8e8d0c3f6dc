from __future__ import annotations

from dataclasses import replace

from netwarden.model import (
    Attribution,
    AttributionMethod,
    Flow,
    FlowEvent,
    FlowEventKind,
    FlowKey,
    ProcessInfo,
    RelayLink,
    Transport,
)
from netwarden.monitor.table import CLOSE_GRACE, FlowTable
from netwarden.platform.base import CountedFlowEvent, ProcessStamp
from netwarden.testing.fakes import (
    FakeResolver,
    endpoint,
    tcp_socket,
    udp_conntrack,
    udp_socket,
)

CURL = ProcessInfo(pid=42, name="curl", exe="/usr/bin/curl", uid=1000, user="alice")
NGINX = ProcessInfo(pid=7, name="nginx", exe="/usr/sbin/nginx")


def _kinds(events: list[FlowEvent]) -> list[tuple[FlowEventKind, int]]:
    return [(e.kind, e.flow.key.local.port) for e in events]


def _stamp(local: str, remote: str, process: ProcessInfo, transport: Transport = Transport.TCP,
           closed: bool = False, at: float = 1.0) -> ProcessStamp:  # fmt: skip
    return ProcessStamp(transport, endpoint(local), endpoint(remote), process, at, closed)


def test_socket_owner_found_through_its_inode() -> None:
    resolver = FakeResolver(owners={11: 42}, processes={42: CURL})
    table = FlowTable(resolver)
    events = table.apply_snapshot([tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11)], [], 1.0)
    [opened] = events
    assert opened.kind is FlowEventKind.OPENED
    assert opened.flow.process == CURL
    assert opened.flow.attribution.method is AttributionMethod.SOCKET_OWNER


def test_unknown_process_says_why() -> None:
    table = FlowTable(FakeResolver(denied=1))
    [opened] = table.apply_snapshot([tcp_socket("10.0.0.1:1", "10.0.0.2:2", inode=9)], [], 1.0)
    assert opened.flow.process is None
    assert opened.flow.attribution.method is AttributionMethod.UNKNOWN
    assert "refused access" in opened.flow.attribution.reason
    table = FlowTable(FakeResolver(), is_root=False)
    [opened] = table.apply_snapshot([tcp_socket("10.0.0.1:1", "10.0.0.2:2", inode=9)], [], 1.0)
    assert "run as root" in opened.flow.attribution.reason


def test_connection_that_lived_between_two_snapshots_is_reported_with_totals() -> None:
    """Seen only through its flow event and its destroy record."""
    table = FlowTable(FakeResolver())
    table.apply_snapshot([], [], 1.0)
    table.add_stamps([_stamp("10.0.0.1:5000", "10.0.0.2:80", CURL)])
    destroyed = tcp_socket("10.0.0.1:5000", "10.0.0.2:80", sent=7000, received=3000,
                           destroyed=True, state="CLOSE")  # fmt: skip
    table.add_socket_closes([destroyed], 1.2)
    events = table.tick(1.2) + table.tick(1.2 + CLOSE_GRACE)
    assert _kinds(events) == [(FlowEventKind.OPENED, 5000), (FlowEventKind.CLOSED, 5000)]
    closed = events[-1].flow
    assert closed.closed
    assert closed.process == CURL
    assert closed.attribution.method is AttributionMethod.FLOW_EVENT
    assert (closed.bytes_sent, closed.bytes_received) == (7000, 3000)
    assert len(table) == 0


def test_late_flow_event_still_attributes_a_closing_flow() -> None:
    table = FlowTable(FakeResolver())
    table.add_socket_closes(
        [tcp_socket("10.0.0.1:5000", "10.0.0.2:80", sent=5, destroyed=True)], 1.0
    )
    table.add_stamps([_stamp("10.0.0.1:5000", "10.0.0.2:80", CURL)])
    closed = table.tick(1.0 + CLOSE_GRACE)[-1].flow
    assert closed.process == CURL


def test_flow_event_keeps_details_read_earlier_for_the_same_pid() -> None:
    resolver = FakeResolver(owners={11: 42}, processes={42: CURL})
    table = FlowTable(resolver)
    table.apply_snapshot([tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11)], [], 1.0)
    exited = ProcessInfo(pid=42, name="curl")  # read as the process exited: no exe
    table.add_stamps([_stamp("10.0.0.1:5000", "10.0.0.2:80", exited)])
    [updated] = table.tick(1.1)
    assert updated.flow.process == CURL
    assert updated.flow.attribution.method is AttributionMethod.FLOW_EVENT


def test_vanished_socket_closes_after_grace_with_last_counters() -> None:
    table = FlowTable(FakeResolver())
    sock = tcp_socket("10.0.0.1:5000", "10.0.0.2:80", sent=100, received=50)
    table.apply_snapshot([sock], [], 1.0)
    assert table.apply_snapshot([], [], 2.0) == []
    [closed] = table.apply_snapshot([], [], 2.0 + CLOSE_GRACE)
    assert closed.kind is FlowEventKind.CLOSED
    assert (closed.flow.bytes_sent, closed.flow.bytes_received) == (100, 50)


def test_counters_never_go_backwards() -> None:
    table = FlowTable(FakeResolver())
    table.apply_snapshot([tcp_socket("10.0.0.1:1", "10.0.0.2:2", sent=100)], [], 1.0)
    table.apply_snapshot([tcp_socket("10.0.0.1:1", "10.0.0.2:2", sent=90)], [], 2.0)
    [flow] = table.flows()
    assert flow.bytes_sent == 100


def test_rates_come_from_snapshots_and_not_from_bytes_moved_before_the_first() -> None:
    table = FlowTable(FakeResolver())
    table.apply_snapshot([tcp_socket("10.0.0.1:1", "10.0.0.2:2", sent=10**9)], [], 1.0)
    table.apply_snapshot([tcp_socket("10.0.0.1:1", "10.0.0.2:2", sent=10**9)], [], 2.0)
    [flow] = table.flows()
    assert flow.send_rate == 0.0
    table = FlowTable(FakeResolver())
    table.apply_snapshot([tcp_socket("10.0.0.1:1", "10.0.0.2:2", sent=0)], [], 1.0)
    table.apply_snapshot([tcp_socket("10.0.0.1:1", "10.0.0.2:2", sent=2000, received=500)], [], 3.0)
    [flow] = table.flows()
    assert (flow.send_rate, flow.receive_rate) == (1000.0, 250.0)


def test_udp_conversation_takes_bytes_from_conntrack_and_owner_from_the_port() -> None:
    resolver = FakeResolver(owners={5: 7}, processes={7: NGINX})
    table = FlowTable(resolver)
    sockets = [udp_socket("0.0.0.0:53", inode=5)]
    conversation = udp_conntrack("10.0.0.9:40000", "10.0.0.1:53", up=100, down=300)
    events = table.apply_snapshot(sockets, [conversation], 1.0)
    flows = {e.flow.key.remote.port: e.flow for e in events}
    server_side = flows[40000]
    assert server_side.key.local == endpoint("10.0.0.1:53")
    assert (server_side.bytes_sent, server_side.bytes_received) == (300, 100)
    assert server_side.process == NGINX
    assert server_side.attribution.method is AttributionMethod.LOCAL_PORT
    assert 0 in flows  # the listening socket itself is a row too


def test_a_udp_conversation_under_way_at_the_start_is_counted_from_then_and_says_so() -> None:
    resolver = FakeResolver(owners={5: 7}, processes={7: NGINX})
    table = FlowTable(resolver, udp_from_start=True)
    sockets = [udp_socket("0.0.0.0:53", inode=5)]
    before = udp_conntrack("10.0.0.9:40000", "10.0.0.1:53", up=100, down=300)
    assert table.wants_udp_baseline
    table.set_udp_baseline([before], [], 1.0)
    assert not table.wants_udp_baseline
    [opened] = [e for e in table.apply_snapshot(sockets, [before], 1.0) if e.flow.key.remote.port]
    assert (opened.flow.bytes_sent, opened.flow.bytes_received) == (0, 0)
    assert opened.flow.counted_since == 1.0
    assert opened.flow.to_json()["bytes_note"].startswith("under way when the monitor started")
    later = udp_conntrack("10.0.0.9:40000", "10.0.0.1:53", up=150, down=380)
    [moved] = table.apply_snapshot(sockets, [later], 2.0)
    assert (moved.flow.bytes_sent, moved.flow.bytes_received) == (80, 50)
    # A conversation that starts after the first dump is counted whole.
    new = udp_conntrack("10.0.0.9:40001", "10.0.0.1:53", up=10, down=30)
    [fresh] = [
        e
        for e in table.apply_snapshot(sockets, [later, new], 3.0)
        if e.flow.key.remote.port == 40001
    ]
    assert (fresh.flow.bytes_sent, fresh.flow.counted_since) == (30, None)


def test_closed_udp_conversation_is_not_revived_by_its_lingering_conntrack_entry() -> None:
    table = FlowTable(FakeResolver())
    table.add_stamps([_stamp("10.0.0.1:40000", "10.0.0.2:53", CURL, Transport.UDP)])
    entry = udp_conntrack("10.0.0.1:40000", "10.0.0.2:53", up=100, down=300)
    table.apply_snapshot([udp_socket("10.0.0.1:40000", "10.0.0.2:53")], [entry], 1.0)
    table.add_stamps([_stamp("10.0.0.1:40000", "10.0.0.2:53", CURL, Transport.UDP, True, 1.0)])
    events = table.apply_snapshot([], [entry], 1.0 + CLOSE_GRACE)
    assert [e.kind for e in events if e.flow.key.remote.port == 53] == [FlowEventKind.CLOSED]
    assert table.apply_snapshot([], [entry], 5.0) == []
    more = udp_conntrack("10.0.0.1:40000", "10.0.0.2:53", up=150, down=300)
    sock = udp_socket("10.0.0.1:40000", "10.0.0.2:53")
    [reopened] = table.apply_snapshot([sock], [more], 6.0)
    assert reopened.kind is FlowEventKind.OPENED
    assert reopened.flow.bytes_sent == 50


def test_conntrack_destroy_closes_a_udp_flow() -> None:
    table = FlowTable(FakeResolver())
    table.apply_snapshot(
        [udp_socket("10.0.0.1:40000", "10.0.0.2:53")],
        [udp_conntrack("10.0.0.1:40000", "10.0.0.2:53", up=10, down=20)], 1.0,
    )  # fmt: skip
    gone = udp_conntrack("10.0.0.1:40000", "10.0.0.2:53", 10, 20, CountedFlowEvent.DESTROY)
    table.add_conntrack([gone], 2.0)
    events = table.tick(2.0 + CLOSE_GRACE)
    assert (FlowEventKind.CLOSED, 40000) in _kinds(events)


def test_owner_scan_only_for_sockets_not_yet_attributed() -> None:
    resolver = FakeResolver(owners={11: 42}, processes={42: CURL})
    table = FlowTable(resolver)
    sock = tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11)
    table.apply_snapshot([sock], [], 1.0)
    assert resolver.asked == [{11}]
    for step in range(5):
        table.apply_snapshot([sock], [], 2.0 + step)
    assert resolver.asked == [{11}]  # attributed once; later snapshots ask nothing
    [flow] = table.flows()
    assert flow.process == CURL


PROXY = ProcessInfo(pid=99, name="netwarden", exe="/usr/bin/python3")


def test_a_proxied_connection_is_one_connection_in_three_flows() -> None:
    """The proxy's note may come before or after the monitor sees each socket."""
    table = FlowTable(FakeResolver(processes={99: PROXY}))
    table.add_stamps([_stamp("10.0.0.1:40000", "192.0.2.7:80", CURL)])
    table.apply_snapshot([tcp_socket("10.0.0.1:40000", "192.0.2.7:80", inode=1)], [], 1.0)
    table.add_relays([RelayLink(
        client=endpoint("10.0.0.1:40000"), listener=endpoint("127.0.0.1:15001"),
        upstream=endpoint("10.0.0.1:51000"), upstream_remote=endpoint("192.0.2.7:80"),
        destination=endpoint("192.0.2.7:80"), proxy_pid=99,
    )], 1.5)  # fmt: skip
    table.apply_snapshot([
        tcp_socket("10.0.0.1:40000", "192.0.2.7:80", inode=1),
        tcp_socket("127.0.0.1:15001", "10.0.0.1:40000", inode=0),  # gone: no owner to scan
        tcp_socket("10.0.0.1:51000", "192.0.2.7:80", inode=0),
    ], [], 2.0)  # fmt: skip
    flows = {f.key.local.port: f for f in table.flows()}
    assert flows[40000].relay == "proxied: the proxy's upstream is 10.0.0.1:51000 -> 192.0.2.7:80"
    assert flows[40000].process == CURL
    assert flows[15001].relay == "proxy, accepted side of 10.0.0.1:40000 -> 192.0.2.7:80"
    assert flows[51000].relay == "proxy, upstream side of 10.0.0.1:40000 -> 192.0.2.7:80"
    for side in (flows[15001], flows[51000]):
        assert side.process == PROXY
        assert side.attribution.method is AttributionMethod.RELAY


def test_udp_conversation_stands_between_conntrack_dumps() -> None:
    """A refresh without a conntrack dump (skipped when dumps are dear) keeps what the
    last dump showed; the next dump that lacks a conversation closes it."""
    table = FlowTable(FakeResolver(owners={5: 7}, processes={7: NGINX}))
    sockets = [udp_socket("0.0.0.0:53", inode=5)]
    conversation = udp_conntrack("10.0.0.9:40000", "10.0.0.1:53", up=100, down=300)
    table.apply_snapshot(sockets, [conversation], 1.0)
    assert _kinds(table.apply_snapshot(sockets, None, 2.0)) == []
    assert _kinds(table.apply_snapshot(sockets, None, 2.0 + 2 * CLOSE_GRACE)) == []
    table.apply_snapshot(sockets, [], 10.0)
    assert _kinds(table.tick(10.0 + CLOSE_GRACE)) == [(FlowEventKind.CLOSED, 53)]


def test_the_history_table_says_each_flows_part_in_a_relayed_connection() -> None:
    from netwarden.cli.render import table

    flow = Flow(
        key=FlowKey(Transport.TCP, endpoint("10.0.0.1:40000"), endpoint("192.0.2.7:80")),
        state="CLOSED", process=CURL, attribution=Attribution(AttributionMethod.FLOW_EVENT),
        relay="proxied: the proxy's upstream is 10.0.0.1:51000 -> 192.0.2.7:80",
    )  # fmt: skip
    proxy_side = replace(
        flow, process=PROXY, attribution=Attribution(AttributionMethod.RELAY),
        relay="proxy, upstream side of 10.0.0.1:40000 -> 192.0.2.7:80",
    )  # fmt: skip
    lines = table([flow, proxy_side]).splitlines()
    assert lines[1].endswith("flow-event proxied")
    assert lines[2].endswith("relay proxy-out")


def test_an_unconnected_udp_sockets_stamp_names_each_of_its_conversations() -> None:
    table = FlowTable(FakeResolver())
    table.add_stamps([_stamp("0.0.0.0:40000", "0.0.0.0:0", CURL, Transport.UDP)])
    table.add_stamps([_stamp("10.0.0.5:40001", "0.0.0.0:0", NGINX, Transport.UDP)])
    conversations = [
        udp_conntrack("10.0.0.1:40000", "10.0.0.2:53", up=10, down=20),
        udp_conntrack("10.0.0.1:40000", "10.0.0.3:53", up=10, down=20),
        udp_conntrack("10.0.0.1:40001", "10.0.0.3:53", up=10, down=20),  # another address
    ]
    table.apply_snapshot([], conversations, 1.0)
    flows = {(f.key.local.port, f.key.remote.address): f for f in table.flows()}
    for peer in ("10.0.0.2", "10.0.0.3"):
        assert flows[(40000, peer)].process == CURL
        assert flows[(40000, peer)].attribution.method is AttributionMethod.FLOW_EVENT
    assert (40001, "10.0.0.3") not in flows  # nothing of this host's names it


def test_a_late_stamp_of_an_unconnected_udp_socket_names_its_flows_already_shown() -> None:
    resolver = FakeResolver(owners={}, processes={})
    table = FlowTable(resolver)
    sockets = [udp_socket("0.0.0.0:40000", inode=5)]
    table.apply_snapshot(sockets, [udp_conntrack("10.0.0.1:40000", "10.0.0.2:53", 1, 2)], 1.0)
    table.add_stamps([_stamp("0.0.0.0:40000", "0.0.0.0:0", CURL, Transport.UDP)])
    flows = {f.key.remote.port: f for f in table.flows()}
    assert flows[53].process == CURL
    assert flows[53].attribution.method is AttributionMethod.FLOW_EVENT


def test_a_new_connection_on_the_port_pair_of_a_closing_one_is_a_flow_of_its_own() -> None:
    """Under churn the kernel reuses a port pair within the close grace time."""
    table = FlowTable(FakeResolver())
    pair = ("10.0.0.1:40000", "10.0.0.2:80")
    table.add_stamps([_stamp(*pair, CURL, at=1.0)])
    table.add_socket_closes(
        [tcp_socket(*pair, sent=100, received=10, destroyed=True, cookie=1)], 1.0
    )
    table.add_stamps([_stamp(*pair, NGINX, at=1.2)])
    table.add_socket_closes([tcp_socket(*pair, sent=50, received=5, destroyed=True, cookie=2)], 1.2)
    events = table.tick(1.2 + CLOSE_GRACE)
    closed = [(e.flow.bytes_sent, e.flow.bytes_received, e.flow.process) for e in events
              if e.kind is FlowEventKind.CLOSED]  # fmt: skip
    assert closed == [(100, 10, CURL), (50, 5, NGINX)]
    # The same socket seen again while closing is still one flow.
    table.add_socket_closes([tcp_socket(*pair, sent=7, destroyed=True, cookie=3)], 5.0)
    table.apply_snapshot([tcp_socket(*pair, sent=9, cookie=3)], [], 5.5)
    assert [f.bytes_sent for f in table.flows()] == [9]


def test_two_connections_on_one_port_pair_closing_in_one_batch_close_once_each() -> None:
    table = FlowTable(FakeResolver())
    pair = ("127.0.0.1:7200", "127.0.0.1:60240")
    closes = [tcp_socket(*pair, sent=n, destroyed=True, cookie=n) for n in (1, 2)]
    table.add_socket_closes(closes, 1.0)  # one batch, one clock reading
    events = table.tick(1.0 + CLOSE_GRACE)
    closed = [e.flow.bytes_sent for e in events if e.kind is FlowEventKind.CLOSED]
    assert closed == [1, 2]
    assert table.tick(10.0) == []
    assert len(table) == 0


def test_a_flow_without_a_socket_cgroup_takes_its_process_cgroup() -> None:
    """A socket seen only at its close carries no cgroup id: the flow says its
    process's cgroup, in the form the live listing uses ("/" for the root)."""
    rooted = replace(CURL, cgroup="/")
    table = FlowTable(FakeResolver(owners={11: 42}, processes={42: rooted}))
    [opened] = table.apply_snapshot([tcp_socket("10.0.0.1:5000", "10.0.0.2:80", inode=11)], [], 1.0)
    assert opened.flow.cgroup == "/"


def test_a_udp_conversation_is_one_flow_on_this_hosts_side_only() -> None:
    """A query from this host to 8.8.8.8:53 while a server of its own listens on
    0.0.0.0:53: the conversation is this host's client side, not also a mirrored
    "server" flow from 8.8.8.8:53 credited to the local DNS server."""
    from netwarden.testing.fakes import FakeAddresses

    resolver = FakeResolver(owners={5: 7, 6: 42}, processes={7: NGINX, 42: CURL})
    table = FlowTable(resolver)
    table.set_local_addresses(FakeAddresses(frozenset({"10.0.0.1", "127.0.0.1"})).current())
    sockets = [udp_socket("0.0.0.0:53", inode=5), udp_socket("10.0.0.1:40000", inode=6)]
    query = udp_conntrack("10.0.0.1:40000", "8.8.8.8:53", up=40, down=120)
    events = table.apply_snapshot(sockets, [query], 1.0)
    conversations = [e.flow for e in events if e.flow.key.remote.port]
    assert [(str(f.key.local), str(f.key.remote)) for f in conversations] == [
        ("10.0.0.1:40000", "8.8.8.8:53")
    ]
    assert (conversations[0].bytes_sent, conversations[0].bytes_received) == (40, 120)


def test_udp_bytes_nothing_counted_are_not_measured_rather_than_zero() -> None:
    table = FlowTable(FakeResolver())
    sockets = [udp_socket("10.0.0.1:40000", "10.0.0.2:53", inode=6)]
    [uncounted] = table.apply_snapshot(sockets, [], 1.0)
    document = uncounted.flow.to_json()
    assert (document["bytes_sent"], document["bytes_received"]) == (None, None)
    assert document["bytes_note"].startswith("not measured")
    counted = udp_conntrack("10.0.0.1:40000", "10.0.0.2:53", up=10, down=20)
    table.apply_snapshot(sockets, [counted], 2.0)
    [flow] = [f for f in table.flows() if f.key.remote.port == 53]
    assert (flow.to_json()["bytes_sent"], flow.to_json()["bytes_received"]) == (10, 20)
    assert "bytes_note" not in flow.to_json()

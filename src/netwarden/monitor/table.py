"""FlowTable: merges socket dumps, destroy events, conntrack and flow events into flows.

Everything here is pure bookkeeping over the records of :mod:`netwarden.platform.base`,
so it is tested with made-up records. The caller feeds it in this order each tick:
flow stamps, socket closes, conntrack events, then a snapshot.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from netwarden.model import (
    Attribution,
    AttributionMethod,
    Endpoint,
    Flow,
    FlowEvent,
    FlowEventKind,
    FlowKey,
    ProcessInfo,
    RelayLink,
    Transport,
)
from netwarden.model.flow import AppNote
from netwarden.model.observations import (
    CountedFlow,
    CountedFlowEvent,
    ProcessResolver,
    ProcessStamp,
    SocketChanges,
    SocketRecord,
)
from netwarden.monitor.attribution import (
    WILDCARDS,
    StampBook,
    by_owner,
    by_stamp,
    is_socket_wide,
    serves,
)

NOT_YET_SEEN = Attribution.unknown("not yet seen")
# A flow that disappeared waits this long for late news (its final counters, its
# flow event) before it is reported closed.
CLOSE_GRACE = 1.0
# Longer than conntrack keeps an assured UDP entry (nf_conntrack_udp_timeout_stream).
TOMBSTONE_TTL = 300.0
# Proxy notes on flows the table has not seen (yet): kept this long once many pile up.
RELAY_TTL = 30.0
MAX_PENDING_RELAYS = 4096


@dataclass(slots=True)
class _State:
    key: FlowKey
    state: str
    first_seen: float
    last_seen: float
    process: ProcessInfo | None = None
    attribution: Attribution = NOT_YET_SEEN
    uid: int | None = None
    cgroup: str = ""
    bytes_sent: int = 0
    bytes_received: int = 0
    rate_time: float | None = None  # None until the first reading sets the baseline
    rate_sent: int = 0
    rate_received: int = 0
    send_rate: float = 0.0
    receive_rate: float = 0.0
    closing_at: float | None = None  # when set: report closed at this time
    dirty: bool = False
    announced: bool = False  # the OPENED event went out
    record: SocketRecord | None = None  # the socket record last applied
    relay: str = ""
    app: str = ""
    counted: bool = False  # UDP: connection tracking reported its bytes
    counted_since: float | None = None  # UDP: under way at the start, counted from then
    cookie: int = 0  # the kernel's id of the first socket seen for the flow

    def snapshot(self, netns: str, closed: bool = False) -> Flow:
        return Flow(
            key=self.key, state="CLOSED" if closed else self.state, process=self.process,
            attribution=self.attribution, bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received, send_rate=self.send_rate,
            receive_rate=self.receive_rate, first_seen=self.first_seen,
            last_seen=self.last_seen, closed=closed, uid=self.uid,
            cgroup=self.cgroup or (self.process.cgroup if self.process is not None else ""),
            netns=netns, relay=self.relay, app=self.app,
            bytes_measured=self.counted or self.key.transport is not Transport.UDP,
            counted_since=self.counted_since,
        )  # fmt: skip

    def set_bytes(self, sent: int, received: int) -> bool:
        """Whether the counters moved. They only grow: a late, smaller reading must not
        undo a larger one."""
        sent, received = max(sent, self.bytes_sent), max(received, self.bytes_received)
        if (sent, received) == (self.bytes_sent, self.bytes_received):
            return False
        self.bytes_sent, self.bytes_received = sent, received
        self.dirty = True
        return True


def _is_unconnected(record: SocketRecord) -> bool:
    return record.remote.port == 0


def _torn_down(record: SocketRecord) -> bool:
    """A TCP connection destroyed after a reset (or a disconnect): the kernel reports it
    with its peer's port, and often its own address, zeroed; its peer's address stays."""
    return (
        record.transport is Transport.TCP
        and record.remote.port == 0
        and record.remote.address not in ("0.0.0.0", "::")
    )


class FlowTable:
    def __init__(
        self,
        resolver: ProcessResolver,
        *,
        netns: str = "",
        is_root: bool = True,
        record_events: bool = True,
        udp_from_start: bool = False,
    ):
        """udp_from_start: count UDP conversations under way when the monitor starts
        (set_udp_baseline) from then on (a monitor that follows flows), not with what
        connection tracking counted before (since an unknown time)."""
        self._record_events = record_events
        self._udp_from_start = udp_from_start
        self._udp_started: float | None = None  # when the first conntrack dump was read
        self._udp_baselines: dict[FlowKey, tuple[int, int]] = {}
        self._resolver = resolver
        # This host's addresses when the platform says them (set_local_addresses): a
        # conversation's side whose local address is not among them is not this host's.
        self._local: frozenset[str] | None = None
        self._netns = netns
        self._is_root = is_root
        self._flows: dict[FlowKey, _State] = {}
        self._stamps = StampBook()
        self._udp_ports: dict[int, list[SocketRecord]] = {}
        self._events: list[FlowEvent] = []
        # Flows changed by events since the last tick, and flows waiting to close:
        # a tick between snapshots looks at these only.
        self._touched: dict[FlowKey, _State] = {}
        self._closing: dict[FlowKey, _State] = {}
        # (closing_at, n, key) of the flows in _closing, soonest first; entries of flows
        # that came back before closing stay until popped (closing_at tells them apart).
        self._closing_order: list[tuple[float, int, FlowKey]] = []
        self._closing_count = itertools.count()
        # Conntrack keeps a UDP conversation for a while after its sockets close: the
        # counters at close are remembered so the entry does not bring the flow back.
        self._tombstones: dict[FlowKey, tuple[int, int, float]] = {}
        self._conntrack_seen: set[FlowKey] = set()  # flows the last conntrack dump showed
        # What a local proxy said about flows not seen yet: flow -> (note, pid, when).
        self._relays: dict[FlowKey, tuple[str, int | None, float]] = {}
        self._apps: dict[FlowKey, tuple[str, float]] = {}  # notes for flows not seen yet
        # Flows whose rates the next snapshot computes (new ones, moving ones, ones whose
        # rate is not zero yet): idle flows cost nothing per snapshot.
        self._rating: dict[FlowKey, _State] = {}
        self._last_snapshot = 0.0  # when the last snapshot was applied (and rates computed)
        self._udp_flows: dict[FlowKey, _State] = {}
        self._by_cookie: dict[int, _State] = {}  # TCP flows by their socket's cookie
        self._portless: dict[FlowKey, _State] = {}  # raw and packet sockets, dumped whole
        self._unknown: dict[FlowKey, _State] = {}  # socket flows whose process is unknown

    # -- queries -----------------------------------------------------------------

    def flows(self) -> list[Flow]:
        return [s.snapshot(self._netns) for s in self._flows.values()]

    def __len__(self) -> int:
        return len(self._flows)

    # -- inputs ------------------------------------------------------------------

    def stamped_process(self, key: FlowKey) -> ProcessInfo | None:
        """The process a flow event named for this flow, if one did (safe to call from
        another thread: a lookup only)."""
        stamp = self._stamps.get((key.transport, key.local, key.remote))
        return stamp.process if stamp is not None else None

    def add_stamps(self, stamps: Iterable[ProcessStamp]) -> None:
        for stamp in stamps:
            key = FlowKey(stamp.transport, stamp.local, stamp.remote)
            if stamp.closed:
                state = self._flows.get(key)
                if state is not None and key.transport is Transport.UDP:
                    self._close_later(state, stamp.timestamp)
                continue
            self._stamps.add(stamp)
            for state in self._stamped(stamp, key):
                if state.attribution.method is not AttributionMethod.FLOW_EVENT:
                    state.process, state.attribution = by_stamp(stamp, state.process)
                    self._unknown.pop(state.key, None)
                    state.dirty = True
                    self._touched[state.key] = state

    def _stamped(self, stamp: ProcessStamp, key: FlowKey) -> list[_State]:
        """The flows a stamp names: its own, or an unconnected UDP socket's."""
        if is_socket_wide(stamp):
            return [s for s in self._udp_flows.values() if serves(stamp, s.key.local)]
        state = self._flows.get(key)
        return [] if state is None else [state]

    def add_socket_closes(self, records: Iterable[SocketRecord], now: float) -> None:
        for record in records:
            if _torn_down(record):
                torn = self._flow_torn_down(record)
                if torn is not None:  # its last counts, on the connection it was
                    torn.set_bytes(record.bytes_sent, record.bytes_received)
                    self._close_later(torn, now)
                continue
            if record.transport is Transport.UDP and _is_unconnected(record):
                state = self._flows.get(record.key)
                if state is not None:
                    self._close_later(state, now)
                continue
            state = self._upsert_socket(record, now)
            self._close_later(state, now)

    def _flow_torn_down(self, record: SocketRecord) -> _State | None:
        """The connection a torn-down socket was, by its socket's cookie."""
        state = self._by_cookie.get(record.cookie) if record.cookie else None
        if state is None or state.key.local.port != record.local.port:
            return None
        return state

    def add_conntrack(self, records: Iterable[CountedFlow], now: float) -> None:
        for record in records:
            if record.transport is not Transport.UDP:
                continue  # TCP bytes come from tcp_info, per socket
            for key, sent, received in self._conntrack_views(record):
                base_sent, base_received, _ = self._tombstones.get(key, (0, 0, 0.0))
                baseline = self._udp_baselines.get(key)
                if baseline is not None:
                    base_sent, base_received = baseline
                if record.event is CountedFlowEvent.DESTROY:
                    self._tombstones.pop(key, None)
                    self._udp_baselines.pop(key, None)
                sent, received = sent - base_sent, received - base_received
                state = self._flows.get(key)
                if state is None:
                    if record.event is CountedFlowEvent.DESTROY or (
                        sent + received <= 0 and baseline is None
                    ):
                        continue
                    state = self._new_state(key, "ESTABLISHED", now)
                    self._attribute_udp(state)
                state.last_seen = now
                state.counted = True
                if baseline is not None:
                    state.counted_since = self._udp_started
                if state.set_bytes(sent, received):
                    self._moving(state)
                self._touched[key] = state
                if record.event is CountedFlowEvent.DESTROY:
                    self._close_later(state, now)

    def apply_snapshot(
        self,
        sockets: list[SocketRecord],
        conntrack: list[CountedFlow] | None,
        now: float,
    ) -> list[FlowEvent]:
        """Bring the table in line with a full dump; return what happened since last time."""
        self._index_udp(sockets)
        seen: set[FlowKey] = set()
        changed: list[SocketRecord] = []
        for record in sockets:
            seen.add(record.key)
            if not self._still(record, now):
                changed.append(record)
        self._upsert_all(changed, now)
        seen.update(self._read_conntrack(conntrack, now))
        self._close_unseen(self._flows.values(), seen, now)
        return self.tick(now, rates=True)

    def apply_changes(
        self, changes: SocketChanges, conntrack: list[CountedFlow] | None, now: float
    ) -> list[FlowEvent]:
        """The same from what changed since the last look (TCP sockets) and a full dump
        of the others: work in proportion to what changed, not to the table."""
        udp = changes.others
        self._index_udp(udp)
        seen = {record.key for record in udp}
        changed = [record for record in udp if not self._still(record, now)]
        changed += changes.changed
        fresh = {r.key for r in changed}
        for state in self._unknown.values():  # their owners may be found now
            if state.record is not None and state.closing_at is None and state.key not in fresh:
                changed.append(state.record)
        self._upsert_all(changed, now)
        for key in changes.vanished:
            gone = self._flows.get(key)
            if gone is not None and gone.closing_at is None:
                gone.last_seen = max(gone.last_seen, self._last_snapshot)
                self._close_later(gone, now)
        seen.update(self._read_conntrack(conntrack, now))
        self._close_unseen(self._udp_flows.values(), seen, now)
        self._close_unseen(self._portless.values(), seen, now)
        return self.tick(now, rates=True)

    def _close_unseen(self, states: Iterable[_State], seen: set[FlowKey], now: float) -> None:
        for state in states:
            if state.key not in seen and state.closing_at is None:
                self._close_later(state, now)

    def _still(self, record: SocketRecord, now: float) -> bool:
        """Whether a dumped socket is the very record last applied, with nothing to
        redo for it (then it is only marked seen)."""
        state = self._flows.get(record.key)
        if (
            state is not None
            and state.record is record  # the dump handed back last time's record
            and state.closing_at is None
            and state.attribution.method is not AttributionMethod.UNKNOWN
        ):
            state.last_seen = now
            return True
        return False

    def _upsert_all(self, records: list[SocketRecord], now: float) -> None:
        owners = self._resolver.owners_of({r.inode for r in records if self._needs_owner(r)})
        for record in records:
            owner = owners.get(record.inode) or record.pid or None
            self._upsert_socket(record, now, owner).record = record

    @property
    def wants_udp_baseline(self) -> bool:
        return self._udp_from_start and self._udp_started is None

    def set_udp_baseline(
        self, conntrack: list[CountedFlow], sockets: list[SocketRecord], now: float
    ) -> None:
        """The conversations under way as the monitor starts, with what connection
        tracking counted of them before: their bytes count from now (udp_from_start).
        A connected UDP socket open now is one too, whether or not connection tracking
        knows it yet (it may begin to only now)."""
        self._udp_started = now
        self._udp_baselines = {
            record.key: (0, 0)
            for record in sockets
            if record.transport is Transport.UDP and not _is_unconnected(record)
        }
        for record in conntrack:  # both sides: which are this host's is known later
            if record.transport is Transport.UDP:
                client = FlowKey(record.transport, record.orig_src, record.orig_dst)
                server = FlowKey(record.transport, record.reply_src, record.reply_dst)
                self._udp_baselines[client] = (record.orig_payload, record.reply_payload)
                self._udp_baselines[server] = (record.reply_payload, record.orig_payload)

    def _read_conntrack(self, conntrack: list[CountedFlow] | None, now: float) -> set[FlowKey]:
        """Apply a conntrack dump (None: none was read, the last one stands); the flows
        it shows."""
        if conntrack is not None:
            self.add_conntrack(conntrack, now)
            self._conntrack_seen = {k for r in conntrack for k, _s, _r in self._conntrack_views(r)}
        return self._conntrack_seen

    def tick(self, now: float, *, rates: bool = False) -> list[FlowEvent]:
        """Finish closes whose grace has passed; hand out the events. Rates are
        computed on snapshots, when every counter has just been read."""
        for state in self._closing_due(now):
            self._finish(state, now)
            self._stamps.forget(state.key)
        if rates:
            pending = {**self._touched, **self._rating}.values()
            self._last_snapshot = now
        else:
            pending = self._touched.values()
        for state in pending:
            if rates and state.key in self._rating:
                self._update_rate(state, now)
            if not state.announced:
                self._announce(state)
            elif state.dirty:
                state.dirty = False
                if self._record_events:
                    self._events.append(
                        FlowEvent(FlowEventKind.UPDATED, state.snapshot(self._netns))
                    )
        self._touched.clear()
        if rates:
            self._stamps.expire(now)
            if self._tombstones:
                self._tombstones = {
                    k: v for k, v in self._tombstones.items() if now - v[2] < TOMBSTONE_TTL
                }
        events, self._events = self._events, []
        return events

    # -- internals ---------------------------------------------------------------

    def _needs_owner(self, record: SocketRecord) -> bool:
        """Whether only a scan of open files can name this socket's process."""
        if not record.inode:
            return False
        state = self._flows.get(record.key)
        if state is None:
            return self._stamps.get(record.key) is None
        return state.attribution.method is AttributionMethod.UNKNOWN

    def wants_conntrack(self, sockets: list[SocketRecord]) -> bool:
        """Whether a conntrack dump could tell anything: only UDP flows, of a socket
        or of a flow event, take their counters from it."""
        udp = Transport.UDP
        return (
            bool(self._udp_flows)
            or any(record.transport is udp for record in sockets)
            or self._stamps.has(udp)
        )

    def udp_closing(self) -> bool:
        """Whether a UDP flow waits to be reported closed (its counters come from
        conntrack, so a dump should read them first)."""
        return any(key.transport is Transport.UDP for key in self._closing)

    def add_relays(self, links: Iterable[RelayLink | AppNote], now: float) -> None:
        """Notes from a local proxy on the flows of the connections it relays."""
        for link in links:
            if isinstance(link, AppNote):
                self._note_app(link, now)
                continue
            for key, note, owner in link.notes():
                state = self._flows.get(key)
                if state is None:
                    self._relays[key] = (note, owner, now)
                else:
                    self._apply_relay(state, note, owner)
        if len(self._relays) > MAX_PENDING_RELAYS:
            self._relays = {k: v for k, v in self._relays.items() if now - v[2] < RELAY_TTL}

    def _note_app(self, note: AppNote, now: float) -> None:
        state = self._flows.get(note.key)
        if state is None:
            self._apps[note.key] = (note.app, now)
            if len(self._apps) > MAX_PENDING_RELAYS:
                self._apps = {k: v for k, v in self._apps.items() if now - v[1] < RELAY_TTL}
        elif state.app != note.app:
            state.app = note.app
            state.dirty = True
            self._touched[state.key] = state

    def _apply_relay(self, state: _State, note: str, owner: int | None) -> None:
        if state.relay != note:
            state.relay = note
            state.dirty = True
            self._touched[state.key] = state
        if owner is not None and state.attribution.method is AttributionMethod.UNKNOWN:
            # netwarden's own proxy: its flow events may not name it, and a short
            # connection's socket is gone before any scan of open files.
            state.process = self._resolver.info(owner)
            state.attribution = Attribution(AttributionMethod.RELAY)
            self._unknown.pop(state.key, None)

    def _new_state(self, key: FlowKey, socket_state: str, now: float) -> _State:
        state = _State(key=key, state=socket_state, first_seen=now, last_seen=now)
        relay = self._relays.pop(key, None)
        if relay is not None:
            self._apply_relay(state, relay[0], relay[1])
        app = self._apps.pop(key, None)
        if app is not None:
            state.app = app[0]
        stamp = self._stamps.get((key.transport, key.local, key.remote))
        if stamp is not None:
            state.process, state.attribution = by_stamp(stamp)
            state.first_seen = min(now, stamp.timestamp)
        self._flows[key] = state
        self._touched[key] = state
        self._rating[key] = state
        if key.transport is Transport.UDP:
            self._udp_flows[key] = state
        elif not key.transport.has_ports:
            self._portless[key] = state
        return state

    def _announce(self, state: _State) -> None:
        if not state.announced:
            state.announced = True
            state.dirty = False
            if self._record_events:
                self._events.append(FlowEvent(FlowEventKind.OPENED, state.snapshot(self._netns)))

    def _finish(self, state: _State, now: float) -> None:
        """The flow is closed: out of the table, its CLOSED event out."""
        self._announce(state)
        del self._flows[state.key]
        if self._by_cookie.get(state.cookie) is state:
            del self._by_cookie[state.cookie]
        self._closing.pop(state.key, None)
        for index in (self._touched, self._rating, self._udp_flows, self._unknown, self._portless):
            index.pop(state.key, None)
        if state.key.transport is Transport.UDP:
            self._tombstones[state.key] = (state.bytes_sent, state.bytes_received, now)
        self._events.append(FlowEvent(FlowEventKind.CLOSED, state.snapshot(self._netns, True)))

    @staticmethod
    def _another_connection(state: _State, record: SocketRecord) -> bool:
        """Whether record is a new connection on the 4-tuple of a closing flow (the
        kernel reuses a port pair within the grace time under churn), not the same
        socket seen again."""
        return (
            state.closing_at is not None
            and record.remote.port != 0  # SO_REUSEPORT listeners share a key
            and record.cookie != 0
            and state.cookie not in (0, record.cookie)
        )

    def _upsert_socket(self, record: SocketRecord, now: float, owner: int | None = None) -> _State:
        key = record.key
        state = self._flows.get(key)
        if state is not None and self._another_connection(state, record):
            self._finish(state, now)  # its stamp, if any, is the new connection's now
            state = None
        if state is None:
            state = self._new_state(key, record.state, now)
        if not state.cookie:
            state.cookie = record.cookie
            if record.cookie and key.transport is Transport.TCP:
                self._by_cookie[record.cookie] = state
        if state.attribution.method is AttributionMethod.UNKNOWN:
            inode = 0 if record.destroyed else record.inode
            found = by_owner(self._resolver, owner, inode, self._is_root)
            if found != (state.process, state.attribution):
                state.process, state.attribution = found
                state.dirty = True
            if state.attribution.method is AttributionMethod.UNKNOWN:
                self._unknown[key] = state
            else:
                self._unknown.pop(key, None)
        state.uid = record.uid
        if record.cgroup_id and not state.cgroup:
            state.cgroup = self._resolver.cgroup_path(record.cgroup_id)
        if not record.destroyed and record.state != state.state:
            state.state = record.state
            state.dirty = True
        state.last_seen = now
        if record.counted_since is not None:
            state.counted_since = record.counted_since
        if record.transport is not Transport.UDP and state.set_bytes(
            record.bytes_sent, record.bytes_received
        ):
            self._moving(state)
        if not record.destroyed and state.closing_at is not None:
            state.closing_at = None
            del self._closing[key]
        self._touched[key] = state
        return state

    def _close_later(self, state: _State, now: float) -> None:
        if state.closing_at is None:
            state.closing_at = now + CLOSE_GRACE
            self._closing[state.key] = state
            entry = (state.closing_at, next(self._closing_count), state.key)
            heapq.heappush(self._closing_order, entry)

    def _closing_due(self, now: float) -> list[_State]:
        """The closing flows whose grace has passed, taken out of the order and out of
        _closing (each once: a flow that replaced a finished one on the same key can
        have an entry of its own at the same time)."""
        due = []
        order = self._closing_order
        while order and order[0][0] <= now:
            at, _n, key = heapq.heappop(order)
            state = self._closing.get(key)
            if state is not None and state.closing_at == at:
                del self._closing[key]
                due.append(state)
        return due

    def _index_udp(self, sockets: list[SocketRecord]) -> None:
        ports: dict[int, list[SocketRecord]] = {}
        for record in sockets:
            if record.transport is Transport.UDP:
                ports.setdefault(record.local.port, []).append(record)
        self._udp_ports = ports

    def set_local_addresses(self, addresses: frozenset[str]) -> None:
        self._local = addresses

    def _udp_socket_for(self, local: Endpoint) -> SocketRecord | None:
        for record in self._udp_ports.get(local.port, ()):
            if record.local.address in (local.address, *WILDCARDS):
                return record
        return None

    def _wanted(self, key: FlowKey) -> bool:
        return (
            key in self._flows
            or self._stamps.get((key.transport, key.local, key.remote)) is not None
            or self._udp_socket_for(key.local) is not None
        )

    def _conntrack_views(self, record: CountedFlow) -> list[tuple[FlowKey, int, int]]:
        """The conversation as the initiator's side and as the responder's side sees it,
        keeping the sides that belong to this host."""
        client = FlowKey(record.transport, record.orig_src, record.orig_dst)
        server = FlowKey(record.transport, record.reply_src, record.reply_dst)
        views = [
            (client, record.orig_payload, record.reply_payload),
            (server, record.reply_payload, record.orig_payload),
        ]
        local = self._local
        return [
            view
            for view in views
            if (local is None or view[0].local.address in local) and self._wanted(view[0])
        ]

    def _attribute_udp(self, state: _State) -> None:
        if state.attribution.method is AttributionMethod.FLOW_EVENT:
            return
        record = self._udp_socket_for(state.key.local)
        if record is None:
            state.attribution = Attribution.unknown(
                "no UDP socket is bound to the local port and no flow event named a process"
            )
            return
        pid = self._resolver.owner_of(record.inode) if record.inode else None
        info = self._resolver.info(pid) if pid is not None else None
        if pid is None:
            state.attribution = Attribution.unknown("the UDP socket on this port has no owner")
            return
        state.process = info or ProcessInfo(pid=pid)
        state.attribution = Attribution(AttributionMethod.LOCAL_PORT)
        state.uid = record.uid

    def _moving(self, state: _State) -> None:
        """Its counters moved: its rate is due at the next snapshot."""
        if state.key not in self._rating:
            if state.rate_time is not None and state.rate_time < self._last_snapshot:
                # Idle since its last rate: the baseline still held at the last snapshot.
                state.rate_time = self._last_snapshot
            self._rating[state.key] = state

    def _update_rate(self, state: _State, now: float) -> None:
        if state.rate_time is None:
            state.rate_time, state.rate_sent, state.rate_received = (
                now,
                state.bytes_sent,
                state.bytes_received,
            )
            return
        elapsed = now - state.rate_time
        if elapsed < 0.2:
            return
        send_rate = (state.bytes_sent - state.rate_sent) / elapsed
        receive_rate = (state.bytes_received - state.rate_received) / elapsed
        if (send_rate, receive_rate) != (state.send_rate, state.receive_rate):
            state.send_rate, state.receive_rate = send_rate, receive_rate
            state.dirty = True
        state.rate_time, state.rate_sent, state.rate_received = (
            now,
            state.bytes_sent,
            state.bytes_received,
        )
        if send_rate == receive_rate == 0:
            del self._rating[state.key]  # idle: nothing to compute until it moves

"""The one-shot JSON listing of every flow, with the per-socket work done natively.

The document is the one `Monitor.snapshot()` and `Flow.to_json()` give, flows sorted
by key (tests compare the two). TCP rows are rendered by the platform into templates
made here from `Flow.to_json`, so the JSON shape has one definition; the other sockets
(UDP, whose bytes come from conntrack) go through the flow table as usual.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

from netwarden.jsontext import dumps
from netwarden.model import Endpoint, Flow, FlowKey, Transport
from netwarden.model.observations import NO_FILE, ProcessResolver, RowFilter, RowHole, RowTemplate
from netwarden.monitor.attribution import by_owner
from netwarden.monitor.filters import FlowFilter
from netwarden.monitor.service import Monitor

# Stand-ins that Flow.to_json writes where each row's own values go, as JSON text.
_STRING_HOLES = (RowHole.LOCAL_ADDRESS, RowHole.REMOTE_ADDRESS, RowHole.STATE)
_STAND_IN = {
    hole: f"@@netwarden-hole-{hole.value}@@" if hole in _STRING_HOLES else 98765432100 + hole
    for hole in RowHole
}


class TemplateError(ValueError):
    """A stand-in value also appears elsewhere in a flow (say, in a command line)."""


def flow_key_order(flow: Flow) -> tuple[str, str, int, str, int]:
    key = flow.key
    return (key.transport, key.local.address, key.local.port, key.remote.address,
            key.remote.port)  # fmt: skip


def write_flows_json(
    monitor: Monitor,
    missing: Sequence[str],
    out: BinaryIO,
    *,
    is_root: bool,
    flow_filter: FlowFilter | None = None,
) -> bool:
    """Write `{"missing": [...], "flows": [...]}` and a newline to out, as
    `monitor --once --format json [--filter ...]` prints it; False (and nothing
    written) when the platform has no native dump or out is no file. Raises
    TemplateError, rarely: then the flow table's way gives the same document."""
    try:
        fd = out.fileno()
    except (OSError, io.UnsupportedOperation):  # e.g. a test's in-memory stream
        return False
    sources = monitor.sources
    owners = _Background(sources.processes.all_owners)  # the /proc scan, meanwhile a dump
    try:
        split = sources.sockets.split_snapshot()
    finally:
        found = owners.result()
    if split is None:
        return False
    rows, others = split
    flow_filter = flow_filter or FlowFilter()
    by_process = FlowFilter(process=flow_filter.process)  # decided per group, in Python
    now = time.time()
    templates: dict[tuple[int, int], RowTemplate | None] = {}
    if flow_filter.transport in (None, "tcp"):
        for group in rows.groups(found):
            flow = _stand_in_flow(group, sources.processes, is_root, now, sources.netns)
            templates[group] = _template(flow) if by_process.matches(flow) else None
    others_flows = sorted(
        (f for f in monitor.snapshot(others, now=now) if flow_filter.matches(f)),
        key=flow_key_order,
    )
    out.write(b'{"missing":%s,"flows":[' % dumps(list(missing)).encode())
    out.flush()
    written = rows.write(fd, templates, _row_filter(flow_filter)) if templates else 0
    for flow in others_flows:
        out.write(b"," if written else b"")
        written += out.write(dumps(flow.to_json()).encode())
    out.write(b"]}\n")
    return True


def _row_filter(flow_filter: FlowFilter) -> RowFilter | None:
    """The filter's words about sockets, for the native rows (the process is decided
    per group)."""
    f = flow_filter
    if f.port is None and not f.state and not f.address:
        return None
    return RowFilter(f.port, f.state.upper() if f.state else None, f.address or None)


def _stand_in_flow(
    group: tuple[int, int], resolver: ProcessResolver, is_root: bool, now: float, netns: str
) -> Flow:
    """A flow of the group with stand-ins where each row's own values go."""
    owner, cgroup_id = group
    inode = 0 if owner == NO_FILE else 1  # by_owner tells only "none" from "some"
    process, attribution = by_owner(resolver, owner if owner >= 0 else None, inode, is_root)
    s = _STAND_IN
    key = FlowKey(
        Transport.TCP,
        Endpoint(str(s[RowHole.LOCAL_ADDRESS]), int(s[RowHole.LOCAL_PORT])),
        Endpoint(str(s[RowHole.REMOTE_ADDRESS]), int(s[RowHole.REMOTE_PORT])),
    )
    return Flow(
        key=key, state=str(s[RowHole.STATE]), process=process, attribution=attribution,
        bytes_sent=int(s[RowHole.BYTES_SENT]), bytes_received=int(s[RowHole.BYTES_RECEIVED]),
        first_seen=now, last_seen=now, uid=int(s[RowHole.UID]), netns=netns,
        cgroup=(resolver.cgroup_path(cgroup_id) if cgroup_id else "")
        or (process.cgroup if process is not None else ""),
    )  # fmt: skip


def _template(stand_in: Flow) -> RowTemplate:
    """The JSON of a stand-in flow, cut where each row's own values go."""
    return _split(dumps(stand_in.to_json()))


def _split(text: str) -> RowTemplate:
    marks = []
    for hole, value in _STAND_IN.items():
        token = dumps(value)
        if text.count(token) != 1:
            raise TemplateError(f"{token} appears {text.count(token)} times in {text}")
        marks.append((text.index(token), len(token), hole))
    marks.sort()
    pieces: list[bytes] = []
    start = 0
    for at, length, _hole in marks:
        pieces.append(text[start:at].encode())
        start = at + length
    pieces.append(text[start:].encode())
    return tuple(pieces), tuple(hole for _at, _length, hole in marks)


class _Background:
    """A call run in a thread, its result (or exception) collected later."""

    def __init__(self, call: Callable[[], dict[int, int]]) -> None:
        self._value: dict[int, int] = {}
        self._error: BaseException | None = None
        self._call = call
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc

    def result(self) -> dict[int, int]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

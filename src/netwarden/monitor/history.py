"""History of closed flows in SQLite (WAL), with retention and queries."""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from netwarden.jsontext import dumps
from netwarden.memo import IdentityMemo
from netwarden.model import Attribution, AttributionMethod, Endpoint, Flow, FlowKey, Transport
from netwarden.model.flow import ProcessInfo, parse_network, process_json, within

SCHEMA = """
CREATE TABLE IF NOT EXISTS flows (
    id INTEGER PRIMARY KEY,
    transport TEXT NOT NULL,
    local_address TEXT NOT NULL,
    local_port INTEGER NOT NULL,
    remote_address TEXT NOT NULL,
    remote_port INTEGER NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    process_name TEXT,
    exe TEXT,
    process_json TEXT,
    attribution TEXT NOT NULL,
    attribution_reason TEXT NOT NULL,
    bytes_sent INTEGER NOT NULL,
    bytes_received INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    uid INTEGER,
    cgroup TEXT NOT NULL,
    netns TEXT NOT NULL,
    relay TEXT NOT NULL DEFAULT '',
    app TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS flows_last_seen ON flows(last_seen);
CREATE INDEX IF NOT EXISTS flows_process ON flows(process_name);
CREATE INDEX IF NOT EXISTS flows_remote ON flows(remote_address, remote_port);
CREATE TABLE IF NOT EXISTS detections (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    pid INTEGER,
    process_name TEXT NOT NULL,
    exe TEXT NOT NULL,
    client TEXT NOT NULL,
    destination TEXT NOT NULL,
    scanner TEXT NOT NULL,
    signature TEXT NOT NULL,
    action TEXT NOT NULL,
    direction TEXT NOT NULL,
    method TEXT NOT NULL,
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    matched TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS detections_time ON detections(time);
"""
DETECTION_COLUMNS = (
    "time",
    "pid",
    "process_name",
    "exe",
    "client",
    "destination",
    "scanner",
    "signature",
    "action",
    "direction",
    "method",
    "host",
    "path",
    "matched",
)

COLUMNS = (
    "transport, local_address, local_port, remote_address, remote_port, state, pid, "
    "process_name, exe, process_json, attribution, attribution_reason, bytes_sent, "
    "bytes_received, first_seen, last_seen, uid, cgroup, netns, relay, app"
)
INSERT = f"INSERT INTO flows ({COLUMNS}) VALUES ({', '.join('?' * (COLUMNS.count(',') + 1))})"
# Columns added after the first release, for databases made before them.
ADDED_COLUMNS = {"relay": "TEXT NOT NULL DEFAULT ''", "app": "TEXT NOT NULL DEFAULT ''"}


class HistoryError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    process: str | None = None  # name, exe path or pid
    since: float | None = None
    until: float | None = None
    host: str | None = None  # remote or local address, or a network (10.0.0.0/8)
    port: int | None = None  # remote or local port
    limit: int = 1000


def default_path(privileged: bool) -> Path:
    import os

    if privileged:
        return Path("/var/lib/netwarden/history.sqlite")
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "netwarden" / "history.sqlite"


class HistoryStore:
    def __init__(self, path: Path, retention_days: float = 30.0) -> None:
        self.path = path
        self.retention_seconds = retention_days * 86400
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._writing = threading.Lock()  # the monitor and the proxy write from two threads
            self._db.executescript(SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(flows)")}
            for name, declaration in ADDED_COLUMNS.items():
                if name not in present:
                    self._db.execute(f"ALTER TABLE flows ADD COLUMN {name} {declaration}")
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"cannot open history database {path}: {exc}") from exc

    def record(self, flows: Iterable[Flow]) -> int:
        rows = [_row(flow) for flow in flows]
        if rows:
            with self._writing, self._db:
                self._db.execute("BEGIN")
                self._db.executemany(INSERT, rows)
        return len(rows)

    def prune(self, now: float | None = None) -> int:
        cutoff = (now if now is not None else time.time()) - self.retention_seconds
        with self._writing:
            cursor = self._db.execute("DELETE FROM flows WHERE last_seen < ?", (cutoff,))
            self._db.execute("DELETE FROM detections WHERE time < ?", (cutoff,))
        return cursor.rowcount

    def record_detection(self, detection: dict[str, object]) -> None:
        """One finding of a content scanner (a `detection` record of the inspecting
        proxy, with the time and the process when known)."""
        row = [detection.get(name, "") for name in DETECTION_COLUMNS]
        row[0] = detection.get("time") or time.time()
        row[1] = detection.get("pid")
        placeholders = ", ".join("?" * len(DETECTION_COLUMNS))
        with self._writing:
            self._db.execute(
                f"INSERT INTO detections ({', '.join(DETECTION_COLUMNS)}) VALUES ({placeholders})",
                [str(v) if i > 1 else v for i, v in enumerate(row)],
            )

    def detections(self, since: float | None = None, limit: int = 1000) -> list[dict[str, object]]:
        """Findings of the content scanners, newest first."""
        sql = f"SELECT {', '.join(DETECTION_COLUMNS)} FROM detections"
        args: list[object] = []
        if since is not None:
            sql += " WHERE time >= ?"
            args.append(since)
        sql += " ORDER BY time DESC LIMIT ?"
        args.append(limit)
        return [
            dict(zip(DETECTION_COLUMNS, row, strict=True)) for row in self._db.execute(sql, args)
        ]

    def query(self, q: HistoryQuery) -> list[Flow]:
        where: list[str] = []
        args: list[object] = []
        if q.process:
            if q.process.isdigit():
                where.append("pid = ?")
                args.append(int(q.process))
            else:
                where.append("(process_name = ? OR exe = ?)")
                args.extend([q.process, q.process])
        if q.since is not None:
            where.append("last_seen >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append("first_seen <= ?")
            args.append(q.until)
        if q.host:
            network = parse_network(q.host)
            if network.num_addresses == 1:
                where.append("(remote_address = ? OR local_address = ?)")
                args.extend([str(network.network_address)] * 2)
            else:
                self._db.create_function(
                    "nw_in_network",
                    1,
                    functools.partial(within, network=network),
                    deterministic=True,
                )
                where.append("(nw_in_network(remote_address) OR nw_in_network(local_address))")
        if q.port is not None:
            where.append("(remote_port = ? OR local_port = ?)")
            args.extend([q.port, q.port])
        sql = f"SELECT {COLUMNS} FROM flows"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY last_seen DESC LIMIT ?"
        args.append(q.limit)
        return [_flow(row) for row in self._db.execute(sql, args)]

    def close(self) -> None:
        self._db.close()


# The process column's JSON, written once per process rather than per flow.
_process_text: IdentityMemo[ProcessInfo, str] = IdentityMemo(lambda p: dumps(process_json(p)))


def _row(flow: Flow) -> tuple[object, ...]:
    process = flow.process
    return (
        str(flow.key.transport), flow.key.local.address, flow.key.local.port,
        flow.key.remote.address, flow.key.remote.port, flow.state,
        None if process is None else process.pid,
        None if process is None else process.name,
        None if process is None else process.exe,
        None if process is None else _process_text(process),
        str(flow.attribution.method), flow.attribution.reason,
        flow.bytes_sent, flow.bytes_received, flow.first_seen, flow.last_seen,
        flow.uid, flow.cgroup, flow.netns, flow.relay, flow.app,
    )  # fmt: skip


def _flow(row: Sequence[object]) -> Flow:
    (transport, laddr, lport, raddr, rport, state, _pid, _name, _exe, pjson, method, reason,
     sent, received, first, last, uid, cgroup, netns, relay, app) = row  # fmt: skip
    process = None if pjson is None else ProcessInfo.from_json(json.loads(str(pjson)))
    return Flow(
        key=FlowKey(
            Transport(str(transport)),
            Endpoint(str(laddr), int(str(lport))),
            Endpoint(str(raddr), int(str(rport))),
        ),
        state=str(state), process=process,
        attribution=Attribution(AttributionMethod(str(method)), str(reason)),
        bytes_sent=int(str(sent)), bytes_received=int(str(received)),
        first_seen=float(str(first)), last_seen=float(str(last)), closed=True,
        uid=None if uid is None else int(str(uid)), cgroup=str(cgroup), netns=str(netns),
        relay=str(relay), app=str(app),
    )  # fmt: skip

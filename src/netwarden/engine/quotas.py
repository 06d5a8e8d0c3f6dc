"""Byte quotas: what each [[quota]] used in its current period, counted from the
engine's flow events, kept in the state directory so that a restart of the daemon
loses nothing, and asked at the CONNECT layer whether a program may open another
connection.

`netwarden quota reset` writes a reset request next to the usage; the daemon applies it
within a second (without a daemon, the command changes the usage itself).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from netwarden.engine.flow_deltas import FlowDeltas
from netwarden.model import FlowEvent
from netwarden.paths import write_private
from netwarden.policy.limits_model import LimitAction, Quota
from netwarden.policy.schedule import now

log = logging.getLogger(__name__)

USAGE_FILE = "quotas.json"
RESETS_FILE = "quota-resets.json"


@dataclass(slots=True)
class Usage:
    period_start: float
    used: int = 0
    reached: bool = False  # told once per period


class QuotaBook:
    def __init__(
        self,
        quotas: Sequence[Quota],
        directory: Path,
        clock: Callable[[], float] = now,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """clock: the time periods go by (shifted in tests); wall: the time flows are
        stamped with."""
        self.quotas = {quota.name: quota for quota in quotas}
        self.path = directory / USAGE_FILE
        self.resets_path = directory / RESETS_FILE
        self.clock = clock
        self.started = clock()
        self.lock = threading.Lock()
        self.deltas = FlowDeltas(counted_before=wall())
        self.dirty = False
        self.usage = {name: Usage(q.period_start(self.started)) for name, q in self.quotas.items()}
        self._load()

    # -- counting --------------------------------------------------------------------

    def on_events(self, events: Sequence[object]) -> None:
        """The engine's bus: bytes of each flow since it was last counted go to the
        quotas whose program, user or scope it belongs to."""
        with self.lock:
            for event in events:
                if isinstance(event, FlowEvent):
                    self._count(event)

    def _count(self, event: FlowEvent) -> None:
        flow = event.flow
        more_sent, more_received = self.deltas.of(event)
        if not more_sent and not more_received:
            return
        at = self.clock()
        for quota in self.quotas.values():
            if not quota.who.matches_flow(flow):
                continue
            usage = self._current(quota, at)
            usage.used += quota.counted(more_sent, more_received)
            self.dirty = True
            if usage.used >= quota.limit and not usage.reached:
                usage.reached = True
                what = (
                    "its next connections are refused"
                    if quota.action is LimitAction.BLOCK
                    else "logged only"
                )
                log.warning(
                    "quota %r reached: %d of %d bytes this %s (%s); %s",
                    quota.name,
                    usage.used,
                    quota.limit,
                    quota.period,
                    quota.who.describe(),
                    what,
                )

    def _current(self, quota: Quota, at: float) -> Usage:
        usage = self.usage[quota.name]
        start = quota.period_start(at)
        if start != usage.period_start:
            usage = self.usage[quota.name] = Usage(start)
            self.dirty = True
        return usage

    # -- deciding ----------------------------------------------------------------------

    def exhausted(self, exe: str, name: str, uid: int | None, cgroup: str) -> Quota | None:
        """The blocking quota this program has used up, if any."""
        at = self.clock()
        with self.lock:
            for quota in self.quotas.values():
                if quota.action is not LimitAction.BLOCK:
                    continue
                if not quota.who.matches(exe, name, uid, cgroup):
                    continue
                if self._current(quota, at).used >= quota.limit:
                    return quota
        return None

    # -- keeping -------------------------------------------------------------------------

    def report(self) -> list[dict[str, object]]:
        at = self.clock()
        with self.lock:
            return [usage_row(quota, self._current(quota, at)) for quota in self.quotas.values()]

    def keep(self) -> None:
        """Apply reset requests; write the usage when it changed."""
        self._apply_resets()
        with self.lock:
            if not self.dirty:
                return
            document = {
                name: {"period_start": u.period_start, "used": u.used, "reached": u.reached}
                for name, u in self.usage.items()
            }
            self.dirty = False
        try:
            write_private(self.path, json.dumps(document).encode())
        except OSError as exc:
            log.error("could not keep the quota usage in %s: %s", self.path, exc)

    def _load(self) -> None:
        document = read_json(self.path)
        for name, saved in document.items():
            quota = self.quotas.get(name)
            if quota is None or not isinstance(saved, dict):
                continue
            try:
                usage = Usage(
                    float(saved["period_start"]), int(saved["used"]), bool(saved["reached"])
                )
            except (KeyError, TypeError, ValueError):
                log.warning(
                    "%s: the usage of quota %r is unreadable; it starts at 0", self.path, name
                )
                continue
            if usage.period_start == quota.period_start(self.started):
                self.usage[name] = usage

    def _apply_resets(self) -> None:
        requests = read_json(self.resets_path)
        if not requests:
            return
        try:
            self.resets_path.unlink()
        except OSError:
            return
        with self.lock:
            for name in requests:
                if name in self.usage:
                    self.usage[name] = Usage(self.quotas[name].period_start(self.clock()))
                    self.dirty = True
                    log.warning("quota %r was reset", name)


def read_json(path: Path) -> dict[str, object]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def usage_row(quota: Quota, usage: Usage) -> dict[str, object]:
    return {
        "name": quota.name,
        "who": quota.who.describe(),
        "period": str(quota.period),
        "period_start": usage.period_start,
        "used": usage.used,
        "limit": quota.limit,
        "direction": str(quota.way),
        "action": str(quota.action),
        "reached": usage.used >= quota.limit,
    }


def request_reset(directory: Path, names: Sequence[str]) -> None:
    """Ask the daemon to reset these quotas (it applies it within a second)."""
    requests = read_json(directory / RESETS_FILE)
    requests.update({name: now() for name in names})
    write_private(directory / RESETS_FILE, json.dumps(requests).encode())


class QuotaKeeper:
    """Writes a book's usage every few seconds, and at the end."""

    def __init__(self, book: QuotaBook, every: float = 1.0) -> None:
        self.book = book
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="netwarden-quotas", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.book.keep()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.book.keep()

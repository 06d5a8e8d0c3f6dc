"""The loaded callouts, asked in order of weight, with what each one did: calls,
verdicts, errors and time. A callout that raises or overruns its time budget is
logged and the fail mode decides instead."""

from __future__ import annotations

import collections
import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from netwarden.callout.api import Change, Connection, Layer, defines, layers_of, name_of
from netwarden.model import Flow
from netwarden.model.connect import BLOCK, CONTINUE, PERMIT, Action, FlowPacket, StreamData, Verdict

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 0.050  # seconds a hook may take before the fail mode decides


class FailMode(enum.StrEnum):
    OPEN = "open"  # a failing callout permits (and traffic flows while no daemon runs)
    CLOSED = "closed"  # a failing callout blocks (and traffic waits for a daemon)

    @property
    def verdict(self) -> Verdict:
        return PERMIT if self is FailMode.OPEN else BLOCK


@dataclass(slots=True)
class CalloutStats:
    calls: int = 0
    errors: int = 0
    overruns: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    verdicts: collections.Counter[str] = field(default_factory=collections.Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "overruns": self.overruns,
            "seconds": round(self.seconds, 6),
            "slowest_seconds": round(self.slowest, 6),
            "verdicts": dict(self.verdicts),
        }


@dataclass(slots=True)
class LoadedCallout:
    callout: Any
    origin: str  # the file or entry point it came from
    name: str = ""
    weight: int = 0
    layers: list[Layer] = field(default_factory=list)
    stats: CalloutStats = field(default_factory=CalloutStats)

    def __post_init__(self) -> None:
        self.name = self.name or name_of(self.callout)
        self.weight = int(getattr(self.callout, "weight", 0) or 0)
        self.layers = self.layers or layers_of(self.callout)

    def to_json(self) -> dict[str, Any]:
        layers = [str(layer) for layer in self.layers]
        return {
            "name": self.name,
            "origin": self.origin,
            "weight": self.weight,
            "layers": layers,
            **self.stats.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    by: str  # the callout that decided, "" when none had an opinion
    failure: str = ""  # why the fail mode decided, when it did


@dataclass(frozen=True, slots=True)
class Failure:
    callout: str
    layer: Layer
    error: str
    fallback: Verdict


class CalloutRegistry:
    def __init__(
        self,
        loaded: Iterable[LoadedCallout] = (),
        *,
        fail_mode: FailMode = FailMode.OPEN,
        budget: float = DEFAULT_BUDGET,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> None:
        # Higher weight first; equal weights in the order they were loaded.
        self.loaded = sorted(loaded, key=lambda c: -c.weight)
        self.fail_mode = fail_mode
        self.budget = budget
        self.on_failure = on_failure
        self._at = {layer: [c for c in self.loaded if layer in c.layers] for layer in Layer}

    def at(self, layer: Layer) -> list[LoadedCallout]:
        return self._at[layer]

    def classify(self, connection: Connection) -> Decision:
        """Ask each CONNECT callout until one decides; CONTINUE when none does."""
        for loaded in self._at[Layer.CONNECT]:
            verdict, failure = self._call(
                loaded, Layer.CONNECT, loaded.callout.classify, connection
            )
            if failure:
                return Decision(self.fail_mode.verdict, loaded.name, failure)
            verdict = CONTINUE if verdict is None else verdict
            if not isinstance(verdict, Verdict):
                failure = f"classify returned {verdict!r}, not a verdict"
                self._failed(loaded, Layer.CONNECT, failure)
                return Decision(self.fail_mode.verdict, loaded.name, failure)
            loaded.stats.verdicts[str(verdict.action)] += 1
            if verdict.action is not Action.CONTINUE:
                return Decision(verdict, loaded.name)
        return Decision(CONTINUE, "")

    def watches(self, connection: Connection) -> bool:
        """Whether a PACKET callout wants every packet of this connection."""
        for loaded in self._at[Layer.PACKET]:
            if not defines(loaded.callout, "watch_packets"):
                continue
            hook = loaded.callout.watch_packets
            wanted, failure = self._call(loaded, Layer.PACKET, hook, connection)
            if not failure and wanted:
                return True
        return False

    def classify_packet(self, packet: FlowPacket) -> Decision:
        """Ask each PACKET callout until one decides; CONTINUE when none does."""
        for loaded in self._at[Layer.PACKET]:
            verdict, failure = self._call(loaded, Layer.PACKET, loaded.callout.packet, packet)
            if failure:
                return Decision(self.fail_mode.verdict, loaded.name, failure)
            if isinstance(verdict, Verdict) and verdict.action is not Action.CONTINUE:
                loaded.stats.verdicts[str(verdict.action)] += 1
                return Decision(verdict, loaded.name)
        return Decision(CONTINUE, "")

    def classify_stream(self, data: StreamData) -> Decision:
        """Ask each STREAM callout until one blocks; CONTINUE when none does."""
        for loaded in self._at[Layer.STREAM]:
            verdict, failure = self._call(loaded, Layer.STREAM, loaded.callout.stream, data)
            if failure:
                return Decision(self.fail_mode.verdict, loaded.name, failure)
            if isinstance(verdict, Verdict) and verdict.action is Action.BLOCK:
                loaded.stats.verdicts[str(verdict.action)] += 1
                return Decision(verdict, loaded.name)
        return Decision(CONTINUE, "")

    def flows_established(self, flows: Iterable[Flow]) -> None:
        self._tell(Layer.FLOW_ESTABLISHED, "flow_established", flows)

    def flows_deleted(self, flows: Iterable[Flow]) -> None:
        self._tell(Layer.FLOW_DELETED, "flow_deleted", flows)

    def notify(self, change: Change) -> None:
        for loaded in self.loaded:
            if defines(loaded.callout, "notify"):
                self._call(loaded, None, loaded.callout.notify, change)

    def _tell(self, layer: Layer, hook: str, flows: Iterable[Flow]) -> None:
        callouts = self._at[layer]
        if not callouts:
            return
        for flow in flows:
            for loaded in callouts:
                self._call(loaded, layer, getattr(loaded.callout, hook), flow)

    def _call(
        self, loaded: LoadedCallout, layer: Layer | None, hook: Callable[[Any], Any], arg: Any
    ) -> tuple[Any, str]:
        """(what the hook returned, "" or why it failed)."""
        stats = loaded.stats
        started = time.perf_counter()
        try:
            result = hook(arg)
        except Exception as exc:
            stats.errors += 1
            failure = f"raised {type(exc).__name__}: {exc}"
            self._failed(loaded, layer, failure, exc)
            return None, failure
        finally:
            elapsed = time.perf_counter() - started
            stats.calls += 1
            stats.seconds += elapsed
            stats.slowest = max(stats.slowest, elapsed)
        if elapsed > self.budget:
            stats.overruns += 1
            failure = f"took {elapsed * 1000:.1f} ms (budget {self.budget * 1000:.0f} ms)"
            self._failed(loaded, layer, failure)
            return None, failure
        return result, ""

    def _failed(
        self,
        loaded: LoadedCallout,
        layer: Layer | None,
        failure: str,
        exc: BaseException | None = None,
    ) -> None:
        where = f" at {layer}" if layer else ""
        fallback = self.fail_mode.verdict
        log.error(
            "callout %s%s %s; fail-%s: %s",
            loaded.name,
            where,
            failure,
            self.fail_mode,
            fallback,
            exc_info=exc,
        )
        if self.on_failure is not None and layer is not None:
            self.on_failure(Failure(loaded.name, layer, failure, fallback))

    def to_json(self) -> list[dict[str, Any]]:
        return [loaded.to_json() for loaded in self.loaded]

"""`netwarden monitor --once`: one listing of every flow.

Free of the option parser, so that the entry point can run the JSON listing, which
scripts call in loops, without loading it (see cli/entry.py).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from netwarden.jsontext import dumps

if TYPE_CHECKING:
    from netwarden.engine.core import Engine
    from netwarden.monitor.filters import FlowFilter


class CommandError(Exception):
    """A problem the user can fix: printed as `netwarden: MESSAGE`, exit status 2."""


def monitor_once(netns: str | None, as_json: bool, flow_filter: FlowFilter | None) -> None:
    """Print every flow (those flow_filter matches) as a table or as JSON."""
    from netwarden.engine.core import Engine, EngineError

    try:
        with Engine.open(netns, events=False, record_events=False) as engine:
            _list(engine, as_json, flow_filter)
    except EngineError as exc:
        raise CommandError(str(exc)) from None


def _list(engine: Engine, as_json: bool, flow_filter: FlowFilter | None) -> None:
    from netwarden.monitor.oneshot import TemplateError, flow_key_order, write_flows_json

    monitor = engine.monitor
    if as_json:
        try:
            if write_flows_json(
                monitor,
                engine.missing,
                sys.stdout.buffer,
                is_root=engine.is_root,
                flow_filter=flow_filter,
            ):
                return
        except TemplateError:
            pass  # nothing was written yet
    flows = monitor.snapshot()
    if flow_filter is not None:
        flows = [f for f in flows if flow_filter.matches(f)]
    flows.sort(key=flow_key_order)
    if as_json:
        document = {"missing": list(engine.missing), "flows": [f.to_json() for f in flows]}
        sys.stdout.write(dumps(document) + "\n")
        return
    from netwarden.cli.render import table

    for line in engine.missing:
        print(f"note: {line}", file=sys.stderr)
    sys.stdout.write(table(flows) + "\n")

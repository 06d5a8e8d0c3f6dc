"""`netwarden monitor --once`: one listing of every flow.

Free of the option parser, so that the entry point can run the JSON listing, which
scripts call in loops, without loading it (see cli/entry.py).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING

from netwarden.jsontext import dumps

if TYPE_CHECKING:
    from netwarden.monitor.filters import FlowFilter
    from netwarden.platform.base import Sources


class CommandError(Exception):
    """A problem the user can fix: printed as `netwarden: MESSAGE`, exit status 2."""


def open_sources(stack: ExitStack, netns: str | None, events: bool) -> Sources:
    from netwarden.platform.base import PlatformError
    from netwarden.platform.select import current

    try:
        return stack.enter_context(current().open_sources(netns, events=events))
    except PlatformError as exc:
        raise CommandError(str(exc)) from None
    except PermissionError as exc:
        raise CommandError(
            f"permission denied opening kernel interfaces ({exc}); try as root"
        ) from None


def monitor_once(netns: str | None, as_json: bool, flow_filter: FlowFilter | None) -> None:
    """Print every flow (those flow_filter matches) as a table or as JSON."""
    from netwarden.monitor.oneshot import TemplateError, flow_key_order, write_flows_json
    from netwarden.monitor.service import Monitor
    from netwarden.platform.select import is_privileged

    with ExitStack() as stack:
        sources = open_sources(stack, netns, events=False)
        is_root = is_privileged()
        monitor = Monitor(sources, is_root=is_root, record_events=False)
        if as_json:
            try:
                if write_flows_json(monitor, sources.missing, sys.stdout.buffer,
                                    is_root=is_root, flow_filter=flow_filter):  # fmt: skip
                    return
            except TemplateError:
                pass  # nothing was written yet
        flows = monitor.snapshot()
        if flow_filter is not None:
            flows = [f for f in flows if flow_filter.matches(f)]
        flows.sort(key=flow_key_order)
        if as_json:
            document = {"missing": list(sources.missing), "flows": [f.to_json() for f in flows]}
            sys.stdout.write(dumps(document) + "\n")
            return
        from netwarden.cli.render import table

        for line in sources.missing:
            print(f"note: {line}", file=sys.stderr)
        sys.stdout.write(table(flows) + "\n")

"""`netwarden up`: apply the policy, run netwarden's proxy when redirects name it, and
feed the monitor's history, until SIGTERM; then remove everything it set up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from netwarden.daemon import state
from netwarden.model import FlowEvent
from netwarden.monitor.history import HistoryStore
from netwarden.monitor.service import Monitor
from netwarden.platform.base import PlatformError
from netwarden.platform.linux import firewall
from netwarden.platform.select import current, is_privileged
from netwarden.policy.model import Policy
from netwarden.proxy.transparent import FlowReport, TransparentProxy

log = logging.getLogger(__name__)


class AlreadyRunning(PlatformError):
    pass


@dataclass
class ProxyThread:
    """netwarden's transparent proxy on its own event loop, in a thread."""

    policy: Policy
    on_flow: Callable[[FlowReport], None]
    error: BaseException | None = None

    def start(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netwarden-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self.error is not None:
            raise PlatformError(f"the proxy could not listen: {self.error}")

    def _run(self) -> None:
        port = self.policy.settings.proxy_port
        proxy = TransparentProxy(self.policy.settings.proxy_mark, on_flow=self.on_flow)
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(
            proxy.serve([("127.0.0.1", port), ("::1", port)], self._ready.set)
        )
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported by start() or at stop
            self.error = exc
        finally:
            self._ready.set()
            self._loop.close()

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


def needs_proxy(policy: Policy) -> bool:
    return any(r.target is not None and r.target.address is None for r in policy.redirects)


def claim(policy: Policy) -> None:
    """Refuse to start twice; clean what a crashed daemon left."""
    previous = state.read()
    if previous is not None and state.alive(previous.pid):
        raise AlreadyRunning(
            f"netwarden is already up here (pid {previous.pid}, policy {previous.policy}); "
            "`netwarden down` stops it"
        )
    if previous is not None:
        log.warning("cleaning up after a daemon that did not stop (pid %d)", previous.pid)
        with contextlib.suppress(PlatformError):
            firewall.remove(previous.table)
        state.clear()


def run(
    policy: Policy,
    history: HistoryStore | None,
    stop: threading.Event,
    on_ready: Callable[[str], None],
    on_flow: Callable[[FlowReport], None],
) -> None:
    import os

    claim(policy)
    from netwarden.platform.linux.backend import monitor_table_name

    state.write(
        state.DaemonState(
            os.getpid(), policy.settings.table, policy.source, monitor_table_name(os.getpid())
        )
    )
    proxy: ProxyThread | None = None
    try:
        if needs_proxy(policy):
            proxy = ProxyThread(policy, on_flow)
            proxy.start()
        rules = firewall.apply(policy)
        with current().open_sources(None, events=True) as sources:
            monitor = Monitor(sources, history=history, is_root=is_privileged())
            summary = (
                f"up: {len(policy.rules)} rules, {len(policy.redirects)} redirects "
                f"({rules} kernel rules) in table inet {policy.settings.table}"
            )
            if proxy is not None:
                summary += f"; proxy on port {policy.settings.proxy_port}"
            on_ready(summary)

            def discard(_events: list[FlowEvent]) -> None:
                pass  # the history store records closed flows; nothing else to show

            monitor.run(discard, stop)
    finally:
        with contextlib.suppress(PlatformError):
            firewall.remove(policy.settings.table)
        if proxy is not None:
            proxy.stop()
        state.clear()

"""`netwarden up`: apply the policy, run netwarden's proxies (the transparent one its
redirects name, the SOCKS5/HTTP listeners its settings name) and feed the monitor's
history, until SIGTERM; then remove everything it set up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netwarden.callout.api import Layer
from netwarden.callout.program_rules import ProgramRules
from netwarden.callout.registry import DEFAULT_BUDGET, CalloutRegistry, FailMode, LoadedCallout
from netwarden.callout.shape_guard import ShapeGuard
from netwarden.daemon import state
from netwarden.daemon.answers import AnswerKeeper
from netwarden.daemon.detections import DetectionRecorder
from netwarden.daemon.policy_control import PolicyControl
from netwarden.engine import host
from netwarden.engine.app_notes import AppNoteWriter, notes_path
from netwarden.engine.bus import Inspected, PolicyApplied, Subscriber
from netwarden.engine.callouts import (
    CalloutHost,
    connect_layer_for,
    failure_publisher,
    registry_for,
)
from netwarden.engine.core import Engine, EngineError
from netwarden.engine.enforce import LiveConnectLayer, remove_policy
from netwarden.engine.host import Firewall, PlatformError, ShapeClass, Shaper, is_privileged
from netwarden.engine.prompts import Answer, PromptBook
from netwarden.engine.quotas import QuotaBook, QuotaKeeper
from netwarden.model import Endpoint, RelayLink
from netwarden.model.connect import Action, StreamData
from netwarden.model.flow import AppNote
from netwarden.monitor.history import HistoryStore
from netwarden.paths import state_dir
from netwarden.policy.compiler import CompiledPolicy
from netwarden.policy.connect_layer import ConnectLayer
from netwarden.policy.loader import connect_mask_problems
from netwarden.policy.model import Action as PolicyAction
from netwarden.policy.model import Policy
from netwarden.policy.schedule import now
from netwarden.proxy.gate import policy_gate
from netwarden.proxy.inspecting import (
    InspectEvent,
    Inspector,
    InspectSetupError,
    build_inspector,
    event_record,
)
from netwarden.proxy.pacing import Pacing
from netwarden.proxy.transparent import FlowReport, TransparentProxy
from netwarden.proxy.userspace import UserModeProxy
from netwarden.wording import count

log = logging.getLogger(__name__)


CONNECT_SWITCH_INTERVAL = 0.0001  # seconds
WEB_INTERVAL = 0.5  # seconds between the monitor's looks at the socket table, with --web


class AlreadyRunning(PlatformError):
    pass


@dataclass(frozen=True)
class WebOptions:
    """The control API (always on its unix socket) and, with tcp, the dashboard."""

    tcp: tuple[str, int] | None = None
    doctor: Callable[[], list[dict[str, Any]]] = lambda: []
    token_dir: Path | None = None  # netwarden's state directory unless given
    on_url: Callable[[str], None] = lambda url: None


@dataclass(frozen=True)
class CalloutOptions:
    loaded: tuple[LoadedCallout, ...] = ()
    fail_mode: FailMode | None = None  # None: the policy's setting
    budget: float = DEFAULT_BUDGET


@dataclass
class ProxyThread:
    """netwarden's proxies (transparent and user-mode) on their own event loop, in a
    thread, beside the monitor in the main thread."""

    policy: Policy
    on_flow: Callable[[FlowReport], None]
    on_link: Callable[[RelayLink | AppNote], None] | None = None
    inspector: Inspector | None = None
    error: BaseException | None = None

    def start(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netwarden-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self.error is not None:
            raise PlatformError(f"the proxy could not listen: {self.error}")

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(self._serve())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported by start() or at stop
            self.error = exc
        finally:
            self._ready.set()
            # Connections still open end here, each closing its sockets.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _serve(self) -> None:
        settings = self.policy.settings
        servers = []
        if settings.socks5 or settings.http_proxy:
            user_mode = UserModeProxy(
                policy_gate(self.policy), mark=settings.proxy_mark, inspector=self.inspector
            )
            servers = await user_mode.start(list(settings.socks5), list(settings.http_proxy))
        try:
            if not needs_transparent(self.policy):
                self._ready.set()
                await asyncio.gather(*(s.serve_forever() for s in servers))
                return
            port = settings.proxy_port
            proxy = TransparentProxy(
                settings.proxy_mark, on_flow=self.on_flow, on_link=self.on_link,
                original_destination=host.original_destination,
                tproxy=uses_tproxy(self.policy), inspector=self.inspector,
            )  # fmt: skip
            listeners = ([("0.0.0.0", port), ("::", port)] if uses_tproxy(self.policy)
                         else [("127.0.0.1", port), ("::1", port)])  # fmt: skip
            await asyncio.gather(proxy.serve(listeners, self._ready.set),
                                 *(s.serve_forever() for s in servers))  # fmt: skip
        finally:
            for server in servers:
                server.close()

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


def _inspector(
    policy: Policy,
    engine: Engine,
    registry: CalloutRegistry,
    detections: DetectionRecorder,
    shaping: ShapeGuard | None,
) -> Inspector | None:
    """Inspection as the policy's [inspect] section asks, its findings told to the
    engine: the protocol joins the application's flow, the rest goes on the bus (and a
    scanner's findings, with the process, into the history)."""
    from netwarden.inspect.identify import Identification

    shared = AppNoteWriter(notes_path())

    def learnt(event: InspectEvent) -> None:
        if isinstance(event.what, Identification):
            note = AppNote(
                Endpoint(*event.client), Endpoint(*event.destination), event.what.summary()
            )
            engine.relay_links.append(note)
            shared.append(note)  # for monitors started apart
            return
        record = event_record(event)
        if record is None:
            return
        if record["kind"] == "detection":
            detections.add(record, event.client, event.destination)
            return
        engine.publish([Inspected(record)])

    def stream(data: StreamData) -> str:
        decision = registry.classify_stream(data)
        return decision.by if decision.verdict.action is Action.BLOCK else ""

    streaming = stream if registry.at(Layer.STREAM) else None

    pacing = None
    if shaping is not None:
        pacing = Pacing(
            policy.shapes,
            engine.connection_process,
            lambda client, destination: shaping.shape_of(Endpoint(*client), Endpoint(*destination)),
        )
    try:
        return build_inspector(
            policy.inspect,
            learnt,
            stream=streaming,
            client_program=engine.connection_program,
            pacing=pacing,
        )
    except InspectSetupError as exc:
        raise PlatformError(str(exc)) from None


def needs_transparent(policy: Policy) -> bool:
    return any(r.target is not None and r.target.address is None for r in policy.redirects)


def uses_tproxy(policy: Policy) -> bool:
    return any(r.target is not None and r.target.tproxy for r in policy.redirects)


def needs_proxy(policy: Policy) -> bool:
    settings = policy.settings
    return needs_transparent(policy) or bool(settings.socks5 or settings.http_proxy)


MARK_CHECK_SECONDS = 2.0


def _shaping(policy: Policy, stack: contextlib.ExitStack) -> ShapeGuard | None:
    """The kernel's rate limits for the policy's [[shape]] tables (removed at the end),
    and the callout that hands connections to them."""
    if not policy.shapes:
        return None
    backend = host.backend()
    shaper: Shaper = backend.shaper()
    classes = [ShapeClass(s.name, s.upload, s.download) for s in policy.shapes]
    stack.callback(shaper.close)
    try:
        shaper.start(classes, backend.shaped_interfaces())
    except PlatformError as exc:
        log.warning(
            "rate limits hold only for connections through netwarden's proxy: the kernel "
            "cannot shape here (%s); `netwarden doctor` says what is missing",
            exc,
        )
        shaper.close()
        shaper = NoShaper()
    return ShapeGuard(policy.shapes, shaper)


class NoShaper:
    """Where the kernel cannot shape: connections are only recorded, for the proxy."""

    def start(self, classes: Sequence[ShapeClass], interfaces: Sequence[str]) -> None:
        pass

    def assign(self, transport: str, version: int, local_port: int, index: int) -> None:
        pass

    def release(self, transport: str, version: int, local_port: int) -> None:
        pass

    def close(self) -> None:
        pass


WINDOW_RECHECK = 3600.0  # seconds between looks when no window changes within a week


def _follow_windows(
    policy: Policy,
    live: LiveConnectLayer,
    by: str,
    publish: Callable[[Sequence[PolicyApplied]], None],
    stop: threading.Event,
) -> None:
    """Put rules with days or hours in force, and out of it, as the clock goes: the
    policy is applied anew (atomically) at each change."""
    in_force = {rule.name for rule in policy.in_force(now()).scheduled}
    while not stop.is_set():
        change = policy.next_change(now())
        wait = WINDOW_RECHECK if change is None else max(0.0, change - now())
        if stop.wait(min(wait, WINDOW_RECHECK)):
            return
        current = policy.in_force(now())
        names = {rule.name for rule in current.scheduled}
        if names == in_force:
            continue
        try:
            compiled, rules = live.apply(current, by=by)
        except PlatformError as exc:
            log.error("time windows: could not apply the policy (the previous one stays): %s", exc)
            continue
        for name in sorted(names - in_force):
            log.warning("time window: rule %r is in force now", name)
        for name in sorted(in_force - names):
            log.warning("time window: rule %r is out of force now", name)
        in_force = names
        publish([PolicyApplied(policy.source, compiled.table, rules)])


def _keep_marks(firewall: Firewall, policy: CompiledPolicy, stop: threading.Event) -> None:
    """A unit that restarts gets a new cgroup, without the socket marks its rules need:
    give them again (the rules match the mark, which does not change)."""
    while not stop.wait(MARK_CHECK_SECONDS):
        try:
            for cgroup in firewall.remark(policy):
                log.warning("%s was made anew: its sockets are marked again", cgroup)
        except PlatformError as exc:
            log.error("could not check socket marks: %s", exc)


def claim(policy: Policy, firewall: Firewall) -> None:
    """Refuse to start twice; clean what a crashed daemon left."""
    previous = state.read()
    if previous is not None and state.alive(previous.pid):
        raise AlreadyRunning(
            f"netwarden is already up here (pid {previous.pid}, policy {previous.policy}); "
            "`netwarden down` stops it"
        )
    table = policy.settings.table
    if previous is None and firewall.show(table)[1]:
        log.warning(
            "replacing the policy in table inet %s (applied with `netwarden "
            "policy apply`); `netwarden down` removes it when this daemon stops",
            table,
        )
    if previous is not None:
        log.warning("cleaning up after a daemon that did not stop (pid %d)", previous.pid)
        with contextlib.suppress(PlatformError):
            firewall.remove(previous.table)
        host.backend().clear_connect_queue()
        host.backend().clear_shaping()
        state.clear()


def run(
    policy: Policy,
    history: HistoryStore | None,
    stop: threading.Event,
    on_ready: Callable[[str], None],
    on_flow: Callable[[FlowReport], None],
    callouts: CalloutOptions | None = None,
    subscribers: Sequence[Subscriber] = (),
    web: WebOptions | None = None,
) -> None:
    import os

    callouts = callouts or CalloutOptions()
    web = web or WebOptions()
    fail_mode = callouts.fail_mode or FailMode(policy.settings.fail_mode)

    if not is_privileged():
        raise PlatformError("netwarden up needs root: it changes nftables and routing")
    firewall = host.firewall()
    claim(policy, firewall)
    state.write(
        state.DaemonState(
            os.getpid(), policy.settings.table, policy.source, host.monitor_table(os.getpid())
        )
    )
    proxy: ProxyThread | None = None
    keeper: threading.Thread | None = None
    callout_host: CalloutHost | None = None
    try:
        with contextlib.ExitStack() as stack:
            try:
                # A dashboard shows a new connection within half a second of it opening.
                interval = WEB_INTERVAL if web.tcp is not None else 1.0
                engine = stack.enter_context(
                    Engine.open(None, events=True, history=history, interval=interval)
                )
            except EngineError as exc:
                raise PlatformError(str(exc)) from None
            for subscriber in subscribers:
                engine.bus.subscribe(subscriber)
            quotas = None
            if policy.quotas:
                quotas = QuotaBook(policy.quotas, state_dir())
                engine.bus.subscribe(quotas.on_events)
                stack.callback(QuotaKeeper(quotas).close)
            shaping = _shaping(policy, stack)
            registry = registry_for(
                policy,
                callouts.loaded,
                fail_mode,
                callouts.budget,
                failure_publisher(engine.publish),
                quotas,
                shaping,
            )
            if needs_proxy(policy):
                detections = DetectionRecorder(
                    engine.connection_process,
                    history,
                    lambda record: engine.publish([Inspected(record)]),
                )
                stack.callback(detections.close)
                inspector = _inspector(policy, engine, registry, detections, shaping)
                proxy = ProxyThread(policy, on_flow, engine.relay_links.append, inspector)
                proxy.start()
            layer = connect_layer_for(policy, registry)
            if layer is not None and (problems := connect_mask_problems(policy.settings)):
                raise PlatformError(problems[0])
            by = f"netwarden up (pid {os.getpid()})"
            live = LiveConnectLayer(layer, firewall)
            compiled, rules = live.apply(policy.in_force(now()), by=by)
            if policy.scheduled:
                follower = threading.Thread(
                    target=_follow_windows,
                    args=(policy, live, by, engine.publish, stop),
                    daemon=True,
                    name="netwarden-windows",
                )
                follower.start()

            def relayout(new_layer: ConnectLayer, target: Endpoint) -> None:
                live.add_redirect(compiled.table, new_layer, target)

            program_rules = _program_rules(registry)
            answers = AnswerKeeper(policy, program_rules, firewall.environment())
            prompts = PromptBook(
                policy.ask.timeout,
                Answer(allow=policy.ask.default is PolicyAction.ALLOW, by="timeout"),
                answers.remember,
                engine.publish,
            )
            callout_host = CalloutHost(
                engine, registry, layer, relayout, state.write_callouts, prompts
            )
            callout_host.start(stop)
            control = PolicyControl(policy, live, program_rules, answers)
            _web_face(engine, prompts, control, callout_host, history, web, stack)
            if layer is not None:
                # A held connection waits while another thread (the monitor) holds the
                # interpreter: make that thread hand it over sooner than the 5 ms default.
                sys.setswitchinterval(CONNECT_SWITCH_INTERVAL)
            engine.publish([PolicyApplied(policy.source, compiled.table, rules)])
            if compiled.cgroup_marks:
                keeper = threading.Thread(
                    target=_keep_marks,
                    args=(firewall, compiled, stop),
                    daemon=True,
                    name="netwarden-marks",
                )
                keeper.start()
            summary = _summary(policy, rules, proxy is not None)
            if registry.at(Layer.STREAM) and proxy is None:
                summary += (
                    "; STREAM callouts see nothing: no [[redirect]] sends connections to "
                    "netwarden's proxy"
                )
            if layer is not None and callout_host.queue is not None:
                count = len(registry.at(Layer.CONNECT))
                summary += (
                    f"; CONNECT layer: {count} classifying callout(s), "
                    f"{callout_host.queue.mechanism} queue {layer.queue}, "
                    f"fail-{fail_mode}"
                )
            on_ready(summary)
            engine.run(stop)
    finally:
        stop.set()
        if callout_host is not None:
            callout_host.stop()  # (its CONNECT loop reads the prompts: closed after it)
            if callout_host.prompts is not None:
                callout_host.prompts.close()
        if keeper is not None:
            keeper.join(timeout=10)  # not marking again while the marks are removed
        with contextlib.suppress(PlatformError):
            remove_policy(policy.settings.table, firewall)
        if proxy is not None:
            proxy.stop()
        state.clear()


def _program_rules(registry: CalloutRegistry) -> ProgramRules | None:
    for loaded in registry.loaded:
        if isinstance(loaded.callout, ProgramRules):
            return loaded.callout
    return None


def _web_face(
    engine: Engine,
    prompts: PromptBook,
    control: PolicyControl,
    callout_host: CalloutHost,
    history: HistoryStore | None,
    web: WebOptions,
    stack: contextlib.ExitStack,
) -> None:
    """The control API on its unix socket and, when asked, the dashboard on a port."""
    from netwarden.daemon.web.api import Daemon, build_app
    from netwarden.daemon.web.live import LiveView
    from netwarden.daemon.web.server import WebError, WebServer
    from netwarden.daemon.web.token import api_token

    live = LiveView()
    engine.bus.subscribe(live.on_events)
    daemon = Daemon(live, prompts, control, callout_host.status, history, web.doctor)
    token = api_token(web.token_dir)
    try:
        server = WebServer(build_app(daemon, token), state.api_socket(), web.tcp)
    except (WebError, OSError) as exc:
        raise PlatformError(str(exc)) from None
    server.start()
    stack.callback(server.stop)
    if web.tcp is not None:
        address, port = web.tcp
        shown = f"[{address}]" if ":" in address else address
        web.on_url(f"http://{shown}:{port}/login?token={token}")


def _summary(policy: Policy, rules: int, proxied: bool) -> str:
    summary = (
        f"up: {count(len(policy.rules), 'rule')}, {count(len(policy.redirects), 'redirect')} "
        f"({count(rules, 'kernel rule')}) in table inet {policy.settings.table}"
    )
    if policy.scheduled:
        active = len(policy.in_force(now()).scheduled)
        summary += (
            f"; {count(len(policy.scheduled), 'rule')} with days/hours ({active} in force now)"
        )
    if policy.quotas:
        summary += f"; {count(len(policy.quotas), 'quota')} (netwarden quota)"
    if policy.shapes:
        summary += f"; {count(len(policy.shapes), 'rate limit')}"
    if proxied and needs_transparent(policy):
        summary += f"; proxy on port {policy.settings.proxy_port}"
    for kind, listeners in (
        ("SOCKS5", policy.settings.socks5),
        ("HTTP proxy", policy.settings.http_proxy),
    ):
        if listeners:
            summary += f"; {kind} on " + ", ".join(f"{h}:{p}" for h, p in listeners)
    inspect = policy.inspect
    if proxied and inspect.enabled:
        what = [count(len(inspect.http), "HTTP rule")]
        if inspect.intercept_tls:
            what.append("TLS intercepted")
        if inspect.scan.scanners:
            what.append("scanning with " + ", ".join(inspect.scan.scanners))
        if inspect.dlp:
            what.append(count(len(inspect.dlp), "DLP pattern"))
        summary += "; inspecting: " + ", ".join(what)
    elif inspect.enabled:
        summary += "; [inspect] applies to nothing: no [[redirect]] sends connections to the proxy"
    return summary

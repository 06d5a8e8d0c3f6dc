"""The callout registry: order by weight, verdicts, fail modes, budgets, counters;
loading callouts from files; the policy's program rules as a callout."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import pytest

from netwarden.callout.api import Callout, Connection, Layer, layers_of
from netwarden.callout.loading import CalloutLoadError, load_file
from netwarden.callout.program_rules import ProgramRules
from netwarden.callout.registry import CalloutRegistry, FailMode, Failure, LoadedCallout
from netwarden.model import Attribution, AttributionMethod, Endpoint, ProcessInfo, Transport
from netwarden.model.connect import (
    BLOCK,
    CONTINUE,
    PERMIT,
    Action,
    ConnectDirection,
    ConnectRequest,
    FlowPacket,
    StreamData,
    Verdict,
    redirect,
)
from netwarden.policy.environment import fake_environment
from netwarden.policy.loader import parse

CURL = ProcessInfo(pid=10, name="curl", exe="/usr/bin/curl", cmdline=("curl", "-s", "x"), uid=1000)


def connection(process: ProcessInfo | None = CURL, port: int = 443,
               transport: Transport = Transport.TCP) -> Connection:  # fmt: skip
    request = ConnectRequest(1, transport, ConnectDirection.OUT, Endpoint("10.0.0.1", 40000),
                             Endpoint("192.0.2.7", port), 1000)  # fmt: skip
    return Connection(request, process, Attribution(AttributionMethod.SOCKET_OWNER))


class Fixed(Callout):
    def __init__(self, name: str, verdict: Verdict | None, weight: int = 0) -> None:
        self.name, self.verdict, self.weight = name, verdict, weight
        self.asked = 0

    def classify(self, connection: Connection) -> Verdict | None:
        self.asked += 1
        return self.verdict


def registry(*callouts: object, mode: FailMode = FailMode.OPEN, budget: float = 0.05,
             failures: list[Failure] | None = None) -> CalloutRegistry:  # fmt: skip
    return CalloutRegistry([LoadedCallout(c, "test") for c in callouts], fail_mode=mode,
                           budget=budget, on_failure=failures.append if failures is not None
                           else None)  # fmt: skip


def test_callouts_are_asked_by_weight_until_one_decides() -> None:
    low, high, silent = Fixed("low", BLOCK, 1), Fixed("high", PERMIT, 5), Fixed("mute", None, 9)
    decision = registry(low, high, silent).classify(connection())
    assert (decision.verdict, decision.by) == (PERMIT, "high")
    assert (silent.asked, high.asked, low.asked) == (1, 1, 0)


def test_no_opinion_anywhere_continues_to_the_policy() -> None:
    decision = registry(Fixed("a", None), Fixed("b", CONTINUE)).classify(connection())
    assert decision.verdict is CONTINUE
    assert decision.by == ""


class Raising(Callout):
    def classify(self, connection: Connection) -> Verdict | None:
        raise RuntimeError("boom")


@pytest.mark.parametrize(("mode", "verdict"), [(FailMode.OPEN, PERMIT), (FailMode.CLOSED, BLOCK)])
def test_a_raising_callout_gives_the_fail_modes_verdict_and_is_counted(
    mode: FailMode, verdict: Verdict, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[Failure] = []
    reg = registry(Raising(), Fixed("later", BLOCK, -1), mode=mode, failures=failures)
    with caplog.at_level(logging.ERROR):
        decision = reg.classify(connection())
    assert decision.verdict == verdict
    assert "raised RuntimeError: boom" in decision.failure
    assert reg.loaded[0].stats.errors == 1
    assert failures[0].callout == "Raising"
    assert failures[0].layer is Layer.CONNECT
    assert "callout Raising at connect raised RuntimeError: boom" in caplog.text


class Slow(Callout):
    def classify(self, connection: Connection) -> Verdict | None:
        time.sleep(0.02)
        return PERMIT


def test_a_callout_over_its_budget_is_overruled_by_the_fail_mode() -> None:
    reg = registry(Slow(), mode=FailMode.CLOSED, budget=0.005)
    decision = reg.classify(connection())
    assert decision.verdict == BLOCK
    assert "budget 5 ms" in decision.failure
    assert reg.loaded[0].stats.overruns == 1


class Garbage(Callout):
    def classify(self, connection: Connection) -> Verdict | None:
        return "allow"  # type: ignore[return-value]


def test_a_callout_returning_no_verdict_fails() -> None:
    decision = registry(Garbage(), mode=FailMode.CLOSED).classify(connection())
    assert decision.verdict == BLOCK
    assert "not a verdict" in decision.failure


def test_counters_say_calls_and_verdicts() -> None:
    reg = registry(Fixed("p", PERMIT))
    for _ in range(3):
        reg.classify(connection())
    row = reg.to_json()[0]
    assert (row["calls"], row["verdicts"], row["layers"]) == (3, {"permit": 3}, ["connect"])


class FlowsOnly(Callout):
    def flow_deleted(self, flow: object) -> None:
        pass


def test_layers_are_the_hooks_a_callout_defines() -> None:
    assert layers_of(FlowsOnly()) == [Layer.FLOW_DELETED]
    assert layers_of(Fixed("x", None)) == [Layer.CONNECT]
    assert registry(FlowsOnly()).at(Layer.CONNECT) == []


def test_loading_a_file_takes_its_callouts_list(tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text("from netwarden.callout.api import Callout\n"
                    "class Mine(Callout):\n    weight = 7\n"
                    "    def classify(self, c):\n        return None\n"
                    "callouts = [Mine()]\n")  # fmt: skip
    (loaded,) = load_file(path)
    assert (loaded.name, loaded.weight, loaded.origin) == ("Mine", 7, str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = 1\n", "defines no `callouts` list"),
        ("callouts = 3\n", "must be a list"),
        ("class C:\n    def classify(self, c): pass\ncallouts = [C]\n", "list an instance"),
        ("class C:\n    pass\ncallouts = [C()]\n", "defines no hook"),
        ("raise ValueError('nope')\n", "loading it raised ValueError: nope"),
        ("def (:\n", "loading it raised SyntaxError"),
    ],
)
def test_a_bad_callout_file_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(CalloutLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_file(path)


def test_a_missing_callout_file() -> None:
    with pytest.raises(CalloutLoadError, match="no such file"):
        load_file(Path("/nonexistent/callouts.py"))


def policy(text: str) -> ProgramRules:
    return ProgramRules(parse(text, "p.toml", fake_environment()))


def test_program_rules_match_executable_globs_names_and_ports() -> None:
    rules = policy(
        '[[rule]]\naction = "block"\ndirection = "out"\nexe = "*/curl"\nport = 443\n'
        '[[rule]]\naction = "allow"\ndirection = "out"\nprocess = ["wget"]\n'
    )
    assert rules.classify(connection()) == BLOCK
    assert rules.classify(connection(port=80)) is None
    wget = ProcessInfo(pid=11, name="wget", exe="/usr/bin/wget")
    assert rules.classify(connection(wget)) == PERMIT
    assert rules.classify(connection(None)) is None  # an unknown process matches no program


def test_program_rules_by_digest_parent_and_command_line(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF pretend")
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    rules = policy(f'[[rule]]\naction = "block"\ndirection = "out"\nsha256 = "{digest.upper()}"\n'
                   '[[rule]]\naction = "block"\ndirection = "out"\ncmdline = "-s\\\\b"\n'
                   'parent_exe = "/usr/bin/bash"\n')  # fmt: skip
    tool = Connection(connection().request, ProcessInfo(pid=12, name="tool", exe=str(binary)),
                      Attribution(AttributionMethod.SOCKET_OWNER))  # fmt: skip
    tool_digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    assert tool_digest == digest
    # The digest is of the running process's executable (/proc/PID/exe): stand in for it.
    assert rules.classify(_with_digest(tool, digest)) == BLOCK
    bash = ProcessInfo(pid=1, name="bash", exe="/usr/bin/bash")
    child = connection()
    child.read_parent = lambda _pid: bash
    assert rules.classify(child) == BLOCK
    orphan = connection()
    orphan.read_parent = lambda _pid: None
    assert rules.classify(orphan) is None


def _with_digest(conn: Connection, digest: str) -> Connection:
    class Known(Connection):
        def exe_sha256(self) -> str:
            return digest

    return Known(conn.request, conn.process, conn.attribution)


def test_redirect_verdicts_name_their_target() -> None:
    verdict = redirect("127.0.0.1", 55555)
    assert verdict.action is Action.REDIRECT
    assert str(verdict) == "redirect to 127.0.0.1:55555"


class Watcher(Callout):
    def watch_packets(self, connection: Connection) -> bool:
        return connection.remote.port == 443

    def packet(self, packet: object) -> Verdict | None:
        return BLOCK


def test_packet_callouts_choose_connections_and_decide_their_packets() -> None:
    reg = registry(Watcher())
    assert reg.at(Layer.PACKET)
    assert reg.watches(connection(port=443))
    assert not reg.watches(connection(port=80))
    packet = FlowPacket(1, Transport.TCP, ConnectDirection.OUT, Endpoint("10.0.0.1", 4),
                        Endpoint("192.0.2.7", 443), 60, b"x")  # fmt: skip
    assert reg.classify_packet(packet).verdict == BLOCK


def test_interfaces_are_named() -> None:
    from netwarden.engine.connect import interface_name

    assert interface_name(1) == "lo"
    assert interface_name(0) == ""
    assert interface_name(2**31 - 1) == ""


def test_the_stream_example_finds_a_secret_split_across_pieces() -> None:
    (guard,) = load_file(Path(__file__).parents[2] / "examples/callouts/stream_secret_guard.py")
    assert guard.layers == [Layer.STREAM]
    reg = CalloutRegistry([guard])
    client, server = Endpoint("10.0.0.1", 40000), Endpoint("192.0.2.7", 80)

    def piece(data: bytes, outbound: bool = True, end: bool = False) -> Action:
        seen = StreamData(client, server, outbound, data, "http POST h", "POST", "h", "/", 0, end)
        return reg.classify_stream(seen).verdict.action

    assert piece(b"harmless TOP-") is Action.CONTINUE
    assert piece(b"SECRET and more") is Action.BLOCK
    assert piece(b"TOP-SECRET", outbound=False) is Action.CONTINUE  # answers are not checked
    assert piece(b"TOP-", end=True) is Action.CONTINUE
    assert piece(b"SECRET") is Action.CONTINUE  # a new body: the old tail is gone
    assert guard.stats.verdicts["block"] == 1

"""Ask prompts: held connections, answers, the timeout's default, remembered rules."""

from __future__ import annotations

import select
from pathlib import Path

import pytest

from netwarden.callout.api import Connection
from netwarden.callout.program_rules import ProgramRules
from netwarden.daemon.answers import AnswerKeeper
from netwarden.engine.bus import PromptChanged
from netwarden.engine.prompts import Answer, PromptBook, PromptError
from netwarden.model import Attribution, AttributionMethod, Endpoint, ProcessInfo, Transport
from netwarden.model.connect import ASK, BLOCK, PERMIT, ConnectDirection, ConnectRequest
from netwarden.policy.environment import fake_environment
from netwarden.policy.errors import PolicyError
from netwarden.policy.loader import load, parse

CURL = ProcessInfo(pid=42, name="curl", exe="/usr/bin/curl", uid=0)
ENV = fake_environment()
POLICY = """
[ask]
timeout = 5
default = "allow"

[[rule]]
name = "ask-web"
action = "ask"
direction = "out"
protocol = "tcp"
port = 80
"""


def request(port: int = 40000, remote: str = "192.0.2.7") -> ConnectRequest:
    return ConnectRequest(
        1, Transport.TCP, ConnectDirection.OUT, Endpoint("10.0.0.1", port), Endpoint(remote, 80)
    )


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_retransmitted_first_packet_joins_its_prompt_and_both_are_released() -> None:
    events: list[object] = []
    book = PromptBook(timeout=30, publish=events.extend)
    assert book.hold(request(), CURL, "policy")
    assert not book.hold(request(), CURL, "policy")  # the SYN again
    assert book.hold(request(remote="192.0.2.8"), CURL, "policy")  # elsewhere: asked too
    prompts = book.pending()
    assert [len(p.held) for p in prompts] == [2, 1]
    assert prompts[0].to_json()["program"] == "curl"
    assert prompts[0].to_json()["destination"] == "192.0.2.7:80"
    assert book.settled() == []
    book.answer(prompts[0].id, Answer(allow=True, by="test"))
    assert select.select([book], [], [], 0)[0]  # the CONNECT loop wakes
    (done,) = book.settled()
    assert done.answer is not None
    assert done.answer.verdict == PERMIT
    assert [p.id for p in book.pending()] == [prompts[1].id]
    states = [e.prompt["state"] for e in events if isinstance(e, PromptChanged)]
    assert states == ["open", "open", "allow once"]
    with pytest.raises(PromptError, match="no open prompt"):
        book.answer(done.id, Answer(allow=False))
    book.close()


def test_a_programs_connections_to_one_destination_share_the_open_question() -> None:
    events: list[object] = []
    book = PromptBook(timeout=30, publish=events.extend)
    assert book.hold(request(), CURL, "policy")
    assert not book.hold(request(port=40001), CURL, "policy")  # a second connection joins
    assert not book.hold(request(port=40001), CURL, "policy")  # and its retransmission
    other = ProcessInfo(pid=43, name="wget", exe="/usr/bin/wget", uid=0)
    assert book.hold(request(port=40002), other, "policy")  # another program: its own
    assert book.hold(request(port=40003), None, "policy")  # an unknown one: each asked
    assert book.hold(request(port=40004), None, "policy")
    first, *rest = book.pending()
    assert len(rest) == 3
    assert first.to_json()["connections"] == 2
    assert [r.local.port for r in first.held] == [40000, 40001, 40001]
    shown = [e.prompt for e in events if isinstance(e, PromptChanged)]
    assert [p["connections"] for p in shown if p["id"] == first.id] == [1, 2]
    book.answer(first.id, Answer(allow=False, by="test"))
    (done,) = book.settled()
    assert [r.local.port for r in done.joined] == [40001]
    assert book.hold(request(port=40005), CURL, "policy")  # answered: asked anew
    assert not book.hold(request(port=40005), CURL, "policy")
    book.close()


def test_an_always_answer_for_any_destination_settles_the_programs_other_prompts() -> None:
    book = PromptBook(timeout=30)
    for remote in ("192.0.2.7", "192.0.2.8", "192.0.2.9"):
        book.hold(request(remote=remote), CURL, "policy")
    wget = ProcessInfo(pid=43, name="wget", exe="/usr/bin/wget", uid=0)
    book.hold(request(port=40009), wget, "policy")
    first, second, third, theirs = book.pending()
    book.answer(first.id, Answer(allow=True, always=True, by="test"))  # this destination
    assert [p.id for p in book.pending()] == [second.id, third.id, theirs.id]
    book.answer(second.id, Answer(allow=True, always=True, any_destination=True, by="test"))
    assert [p.id for p in book.pending()] == [theirs.id]  # wget is still asked
    settled = {p.id: p.answer for p in book.settled()}
    assert settled[third.id] == Answer(allow=True, by=f"test, always for prompt {second.id}")
    book.close()


def test_the_default_answers_when_the_time_is_up() -> None:
    clock = Clock()
    book = PromptBook(timeout=30, clock=clock)
    book.hold(request(), CURL, "policy")
    assert book.next_deadline() == 130.0
    clock.now = 129.9
    assert book.settled() == []
    clock.now = 130.0
    (done,) = book.settled()
    assert done.answer is not None
    assert done.answer.verdict == BLOCK
    assert done.answer.by == "timeout"
    book.close()


def test_the_ask_section_and_ask_rules_are_checked() -> None:
    policy = parse(POLICY, "p.toml", ENV)
    assert policy.ask.timeout == 5.0
    assert str(policy.ask.default) == "allow"
    assert [r.name for r in policy.program_rules] == ["ask-web"]
    with pytest.raises(PolicyError) as error:
        parse(
            '[ask]\ntimeout = 0\ndefault = "maybe"\n[[rule]]\naction = "ask"\n'
            'direction = "forward"\n',
            "p.toml",
            ENV,
        )
    text = str(error.value)
    assert "p.toml:2: timeout is seconds" in text
    assert 'p.toml:3: default (after the timeout) is "allow" or "block"' in text
    assert "p.toml:5: ask holds tcp and udp connections in or out of this host" in text


def _connection(req: ConnectRequest) -> Connection:
    return Connection(req, CURL, Attribution(AttributionMethod.SOCKET_OWNER))


def test_an_always_answer_becomes_a_rule_that_decides_without_asking(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    policy = load(path, ENV)
    rules = ProgramRules(policy)
    assert rules.classify(_connection(request())) == ASK
    keeper = AnswerKeeper(policy, rules, ENV)
    book = PromptBook(remember=keeper.remember)
    book.hold(request(), CURL, "policy")
    (prompt,) = book.pending()
    answered = book.answer(prompt.id, Answer(allow=False, always=True, by="test"))
    assert answered.remembered.startswith("answer-")
    assert rules.classify(_connection(request(port=40002))) == BLOCK  # this destination
    assert rules.classify(_connection(request(remote="192.0.2.8"))) == ASK  # not another
    # The next daemon reads the answers first.
    reloaded = load(path, ENV)
    assert reloaded.answers == 1
    assert ProgramRules(reloaded).classify(_connection(request())) == BLOCK
    book.close()


def test_answers_that_are_not_program_rules_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    (tmp_path / "policy.answers.toml").write_text(
        '[[rule]]\naction = "allow"\ndirection = "out"\nport = 22\n'
    )
    with pytest.raises(PolicyError, match=r"policy.answers.toml:1: answers are rules by program"):
        load(path, ENV)

from __future__ import annotations

import pytest

from netwarden.policy.environment import fake_environment
from netwarden.policy.loader import parse
from netwarden.policy.matcher import FlowSyntaxError, decide, parse_flow
from netwarden.policy.model import Action

ENV = fake_environment(users={"alice": 1001}, services={"web.service": "system.slice/web.service"})
POLICY = parse(
    """
[defaults]
out = "allow"
in = "block"

[sets.bad]
addresses = ["192.0.2.0/24", "2001:db8::/32"]

[[rule]]
name = "log-all-dns"
action = "log"
direction = "out"
port = 53

[[rule]]
name = "bad-out"
action = "reject"
direction = "out"
to = ["@bad"]

[[rule]]
name = "alice-no-udp"
action = "block"
direction = "out"
protocol = "udp"
user = "alice"

[[rule]]
name = "web-in"
action = "allow"
direction = "in"
protocol = "tcp"
port = ["80", "8000-8010"]

[[rule]]
name = "web-service-local-only"
action = "block"
direction = "out"
service = "web.service"
to = ["0.0.0.0/0"]
""",
    "p.toml",
    ENV,
)


@pytest.mark.parametrize(
    ("flow", "action", "rule"),
    [
        ("tcp out 10.0.0.5:40000 -> 192.0.2.7:443", Action.REJECT, "bad-out"),
        ("tcp out [fd00::5]:40000 -> [2001:db8::7]:443", Action.REJECT, "bad-out"),
        ("tcp out 10.0.0.5:40000 -> 198.51.100.7:443", Action.ALLOW, None),
        ("udp out 10.0.0.5:40000 -> 198.51.100.7:53 user=alice", Action.BLOCK, "alice-no-udp"),
        ("udp out 10.0.0.5:40000 -> 198.51.100.7:53 uid=1002", Action.ALLOW, None),
        ("tcp in 198.51.100.7:40000 -> 10.0.0.5:8005", Action.ALLOW, "web-in"),
        ("tcp in 198.51.100.7:40000 -> 10.0.0.5:8011", Action.BLOCK, None),
        ("icmp in 198.51.100.7 -> 10.0.0.5", Action.BLOCK, None),
        (
            "tcp out 10.0.0.5:1 -> 198.51.100.7:80 service=web.service",
            Action.BLOCK,
            "web-service-local-only",
        ),
        ("tcp out [fd00::5]:1 -> [fd00::7]:80 service=web.service", Action.ALLOW, None),
    ],
)
def test_decisions(flow: str, action: Action, rule: str | None) -> None:
    decision = decide(POLICY, parse_flow(flow, ENV))
    assert decision.action is action
    assert (decision.rule.name if decision.rule else None) == rule


def test_log_rules_are_reported_and_do_not_decide() -> None:
    decision = decide(POLICY, parse_flow("udp out 10.0.0.5:4000 -> 198.51.100.7:53", ENV))
    assert [r.name for r in decision.logged] == ["log-all-dns"]
    assert decision.action is Action.ALLOW
    assert "default for out is allow" in decision.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp out 10.0.0.5 -> 192.0.2.7:443", "needs a port"),
        ("sctp out 10.0.0.5:1 -> 192.0.2.7:443", "protocol must be tcp, udp or icmp"),
        ("tcp up 10.0.0.5:1 -> 192.0.2.7:443", "direction must be"),
        ("tcp out 10.0.0.5:1 192.0.2.7:443", "a flow reads"),
        ("tcp out 10.0.0.5:1 -> [2001:db8::1]:443", "both be IPv4 or both IPv6"),
        ("tcp out 10.0.0.5:1 -> 192.0.2.7:443 colour=red", "unknown flow detail"),
        ("tcp out 10.0.0.5:1 -> 192.0.2.7:443 user=mallory", "unknown user"),
        ("tcp out 10.0.0.5:70000 -> 192.0.2.7:443", "the port must be from 1 to 65535"),
    ],
)
def test_flow_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(FlowSyntaxError, match=message):
        parse_flow(text, ENV)


REDIRECTING = parse(
    """
[settings]
proxy_port = 15001

[[redirect]]
name = "web"
port = 80
to = "proxy"

[[redirect]]
name = "gateway"
direction = "forward"
port = 8080
to = "10.0.0.1:3128"

[[rule]]
name = "no-proxy-for-alice"
action = "reject"
direction = "out"
port = 15001
user = "alice"
""",
    "r.toml",
    ENV,
)


def test_redirect_comes_first_and_the_filter_sees_the_new_destination() -> None:
    decision = decide(REDIRECTING, parse_flow("tcp out 10.0.0.5:1 -> 198.51.100.7:80", ENV))
    assert decision.redirect is not None
    assert decision.redirect.name == "web"
    assert decision.action is Action.ALLOW
    blocked = decide(REDIRECTING, parse_flow("tcp out 10.0.0.5:1 -> 198.51.100.7:80 user=alice",
                                             ENV))  # fmt: skip
    assert blocked.redirect is not None
    assert blocked.rule is not None
    assert blocked.rule.name == "no-proxy-for-alice"


def test_redirects_take_only_new_tcp_out_or_forward_flows() -> None:
    assert (
        decide(REDIRECTING, parse_flow("udp out 10.0.0.5:1 -> 198.51.100.7:80", ENV)).redirect
        is None
    )
    assert (
        decide(REDIRECTING, parse_flow("tcp in 10.0.0.5:1 -> 198.51.100.7:80", ENV)).redirect
        is None
    )
    forwarded = decide(REDIRECTING, parse_flow("tcp forward 10.0.0.5:1 -> 198.51.100.7:8080", ENV))
    assert forwarded.redirect is not None
    assert forwarded.redirect.name == "gateway"


def test_redirect_problems() -> None:
    from netwarden.policy.errors import PolicyError

    with pytest.raises(PolicyError) as caught:
        parse('[[redirect]]\nport = 80\nto = "nowhere"\ndirection = "in"\n', "r.toml", ENV)
    problems = [str(p) for p in caught.value.problems]
    assert any(p.startswith("r.toml:3: to:") for p in problems)
    assert any(p.startswith("r.toml:4: a redirect's direction is out or forward") for p in problems)


def test_marks_chain_redirects_and_the_proxy_mark_is_never_redirected() -> None:
    chain = parse(
        '[[redirect]]\nname = "first"\nport = 80\nmark = 0\nto = "127.0.0.1:15001"\n\n'
        '[[redirect]]\nname = "second"\nport = 80\nmark = 0x4e500002\nto = "127.0.0.1:15002"\n',
        "c.toml",
        ENV,
    )
    flow = "tcp out 10.0.0.5:1 -> 198.51.100.7:80"

    def taken_by(extra: str) -> str | None:
        rule = decide(chain, parse_flow(f"{flow} {extra}".strip(), ENV)).redirect
        return None if rule is None else rule.name

    assert taken_by("") == "first"
    assert taken_by("mark=0x4e500002") == "second"
    assert taken_by("mark=0x4e500001") is None  # the proxy mark: the loop guard
    assert taken_by("mark=7") is None

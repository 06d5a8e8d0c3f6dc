from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from netwarden.policy.environment import fake_environment
from netwarden.policy.errors import PolicyError
from netwarden.policy.loader import load, parse
from netwarden.policy.model import Action, CgroupMatch, Direction, PortRange, Protocol
from netwarden.policy.prefixes import PrefixTable, load_lines

ENV = fake_environment(users={"alice": 1001}, groups={"staff": 100},
                       services={"nginx.service": "system.slice/nginx.service"})  # fmt: skip


def _colliding_scopes() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for number in range(100_000):
        name = f"s{number}"
        mark = CgroupMatch("", "", name).mark(0)
        if mark in seen:
            return seen[mark], name
        seen[mark] = name
    raise AssertionError("no collision among 100,000 names")


COLLIDING = _colliding_scopes()


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse(text, "p.toml", ENV)
    return [str(p) for p in caught.value.problems]


def test_a_full_rule_is_read_into_values() -> None:
    policy = parse(
        """
[defaults]
in = "block"

[sets.lan]
addresses = ["10.0.0.0/8", "fd00::/8"]

[[rule]]
name = "web"
action = "allow"
direction = "out"
protocol = "tcp"
from = "@lan"
to = ["192.0.2.7", "2001:db8::/32"]
port = [80, "8000-8080"]
interface = "eth0"
user = "alice"
group = 100
service = "nginx.service"
""",
        "p.toml",
        ENV,
    )
    [rule] = policy.rules
    assert policy.defaults == {Direction.OUT: Action.ALLOW, Direction.IN: Action.BLOCK,
                               Direction.FORWARD: Action.ALLOW}  # fmt: skip
    assert (rule.name, rule.action, rule.direction, rule.protocol) == (
        "web",
        Action.ALLOW,
        Direction.OUT,
        Protocol.TCP,
    )
    assert rule.source.sets == ("lan",)
    assert rule.destination.networks == (
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert rule.destination_ports == (PortRange(80, 80), PortRange(8000, 8080))
    assert (rule.uid, rule.gid, rule.interface) == (1001, 100, "eth0")
    assert rule.cgroup is not None
    assert (rule.cgroup.path, rule.cgroup.level) == ("system.slice/nginx.service", 2)
    assert rule.line == 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[rule]]\naction = "allow"\n', "p.toml:1: the rule needs direction"),
        (
            '[[rule]]\naction = "permit"\ndirection = "out"\n',
            "p.toml:2: action must be one of allow, block, reject, log, redirect, ask, "
            "not 'permit'",
        ),
        (
            '[[rule]]\naction = "allow"\ndirection = "out"\nto = ["10.1.2.256"]\n',
            "p.toml:4: '10.1.2.256' is not an IP address or network",
        ),
        (
            '[[rule]]\naction = "allow"\ndirection = "out"\nport = "90-80"\n',
            "p.toml:4: '90-80' is not a port",
        ),
        ('[[rule]]\naction = "allow"\ndirection = "out"\nport = 0\n', "p.toml:4: 0 is not a port"),
        (
            '[[rule]]\naction = "allow"\ndirection = "out"\nprotocol = "icmp"\nport = 1\n',
            "p.toml:5: ports apply to tcp and udp, not icmp",
        ),
        (
            '[[rule]]\naction = "allow"\ndirection = "out"\nusr = "alice"\n',
            "p.toml:4: unknown key 'usr' in [rule] (did you mean 'user'?)",
        ),
        (
            '[[rule]]\naction = "allow"\ndirection = "out"\nuser = "mallory"\n',
            "p.toml:4: unknown user 'mallory'",
        ),
        (
            '[[rule]]\naction = "allow"\ndirection = "out"\ngroup = "nogroup"\n',
            "p.toml:4: unknown group 'nogroup'",
        ),
        (
            '[[rule]]\naction = "allow"\ndirection = "out"\nservice = "gone.service"\n',
            "p.toml:4: service 'gone.service' has no cgroup here",
        ),
        (
            '[[rule]]\naction = "allow"\ndirection = "in"\nuser = "alice"\n',
            "p.toml:4: user matches only outgoing traffic",
        ),
        (
            '[[rule]]\naction = "allow"\ndirection = "out"\nto = ["@nope"]\n',
            "p.toml:4: unknown set '@nope'",
        ),
        ('[defaults]\nout = "log"\n', "p.toml:2: default for out must be allow, block or reject"),
        ('[defaults]\nsideways = "allow"\n', "p.toml:2: unknown direction 'sideways'"),
        ('[settings]\ntable = "bad name"\n', "p.toml:2: table must be a name"),
        ("[settings]\nmark_base = 0x4E570001\n", "p.toml:2: mark_base must be a number"),
        (
            "[settings]\nmark_base = 0x4E500000\n",
            "p.toml:2: proxy_mark must lie outside the scope marks",
        ),
        (
            f'[[rule]]\naction = "block"\ndirection = "out"\nscope = "{COLLIDING[0]}"\n\n'
            f'[[rule]]\naction = "block"\ndirection = "out"\nscope = "{COLLIDING[1]}"\n',
            f"p.toml:6: scope {COLLIDING[0]} and scope {COLLIDING[1]} would share the mark",
        ),
        ("[sets.empty]\naddresses = []\n", "p.toml:1: set 'empty' is empty"),
        ("[rules]\nx = 1\n", "p.toml:1: unknown section 'rules' (did you mean 'rule'?)"),
        ('[[rule]\naction = "allow"\n', "p.toml:1: not valid TOML"),
    ],
)
def test_each_problem_is_one_sentence_with_its_line(text: str, expected: str) -> None:
    assert any(problem.startswith(expected) for problem in _problems(text)), _problems(text)


def test_every_problem_is_reported_not_only_the_first() -> None:
    problems = _problems('[[rule]]\naction = "x"\ndirection = "y"\nport = "z"\n')
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4"]


def test_set_file_problems_name_the_set_file(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("192.0.2.1\nnot-an-address\n# fine\n2001:db8::/33\n")
    (tmp_path / "p.toml").write_text('[sets.s]\nfile = "list.txt"\n')
    with pytest.raises(PolicyError) as caught:
        load(tmp_path / "p.toml", ENV)
    [problem] = caught.value.problems
    assert (
        str(problem)
        == f"{tmp_path / 'list.txt'}:2: 'not-an-address' is not an IP address or network"
    )


def test_large_set_file_loads(tmp_path: Path) -> None:
    lines = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(100_000)]
    (tmp_path / "big.txt").write_text("\n".join(lines))
    (tmp_path / "p.toml").write_text('[sets.big]\nfile = "big.txt"\n')
    policy = load(tmp_path / "p.toml", ENV)
    assert len(policy.sets["big"]) == 100_000
    assert ipaddress.ip_address("10.1.134.159") in policy.sets["big"]
    assert ipaddress.ip_address("10.1.134.160") not in policy.sets["big"]


def test_unreadable_policy_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy"):
        load(tmp_path / "missing.toml", ENV)


@pytest.mark.parametrize(
    "text", ["10.1.2.3", "10.1.2.3/8", "0.0.0.0/0", "255.255.255.255/32", "2001:db8::/32"]
)
def test_fast_network_parser_agrees_with_ipaddress(text: str) -> None:
    v4, v6 = PrefixTable(4), PrefixTable(6)
    assert load_lines(f"# a comment\n{text}  # why\n\n", v4, v6) == []
    network = ipaddress.ip_network(text, strict=False)
    table = v4 if network.version == 4 else v6
    assert list(table.networks()) == [network]


@pytest.mark.parametrize("text", ["256.1.1.1", "1.2.3.4/33", "01.2.3.4", "1.2.3", "1.2.3.4/"])
def test_fast_network_parser_refuses_what_ipaddress_refuses(text: str) -> None:
    v4, v6 = PrefixTable(4), PrefixTable(6)
    assert load_lines(f"10.0.0.1\n{text}\n", v4, v6) == [(2, text)]
    assert len(v4) == 1


CHAIN = """
[[redirect]]
name = "apps-to-scanner"
port = 80
mark = 0
to = "127.0.0.1:15002"
target_mark = 0x4e500002

[[redirect]]
name = "scanner-to-dlp"
port = 80
mark = 0x4e500002
to = "127.0.0.1:15003"
target_mark = {dlp_mark}
"""


def test_a_chain_of_proxies_that_ends_is_accepted() -> None:
    policy = parse(CHAIN.format(dlp_mark="0x4e500001"), "p.toml", ENV)  # the guard mark
    assert [r.target.mark for r in policy.redirects if r.target] == [0x4E500002, 0x4E500001]


def test_a_chain_of_proxies_that_comes_back_is_refused() -> None:
    looping = CHAIN.format(dlp_mark="0x4e500003") + (
        '\n[[redirect]]\nname = "dlp-back-to-scanner"\nport = 80\nmark = 0x4e500003\n'
        'to = "127.0.0.1:15002"\ntarget_mark = 0x4e500002\n'
    )
    [problem] = _problems(looping)
    assert problem.startswith("p.toml:9: these redirects loop: 'scanner-to-dlp' sends")
    assert "'dlp-back-to-scanner' sends connections to 127.0.0.1:15002" in problem


def test_a_proxy_whose_own_connections_it_would_take_again_is_refused() -> None:
    text = ('[[redirect]]\nname = "all-web"\nport = 443\nto = "127.0.0.1:15002"\n'
            "target_mark = 0x4e500002\n")  # fmt: skip
    [problem] = _problems(text)
    assert (
        "'all-web' sends connections to 127.0.0.1:15002, whose own connections carry "
        "mark 0x4e500002; and 'all-web' takes those again" in problem
    )


def test_rules_that_cannot_meet_one_connection_do_not_loop() -> None:
    text = CHAIN.format(dlp_mark="0x4e500003") + (
        '\n[[redirect]]\nname = "dlp-443-back"\nport = 443\nmark = 0x4e500003\n'
        'to = "127.0.0.1:15002"\ntarget_mark = 0x4e500002\n'
    )
    assert len(parse(text, "p.toml", ENV).redirects) == 3  # port 80 never reaches port 443


@pytest.mark.parametrize(
    "text",
    [
        '[[rule]]\nname = "x"\nport = [80,\n  443\n',
        '[[rule]]\nname = "x # not a comment"\nport = [80, 443\n',
        '[[rule]]\nname = "x"\nport = [80,\n  443\naction = "block"\n',
    ],
)
def test_an_unclosed_array_points_at_the_line_that_opened_it(text: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse(text, "p.toml", fake_environment())
    assert str(raised.value).startswith("p.toml:3: not valid TOML: the [ opened here")

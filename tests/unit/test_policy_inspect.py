"""The policy's [inspect] section: read into values, refused with file:line when wrong."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from netwarden.inspect.http_rules import blocked_by_content, decide_request, rewritten
from netwarden.policy.environment import fake_environment
from netwarden.policy.errors import PolicyError
from netwarden.policy.inspect_model import BlockResponse, HttpAction, host_matches
from netwarden.policy.loader import parse

ENV = fake_environment()

GOOD = """\
[inspect]
intercept_tls = true
passthrough = ["*.bank.example", "10.0.0.0/8", "pinned.example"]
pinning_memory = 60

[[inspect.http]]
name = "tag"
action = "rewrite"
set_request_headers = { "X-Seen" = "1" }
remove_response_headers = ["Server"]

[[inspect.http]]
name = "no-ads"
action = "block"
host = ["*.ads.example"]
method = ["get", "POST"]
path_prefix = ["/track"]
respond = "reset"

[[inspect.http]]
name = "no-video"
action = "block"
content_type = ["video/*"]

[[inspect.http]]
name = "docs"
action = "allow"
path_regex = "^/docs/"
"""


def test_the_section_is_read_into_values() -> None:
    inspect = parse(GOOD, "p.toml", ENV).inspect
    assert inspect.enabled
    assert inspect.intercept_tls
    assert inspect.pinning_memory == 60.0
    assert inspect.passthrough_hosts == ("*.bank.example", "pinned.example")
    assert inspect.passthrough_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert inspect.passes_through("www.bank.example", "192.0.2.1")
    assert inspect.passes_through("", "10.1.2.3")
    assert not inspect.passes_through("bank.example", "192.0.2.1")  # *. is subdomains only
    tag, ads, _video, docs = inspect.http
    assert (tag.action, ads.action, docs.action) == (
        HttpAction.REWRITE,
        HttpAction.BLOCK,
        HttpAction.ALLOW,
    )
    assert ads.methods == ("GET", "POST")
    assert ads.respond is BlockResponse.RESET
    assert ads.line == 12  # the [[inspect.http]] header of the rule


def test_rules_decide_requests_in_order() -> None:
    rules = parse(GOOD, "p.toml", ENV).inspect.http
    ads = decide_request(rules, "GET", "x.ads.example", "/track/1")
    assert ads.blocked_by is not None
    assert ads.blocked_by.name == "no-ads"
    assert [r.name for r in ads.rewrites] == ["tag"]
    assert decide_request(rules, "PUT", "x.ads.example", "/track/1").blocked_by is None
    later = decide_request(rules, "GET", "www.example", "/watch")
    assert blocked_by_content(later, "video/mp4; codecs=avc1") is not None
    assert blocked_by_content(later, "text/html") is None
    docs = decide_request(rules, "GET", "www.example", "/docs/a")
    assert docs.allowed_by is not None
    headers = rewritten([(b"Server", b"x"), (b"Host", b"h")], [((), ("server",))])
    assert headers == [(b"Host", b"h")]


def test_host_patterns() -> None:
    assert host_matches("*", "anything.example")
    assert host_matches("example.com", "EXAMPLE.com.")
    assert host_matches("*.example.com", "a.b.example.com")
    assert not host_matches("*.example.com", "example.com")
    assert not host_matches("example.com", "notexample.com")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[inspect]\nintercept = true\n", "p.toml:2: unknown key 'intercept' in [inspect]"),
        ("[inspect]\nintercept_tls = 1\n", "p.toml:2: intercept_tls must be true or false"),
        ("[inspect]\npassthrough = ['bad host!']\n",
         "p.toml:2: passthrough entry 'bad host!' is not a host, *.domain or network"),
        ("[inspect]\nupstream_ca = '/nonexistent/ca.pem'\n",
         "p.toml:2: upstream_ca '/nonexistent/ca.pem' is not a readable file"),
        ("[inspect]\npinning_memory = 0\n",
         "p.toml:2: pinning_memory must be a number of seconds above 0, not 0"),
        ("[[inspect.http]]\naction = 'deny'\n",
         "p.toml:2: action must be one of allow, block, rewrite, not 'deny'"),
        ("[[inspect.http]]\naction = 'block'\npath_regex = '(('\n",
         "p.toml:3: path_regex does not compile: missing ), unterminated subpattern at "
         "position 1"),
        ("[[inspect.http]]\naction = 'block'\npath_prefix = ['nope']\n",
         "p.toml:3: path_prefix 'nope' is not a path starting with /"),
        ("[[inspect.http]]\naction = 'block'\ncontent_type = ['video']\n",
         "p.toml:3: content_type 'video' is not a media type (type/sub)"),
        ("[[inspect.http]]\naction = 'allow'\ncontent_type = ['video/*']\n",
         "p.toml:3: content_type is for block rules (a response is blocked by its type)"),
        ("[[inspect.http]]\naction = 'block'\nrespond = 'silence'\n",
         "p.toml:3: respond must be page or reset, not 'silence'"),
        ("[[inspect.http]]\naction = 'rewrite'\nset_request_headers = { 'X-A' = \"a\\r\\nb\" }\n",
         "p.toml:3: set_request_headers: 'X-A' = 'a\\r\\nb' is not a header and its value"),
        ("[[inspect.http]]\naction = 'block'\nhots = ['a']\n",
         "p.toml:3: unknown key 'hots' in [[inspect.http]]"),
    ],
)  # fmt: skip
def test_each_problem_is_one_sentence_with_its_line(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(text, "p.toml", ENV)
    assert expected in [str(p) for p in caught.value.problems]


def test_an_upstream_ca_is_found_beside_the_policy(tmp_path: Path) -> None:
    (tmp_path / "private-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = "[inspect]\nupstream_ca = 'private-ca.pem'\n"
    inspect = parse(text, str(tmp_path / "p.toml"), ENV, base=tmp_path).inspect
    assert inspect.upstream_ca == str(tmp_path / "private-ca.pem")


def test_the_example_policy_is_valid_and_means_what_it_says() -> None:
    example = Path(__file__).parents[2] / "examples" / "policies" / "inspect.toml"
    policy = parse(example.read_text(), str(example), ENV, base=example.parent)
    rules = policy.inspect.http
    assert policy.inspect.intercept_tls
    assert decide_request(rules, "GET", "x.ads.example", "/").blocked_by is not None
    assert decide_request(rules, "GET", "dl.example", "/setup.EXE").blocked_by is None
    assert decide_request(rules, "GET", "dl.example", "/setup.exe").blocked_by is not None
    later = decide_request(rules, "GET", "dl.example", "/download?id=3")
    assert blocked_by_content(later, "application/x-msdownload") is not None
    assert policy.inspect.passes_through("www.bank.example", "203.0.113.5")

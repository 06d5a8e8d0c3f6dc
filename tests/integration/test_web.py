"""The control API of `netwarden up` and ask prompts, with real connections held at
their first packet and answered from the terminal (`netwarden prompts`)."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from netwarden.testing import web
from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_up

pytestmark = pytest.mark.root

ASK = """
[ask]
timeout = {timeout}
default = "block"

[[rule]]
name = "ask-web"
action = "ask"
direction = "out"
protocol = "tcp"
port = 80
"""


def _netwarden(host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return host.run([PY, "-m", "netwarden", *args], check=check)


def _open_prompt(host: Host, program: str, seconds: float = 10) -> int:
    """The id of the open prompt naming the program, once it is there."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        listing = _netwarden(host, "prompts").stdout
        found = re.search(rf"^\[(\d+)\] {program} \(pid \d+", listing, re.M)
        if found:
            return int(found.group(1))
        time.sleep(0.2)
    raise AssertionError(f"no prompt for {program}: {listing!r}")


def _curl(host: Host, url: str) -> subprocess.Popen[str]:
    argv = ["curl", "-sS", "--max-time", "12", "-o", "/dev/null", "-w", "%{http_code}", url]
    return host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_held_connection_completes_when_allowed_once_and_fails_when_denied(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    web.start(server, 80)
    policy = tmp_path / "policy.toml"
    policy.write_text(ASK.format(timeout=20))
    daemon, _said = start_up(client, policy, "--no-history")
    flow = f"tcp out 10.0.0.1:40000 -> {server.ipv4}:80"
    assert "ask" in _netwarden(client, "policy", "test", str(policy), "--flow", flow).stdout
    url = f"http://{server.ipv4}/marker"

    allowed = _curl(client, url)
    prompt = _open_prompt(client, "curl")
    time.sleep(1.5)  # held: the client waits (its SYN retransmits join the same prompt)
    assert allowed.poll() is None
    assert "allow once" in _netwarden(client, "prompts", "answer", str(prompt), "allow").stdout
    out, _err = allowed.communicate(timeout=15)
    assert out == "200"

    # The program's connections to one destination while it is asked: one question.
    both = [_curl(client, url), _curl(client, url)]
    prompt = _open_prompt(client, "curl")
    deadline = time.monotonic() + 10
    while "2 connections waiting" not in (listing := _netwarden(client, "prompts").stdout):
        assert time.monotonic() < deadline, listing
        time.sleep(0.2)
    assert listing.count("curl (pid") == 1, listing
    _netwarden(client, "prompts", "answer", str(prompt), "allow")
    assert [held.communicate(timeout=15)[0] for held in both] == ["200", "200"]

    denied = _curl(client, url)
    prompt = _open_prompt(client, "curl")
    _netwarden(client, "prompts", "answer", str(prompt), "deny")
    out, _err = denied.communicate(timeout=15)
    assert denied.returncode != 0
    assert out != "200"
    again = _netwarden(client, "prompts", "answer", str(prompt), "allow", check=False)
    assert again.returncode == 1
    assert "no open prompt" in again.stderr

    # Asked again each time: nothing was remembered.
    third = _curl(client, url)
    _open_prompt(client, "curl")
    third.kill()
    client.run([PY, "-m", "netwarden", "down"])
    daemon.communicate(timeout=20)


def test_always_writes_a_rule_and_the_default_answers_after_the_timeout(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    web.start(server, 80)
    policy = tmp_path / "policy.toml"
    policy.write_text(ASK.format(timeout=2))
    daemon, _said = start_up(client, policy, "--no-history")
    url = f"http://{server.ipv4}/marker"

    unanswered = _curl(client, url)
    _open_prompt(client, "curl")
    out, _err = unanswered.communicate(timeout=15)  # blocked after 2 s by the default
    assert unanswered.returncode != 0
    assert out != "200"

    first = _curl(client, url)
    prompt = _open_prompt(client, "curl")
    answered = _netwarden(client, "prompts", "answer", str(prompt), "allow", "--always").stdout
    assert "remembered as rule answer-" in answered
    assert first.communicate(timeout=15)[0] == "200"
    answers = tmp_path / "policy.answers.toml"
    assert 'exe = "' in answers.read_text()
    assert f'to = ["{server.ipv4}"]' in answers.read_text()
    # Not asked again: the remembered rule decides, in this daemon and the next.
    assert client.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url]).stdout == "200"
    client.run([PY, "-m", "netwarden", "down"])
    daemon.communicate(timeout=20)
    daemon, _said = start_up(client, policy, "--no-history")
    assert client.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url]).stdout == "200"
    assert "no open prompts" in _netwarden(client, "prompts").stdout
    client.run([PY, "-m", "netwarden", "down"])
    daemon.communicate(timeout=20)


def test_the_api_wants_its_token_and_stays_on_this_host(
    pair: tuple[Host, Host], tmp_path: Path, own_state_dir: Path
) -> None:
    client, server = pair
    policy = tmp_path / "policy.toml"
    policy.write_text(ASK.format(timeout=5))
    daemon, _said = start_up(client, policy, "--no-history", "--web")
    token = (own_state_dir / "api-token").read_text().strip()
    assert stat.S_IMODE((own_state_dir / "api-token").stat().st_mode) == 0o600
    sockets = list(Path("/run/netwarden").glob("api-net*.sock"))
    assert sockets
    assert all(stat.S_IMODE(s.stat().st_mode) == 0o600 for s in sockets)

    def status(*args: str) -> str:
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args]
        return client.run(argv, check=False).stdout

    api = "http://127.0.0.1:8470/api/flows"
    assert status(api) == "401"
    assert status("-H", "Authorization: Bearer wrong", api) == "401"
    assert status("-H", f"Authorization: Bearer {token}", api) == "200"
    assert status("-H", f"Authorization: Bearer {token}", "-H", "Host: evil.example", api) == "403"
    # The dashboard's cookie: set by /login, and changes need the CSRF header too.
    jar = tmp_path / "jar"
    assert status("-c", str(jar), f"http://127.0.0.1:8470/login?token={token}") == "303"
    assert status("-b", str(jar), "http://127.0.0.1:8470/") == "200"
    answer = ["-X", "POST", "-H", "Content-Type: application/json", "-d", '{"action":"allow"}']
    assert status("-b", str(jar), *answer, "http://127.0.0.1:8470/api/prompts/1") == "403"
    csrf = ("-H", "X-Netwarden-CSRF: 1")
    assert status("-b", str(jar), *csrf, *answer, "http://127.0.0.1:8470/api/prompts/1") == "409"
    header = f"X-Netwarden-Token: {token}"
    schema = client.run(["curl", "-s", "-H", header, "http://127.0.0.1:8470/openapi.json"]).stdout
    paths = json.loads(schema)["paths"]
    assert {"/api/flows", "/api/events", "/api/prompts/{prompt_id}", "/api/policy/apply"} <= set(
        paths
    )
    # Another namespace reaches no API: it listens on loopback only.
    elsewhere = f"http://{client.ipv4}:8470/"
    reach = server.run(["curl", "-s", "--max-time", "3", elsewhere], check=False)
    assert reach.returncode != 0
    client.run([PY, "-m", "netwarden", "down"])
    daemon.communicate(timeout=20)
    assert not list(Path("/run/netwarden").glob("api-net*.sock"))


def test_the_policy_is_shown_tested_and_applied_through_the_api(
    pair: tuple[Host, Host], tmp_path: Path, own_state_dir: Path
) -> None:
    client, server = pair
    web.start(server, 80)
    policy = tmp_path / "policy.toml"
    policy.write_text(ASK.format(timeout=5))
    daemon, _said = start_up(client, policy, "--history", str(tmp_path / "h.sqlite"), "--web")
    token = (own_state_dir / "api-token").read_text().strip()

    def api(method: str, path: str, body: object = None) -> tuple[int, object]:
        auth = f"Authorization: Bearer {token}"
        argv = ["curl", "-s", "-w", "\\n%{http_code}", "-X", method, "-H", auth]
        argv += ["-H", "Content-Type: application/json"]
        if body is not None:
            argv += ["-d", json.dumps(body)]
        out = client.run([*argv, f"http://127.0.0.1:8470{path}"]).stdout
        text, _newline, code = out.rpartition("\n")
        return int(code), json.loads(text)

    status, shown = api("GET", "/api/policy")
    assert status == 200
    assert isinstance(shown, dict)
    assert shown["text"] == policy.read_text()
    assert [r["rule"] for r in shown["connect_rules"]] == ["ask-web"]
    flow = {"flow": f"tcp out 10.0.0.1:40000 -> {server.ipv4}:22"}
    assert api("POST", "/api/policy/test", flow)[1]["action"] == "allow"  # type: ignore[index]

    blocking = policy.read_text() + (
        '\n[[rule]]\nname = "no-ssh"\naction = "reject"\ndirection = "out"\nport = 22\n'
    )
    status, dry = api("POST", "/api/policy/apply", {"text": blocking, "dry_run": True})
    assert status == 200
    assert isinstance(dry, dict)
    assert dry["added"] == ["no-ssh"]
    assert "+port = 22" in dry["diff"]
    assert not dry["applied"]
    assert "no-ssh" not in policy.read_text()  # a dry run changes nothing
    status, done = api("POST", "/api/policy/apply", {"text": blocking, "dry_run": False})
    assert (status, done["applied"]) == (200, True)  # type: ignore[index]
    assert "no-ssh" in policy.read_text()
    assert api("POST", "/api/policy/test", flow)[1]["action"] == "reject"  # type: ignore[index]
    refused = client.run(
        ["curl", "-s", "--max-time", "3", f"http://{server.ipv4}:22/"], check=False
    )
    assert refused.returncode == 7  # refused at once by the rule now in the kernel

    status, problems = api("POST", "/api/policy/apply", {"text": "[[rule]]\n", "dry_run": True})
    assert status == 422
    assert "the rule needs action" in json.dumps(problems)
    retimed = blocking.replace("timeout = 5", "timeout = 9")
    status, restart = api("POST", "/api/policy/apply", {"text": retimed, "dry_run": False})
    assert status == 422
    assert "restarting netwarden up: ask changed" in json.dumps(restart)
    assert api("GET", "/api/history?limit=5")[0] == 200
    status, callouts = api("GET", "/api/callouts")
    assert status == 200
    assert isinstance(callouts, dict)
    assert "callouts" in callouts
    status, doctor = api("GET", "/api/doctor")
    assert status == 200
    assert isinstance(doctor, list)
    assert any(c["name"] == "nftables" for c in doctor)
    # as root here: netwarden's BPF programs load and name a probe
    ready = {c["name"]: c["available"] for c in doctor}
    assert ready["exec records"], doctor
    assert ready["connect owners"], doctor
    client.run([PY, "-m", "netwarden", "down"])
    daemon.communicate(timeout=20)

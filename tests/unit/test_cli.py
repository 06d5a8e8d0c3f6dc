from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netwarden.cli.app import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("monitor", "--once", "--watch"), "exclude each other"),
        (("monitor", "--once", "--filter", "colour:red"), "unknown filter"),
        (("monitor", "--once", "--netns", "no-such-ns-here"), "does not exist"),
        (("monitor", "--once", "--netns", "../etc"), "not a network namespace name"),
        (("monitor",), "needs a terminal"),
        (("history", "--db", "/nonexistent/h.sqlite"), "no history at"),
        (("history", "--port", "70000"), "70000"),
        (("history", "--limit", "-1"), "-1"),
        (("history", "--host", "example.org"), "not an IP address or network"),
        (("monitor", "--once", "--filter", "port:99999"), "from 0 to 65535"),
        (("callouts", "list", "--file", "/nonexistent/c.py"), "no such file"),
        (("up", "--policy", "/dev/null", "--fail-mode", "sideways"), "open or closed"),
    ],
)
def test_user_errors_exit_2_with_one_clear_sentence(args: tuple[str, ...], message: str) -> None:
    code, output = _run(*args)
    assert code == 2
    assert message in output
    assert "Traceback" not in output


def test_history_rejects_a_bad_time(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    from netwarden.monitor.history import HistoryStore

    HistoryStore(db).close()
    code, output = _run("history", "--db", str(db), "--since", "yesterday")
    assert code == 2
    assert "--since takes an ISO time" in output
    code, output = _run("history", "--db", str(db), "--since", "2h", "--format", "json")
    assert code == 0
    assert json.loads(output) == []


def test_help_teaches_with_examples() -> None:
    code, output = _run("monitor", "--help")
    assert code == 0
    assert "--once" in output
    assert "netwarden monitor --watch" in output


def test_once_json_lists_sockets_of_this_host() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code, output = _run("monitor", "--once", "--format", "json", "--filter", f"port:{port}")
    assert code == 0
    document = json.loads(output)
    [flow] = document["flows"]
    assert flow["state"] == "LISTEN"
    import os

    assert flow["process"]["pid"] == os.getpid()
    assert flow["attribution"] == "socket-owner"


def test_doctor_json_names_every_mechanism() -> None:
    code, output = _run("doctor", "--json")
    assert code == 0
    names = {item["name"] for item in json.loads(output)}
    assert {"nftables", "nft queue", "iptables NFQUEUE", "conntrack events",
            "sock_diag destroy events", "cgroup v2", "BTF", "privileges",
            "flow events", "native monitor"} <= names  # fmt: skip


def test_policy_check_help_names_every_section() -> None:
    code, output = _run("policy", "check", "--help")
    assert code == 0
    for section in ("[settings]", "[defaults]", "[sets.NAME]", "[[rule]]", "[[redirect]]"):
        assert section in output


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["monitor", "--once", "--format", "json"], (None,)),
        (["monitor", "--format=json", "--once", "--netns", "lab1"], ("lab1",)),
        (["monitor", "--netns=lab1", "--once", "--format", "json"], ("lab1",)),
        (["monitor", "--once"], None),  # a table: the full command line
        (["monitor", "--once", "--format", "table"], None),
        (["monitor", "--once", "--format", "json", "--filter", "tcp"], None),
        (["monitor", "--once", "--format", "json", "--help"], None),
        (["monitor", "--once", "--format", "json", "--netns"], None),
        (["monitor", "--once", "--once", "--format", "json"], None),
        (["history", "--once", "--format", "json"], None),
    ],
)
def test_only_the_plain_json_listing_skips_the_option_parser(
    argv: list[str], expected: tuple[str | None] | None
) -> None:
    from netwarden.cli.entry import plain_json_listing

    assert plain_json_listing(argv) == expected


def test_the_json_listing_of_a_missing_namespace_is_one_clear_sentence() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "netwarden", "monitor", "--once", "--format", "json",
         "--netns", "no-such-ns-here"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("netwarden: ")
    assert "does not exist" in result.stderr
    assert result.stdout == ""


def test_an_option_spelled_otherwise_gets_the_right_spelling() -> None:
    from netwarden.cli.app import _spelled_otherwise

    assert _spelled_otherwise(["monitor", "--once", "--json"]) == (
        "--json is not an option of `netwarden monitor`: use --format json"
    )
    assert _spelled_otherwise(["monitor", "--once", "--format", "json"]) is None


def test_help_paragraphs_are_not_broken_mid_sentence() -> None:
    from netwarden.cli.app import reflow

    doc = """First line
    goes on here.

    Examples:\n
      netwarden monitor\n
      netwarden up
    """
    assert reflow(doc) == (
        "First line goes on here.\n\nExamples:\n\n  netwarden monitor\n\n  netwarden up"
    )
    code, output = _run("--help")
    assert code == 0
    assert "program rules and the callouts given" in " ".join(output.split())


def test_the_ca_is_made_once_shown_exported_and_its_key_kept_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETWARDEN_STATE_DIR", str(tmp_path))
    code, output = _run("ca", "show")
    assert code == 1
    assert "netwarden ca init" in output
    code, output = _run("ca", "init")
    assert code == 0
    assert "update-ca-certificates" in output  # how to trust it
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    fingerprint = json.loads(_run("ca", "show", "--json")[1])["sha256"]
    code, output = _run("ca", "init")
    assert "exists already" in output
    assert fingerprint in output  # not replaced without --force
    code, output = _run("ca", "export")
    assert output.startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE" not in output
    der = tmp_path / "ca.der"
    assert _run("ca", "export", "--der", "--output", str(der))[0] == 0
    assert der.read_bytes()[0] == 0x30  # an ASN.1 sequence
    assert _run("ca", "init", "--force")[0] == 0
    assert json.loads(_run("ca", "show", "--json")[1])["sha256"] != fingerprint
    code, output = _run("ca", "passthrough", "list")
    assert "no host is passed through" in output
    assert _run("ca", "passthrough", "clear")[1].strip() == "forgot 0 hosts"


def test_interception_without_a_ca_is_one_sentence_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETWARDEN_STATE_DIR", str(tmp_path / "state"))
    policy = tmp_path / "p.toml"
    policy.write_text("[inspect]\nintercept_tls = true\n")
    code, output = _run("proxy", "--listen", "127.0.0.1:15999", "--policy", str(policy))
    assert code == 1
    assert "intercept_tls needs netwarden's CA" in output
    assert "netwarden ca init" in output
    assert "Traceback" not in output

"""The brief's example in netlab: connections to port 80 reach a local server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from netwarden.testing.netlab import Host
from tests.integration.conftest import PY

pytestmark = pytest.mark.root


def _curl(host: Host, url: str) -> subprocess.CompletedProcess[str]:
    return host.run(["curl", "-sS", "-i", "--max-time", "5", url], check=False)


@pytest.fixture
def web(pair: tuple[Host, Host]) -> tuple[Host, Host]:
    client, remote = pair
    for port in (80, 8080):
        proc = remote.popen([PY, "-u", "-m", "http.server", str(port), "--bind", "::"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        assert proc.stdout is not None
        assert "Serving HTTP" in proc.stdout.readline()  # once it listens
    hello = client.popen([PY, "-m", "netwarden.testing.hello_server", "--port", "55555"],
                         stdout=subprocess.PIPE)  # fmt: skip
    assert hello.stdout is not None
    assert "listening" in hello.stdout.readline()
    return client, remote


def test_port_80_goes_to_the_local_server_until_down(web: tuple[Host, Host]) -> None:
    client, remote = web
    remote_v4, remote_v6 = f"http://{remote.ipv4}/", f"http://[{remote.ipv6}]/"
    assert "Hello from local server" not in _curl(client, remote_v4).stdout

    client.run([PY, "-m", "netwarden", "redirect", "--dport", "80",
                "--to", "127.0.0.1:55555", "--to", "[::1]:55555"])  # fmt: skip
    v4 = _curl(client, remote_v4)
    assert "Hello from local server" in v4.stdout
    assert f"X-Original-Destination: {remote.ipv4}:80" in v4.stdout
    v6 = _curl(client, remote_v6)
    assert "Hello from local server" in v6.stdout
    assert f"X-Original-Destination: [{remote.ipv6}]:80" in v6.stdout
    other_port = _curl(client, f"http://{remote.ipv4}:8080/")
    assert other_port.returncode == 0
    assert "Hello from local server" not in other_port.stdout
    assert "SimpleHTTP" in other_port.stdout  # the remote server answered

    client.run([PY, "-m", "netwarden", "down"])
    after = _curl(client, remote_v4)
    assert after.returncode == 0
    assert "Hello from local server" not in after.stdout
    assert "SimpleHTTP" in after.stdout
    assert client.run(["nft", "list", "tables"]).stdout.strip() == ""


def test_marked_connections_are_not_redirected(web: tuple[Host, Host]) -> None:
    """The loop guard: a proxy marks its upstream sockets and reaches the real server."""
    client, remote = web
    client.run([PY, "-m", "netwarden", "redirect", "--dport", "80", "--to", "127.0.0.1:55555"])
    marked = client.run([PY, "-c", (
        "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_MARK,"
        f"0x4E500001);s.connect(('{remote.ipv4}',80));s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n');"
        "print(s.recv(200).decode(errors='replace'))"
    )])  # fmt: skip
    assert "SimpleHTTP" in marked.stdout
    assert "Hello from local server" in _curl(client, f"http://{remote.ipv4}/").stdout


def test_bad_redirect_arguments_change_nothing(pair: tuple[Host, Host]) -> None:
    client, _remote = pair
    for args in (["--dport", "80", "--to", "127.0.0.1"], ["--dport", "0", "--to", "127.0.0.1:1"],
                 ["--dport", "80", "--to", "localhost:1"]):  # fmt: skip
        result = client.run([PY, "-m", "netwarden", "redirect", *args], check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("netwarden: --")
    assert client.run(["nft", "list", "tables"]).stdout.strip() == ""


def test_redirect_rules_in_the_policy_file(web: tuple[Host, Host], tmp_path: Path) -> None:
    client, remote = web
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[[redirect]]\nname = "web-v4"\nport = 80\nto = "127.0.0.1:55555"\n\n'
        '[[redirect]]\nname = "web-v6"\nport = 80\nto = "[::1]:55555"\n\n'
        '[[rule]]\nname = "no-8080"\naction = "reject"\ndirection = "out"\nport = 8080\n'
    )
    client.run([PY, "-m", "netwarden", "policy", "apply", str(policy)])
    v4 = _curl(client, f"http://{remote.ipv4}/")
    assert "Hello from local server" in v4.stdout
    assert f"X-Original-Destination: {remote.ipv4}:80" in v4.stdout
    assert "Hello from local server" in _curl(client, f"http://[{remote.ipv6}]/").stdout
    assert _curl(client, f"http://{remote.ipv4}:8080/").returncode != 0  # the filter still holds
    shown = json.loads(client.run([PY, "-m", "netwarden", "policy", "show", "--json"]).stdout)
    counts = {c["rule"]: c["packets"] for c in shown["rules"]}
    assert counts["web-v4"] == 1
    assert counts["web-v6"] == 1
    client.run([PY, "-m", "netwarden", "policy", "off"])
    assert "SimpleHTTP" in _curl(client, f"http://{remote.ipv4}/").stdout


def test_a_listener_on_another_loopback_address_is_honoured(pair: tuple[Host, Host]) -> None:
    client, remote = pair
    listener = client.popen(
        [
            PY,
            "-m",
            "netwarden.testing.traffic",
            "tcp-server",
            "--bind",
            "127.0.0.2",
            "--port",
            "55557",
            "--send",
            "3",
        ],
        stdout=subprocess.PIPE,
    )
    assert listener.stdout is not None
    json.loads(listener.stdout.readline())
    client.run([PY, "-m", "netwarden", "redirect", "--dport", "80", "--to", "127.0.0.2:55557"])
    report = json.loads(
        client.run(
            [
                PY,
                "-m",
                "netwarden.testing.traffic",
                "tcp-client",
                "--host",
                remote.ipv4,
                "--port",
                "80",
                "--send",
                "5",
                "--recv",
                "3",
            ]
        ).stdout
    )
    assert report["received"] == 3  # the listener on 127.0.0.2 answered
    client.run([PY, "-m", "netwarden", "down"])


def test_a_second_listener_of_one_family_is_refused(pair: tuple[Host, Host]) -> None:
    client, _remote = pair
    result = client.run(
        [
            PY,
            "-m",
            "netwarden",
            "redirect",
            "--dport",
            "80",
            "--to",
            "127.0.0.1:1",
            "--to",
            "127.0.0.2:2",
        ],
        check=False,
    )
    assert result.returncode == 2
    assert "one listener per address family" in result.stderr
    assert client.run(["nft", "list", "tables"]).stdout.strip() == ""

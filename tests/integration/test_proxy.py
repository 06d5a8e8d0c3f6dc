"""Proxies in netlab: the transparent relay (half-close, hop guard) and the user-mode
SOCKS5 and HTTP listeners (unprivileged, remote DNS, policy)."""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_server, traffic

pytestmark = pytest.mark.root


def _start_proxy(client: Host, *extra: str) -> subprocess.Popen[str]:
    proxy = client.popen([PY, "-m", "netwarden", "proxy", "--listen", "127.0.0.1:15001",
                          "--listen", "[::1]:15001", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proxy.stderr is not None
    assert "proxy listening" in proxy.stderr.readline()
    return proxy


@pytest.fixture(params=["--fast-path", "--no-fast-path"])
def proxied(
    pair: tuple[Host, Host], request: pytest.FixtureRequest
) -> tuple[Host, Host, subprocess.Popen[str]]:
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000", "--send", "3000000")
    proxy = _start_proxy(client, request.param)
    client.run([PY, "-m", "netwarden", "redirect", "--dport", "5000",
                "--to", "127.0.0.1:15001", "--to", "[::1]:15001"])  # fmt: skip
    return client, server, proxy


@pytest.mark.parametrize("family", [4, 6])
def test_half_closed_client_gets_the_whole_answer_through_the_proxy(
    proxied: tuple[Host, Host, subprocess.Popen[str]], family: int
) -> None:
    """The client sends 2 MB, shuts down its side, and must still get all 3 MB back."""
    client, server, proxy = proxied
    address = server.ipv4 if family == 4 else server.ipv6
    report = traffic(client, "tcp-client", "--host", address, "--port", "5000",
                     "--send", "2000000", "--recv", "3000000")  # fmt: skip
    assert report["received"] == 3_000_000
    assert proxy.stdout is not None
    flow = json.loads(proxy.stdout.readline())
    assert flow["destination"].endswith(":5000")
    assert address in flow["destination"]
    assert (flow["bytes_up"], flow["bytes_down"], flow["error"]) == (2_000_000, 3_000_000, "")
    assert flow["kind"] == "transparent"


def test_a_looping_configuration_is_refused_not_spun(pair: tuple[Host, Host]) -> None:
    """Without the mark, the proxy's own upstream connection is redirected back to it."""
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000", "--send", "10")
    proxy = _start_proxy(client, "--mark", "0")
    client.run([PY, "-m", "netwarden", "redirect", "--dport", "5000",
                "--to", "127.0.0.1:15001"])  # fmt: skip
    outcome = client.run([PY, "-m", "netwarden.testing.traffic", "probe", "--host",
                          server.ipv4, "--port", "5000", "--timeout", "3"])  # fmt: skip
    assert json.loads(outcome.stdout)["outcome"] == "connected"  # the proxy accepted it
    assert proxy.stderr is not None
    deadline = time.monotonic() + 10
    logged = ""
    while "redirection loop" not in logged and time.monotonic() < deadline:
        if select.select([proxy.stderr], [], [], 0.5)[0]:
            logged += proxy.stderr.readline()
    time.sleep(1)  # a spinning proxy would log the loop again and again meanwhile
    proxy.terminate()
    _out, rest = proxy.communicate(timeout=10)
    assert "redirection loop" in logged
    assert (logged + rest).count("redirection loop") == 1  # refused once, not spinning


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.fixture
def user_mode(pair: tuple[Host, Host]) -> Iterator[tuple[Host, Host, subprocess.Popen[str]]]:
    """SOCKS5 and HTTP listeners run by an unprivileged user, with a policy."""
    client, remote = pair
    web = remote.popen([PY, "-u", "-m", "http.server", "8080", "--bind", "::"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert web.stdout is not None
    assert "Serving HTTP" in web.stdout.readline()
    start_server(remote, "tcp-server", "--port", "5000", "--send", "10")
    folder = Path(tempfile.mkdtemp(prefix="nwproxy-"))
    folder.chmod(0o755)
    policy = folder / "policy.toml"
    policy.write_text('[[rule]]\nname = "no-5000"\naction = "block"\ndirection = "out"\n'
                      "port = 5000\n")  # fmt: skip
    policy.chmod(0o644)
    proxy = client.popen([*NOBODY, PY, "-m", "netwarden", "proxy", "--socks5", "127.0.0.1:1080",
                          "--http", "127.0.0.1:3128", "--socks-user", "ann:secret",
                          "--policy", str(policy)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proxy.stderr is not None
    assert "proxy listening" in proxy.stderr.readline()
    try:
        yield client, remote, proxy
    finally:
        shutil.rmtree(folder)


def _curl(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return host.run([*NOBODY, "curl", "-sS", "--max-time", "5", *args], check=False)


def test_socks5_and_http_proxy_as_an_unprivileged_user(
    user_mode: tuple[Host, Host, subprocess.Popen[str]],
) -> None:
    client, remote, _proxy = user_mode
    page = f"http://{remote.ipv4}:8080/"
    socks = "socks5h://ann:secret@127.0.0.1:1080"
    via_socks = _curl(client, "--proxy", socks, page)
    assert via_socks.returncode == 0, via_socks.stderr
    assert "Directory listing" in via_socks.stdout
    via_socks_v6 = _curl(client, "--proxy", socks, f"http://[{remote.ipv6}]:8080/")
    assert "Directory listing" in via_socks_v6.stdout
    via_http = _curl(client, "--proxy", "http://127.0.0.1:3128", page)
    assert "Directory listing" in via_http.stdout, via_http.stderr
    tunnel = _curl(client, "--proxytunnel", "--proxy", "http://127.0.0.1:3128", page)
    assert "Directory listing" in tunnel.stdout, tunnel.stderr
    wrong_password = _curl(client, "--proxy", "socks5h://ann:guess@127.0.0.1:1080", page)
    assert wrong_password.returncode != 0


def test_remote_dns_and_policy_in_user_mode(
    user_mode: tuple[Host, Host, subprocess.Popen[str]],
) -> None:
    client, remote, proxy = user_mode
    local = client.popen([PY, "-u", "-m", "http.server", "8081", "--bind", "127.0.0.1"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert local.stdout is not None
    assert "Serving HTTP" in local.stdout.readline()
    socks = "socks5h://ann:secret@127.0.0.1:1080"
    named = _curl(client, "--proxy", socks, "http://localhost:8081/")
    assert "Directory listing" in named.stdout  # "localhost" was resolved by the proxy
    blocked = _curl(client, "--proxy", socks, f"http://{remote.ipv4}:5000/")
    assert blocked.returncode != 0
    assert "not allowed" in blocked.stderr.lower() or "(2)" in blocked.stderr
    forbidden = client.run([*NOBODY, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "--proxy", "http://127.0.0.1:3128", f"http://{remote.ipv4}:5000/"],
                           check=False)  # fmt: skip
    assert forbidden.stdout == "403"
    proxy.terminate()
    out, _err = proxy.communicate(timeout=10)
    errors = [json.loads(line)["error"] for line in out.splitlines()]
    assert any("refused by the policy" in error for error in errors)


@pytest.mark.parametrize("hop", ["socks5://ann:secret@127.0.0.1:1080", "http://127.0.0.1:3128"])
def test_chain_of_two_local_proxies_through_an_upstream_hop(
    pair: tuple[Host, Host], hop: str
) -> None:
    """client -(redirect)-> transparent proxy -(upstream hop)-> user-mode proxy -> server."""
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000", "--send", "1000000")
    # The second proxy is unprivileged and cannot mark its sockets: redirecting only
    # root's connections keeps its own out of the redirection (else the two would loop).
    second_proxy = [*NOBODY, PY, "-m", "netwarden", "proxy", "--socks5", "127.0.0.1:1080",
                    "--http", "127.0.0.1:3128", "--socks-user", "ann:secret"]  # fmt: skip
    second = client.popen(second_proxy, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert second.stderr is not None
    assert "proxy listening" in second.stderr.readline()
    first = _start_proxy(client, "--upstream", hop)
    client.run([PY, "-m", "netwarden", "redirect", "--dport", "5000", "--user", "root",
                "--to", "127.0.0.1:15001", "--to", "[::1]:15001"])  # fmt: skip
    for address in (server.ipv4, server.ipv6):
        report = traffic(client, "tcp-client", "--host", address, "--port", "5000",
                         "--send", "300000", "--recv", "1000000")  # fmt: skip
        assert report["received"] == 1_000_000
    assert first.stdout is not None
    assert second.stdout is not None
    for address in (server.ipv4, f"[{server.ipv6}]"):
        outer, inner = json.loads(first.stdout.readline()), json.loads(second.stdout.readline())
        assert outer["error"] == inner["error"] == ""
        assert outer["bytes_up"] == inner["bytes_up"] == 300_000
        assert outer["bytes_down"] == inner["bytes_down"] == 1_000_000
        assert outer["destination"] == inner["destination"] == f"{address}:5000"


def test_two_chained_redirecting_proxies_then_an_upstream_socks5_hop(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    """client -> scanner proxy -> DLP proxy -> SOCKS5 hop -> server, each redirection
    keyed on the mark of the proxy before it, so nothing loops."""
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000", "--send", "400000")
    hop = client.popen([*NOBODY, PY, "-m", "netwarden", "proxy", "--socks5", "127.0.0.1:1080"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert hop.stderr is not None
    assert "proxy listening" in hop.stderr.readline()
    scanner = client.popen([PY, "-m", "netwarden", "proxy", "--listen", "127.0.0.1:15001",
                            "--mark", "0x4e500002"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    dlp = client.popen([PY, "-m", "netwarden", "proxy", "--listen", "127.0.0.1:15002",
                        "--upstream", "socks5://127.0.0.1:1080"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    for proxy in (scanner, dlp):
        assert proxy.stderr is not None
        assert "proxy listening" in proxy.stderr.readline()
    policy = tmp_path / "chain.toml"
    policy.write_text(
        '[[redirect]]\nname = "to-scanner"\nport = 5000\nmark = 0\nuser = "root"\n'
        'to = "127.0.0.1:15001"\n\n'
        '[[redirect]]\nname = "scanner-to-dlp"\nport = 5000\nmark = 0x4e500002\n'
        'to = "127.0.0.1:15002"\n'
    )
    client.run([PY, "-m", "netwarden", "policy", "apply", str(policy)])
    report = traffic(client, "tcp-client", "--host", server.ipv4, "--port", "5000",
                     "--send", "100000", "--recv", "400000")  # fmt: skip
    assert report["received"] == 400_000
    for proxy in (scanner, dlp, hop):
        assert proxy.stdout is not None
        flow = json.loads(proxy.stdout.readline())
        assert flow["destination"] == f"{server.ipv4}:5000", flow
        assert (flow["bytes_up"], flow["bytes_down"], flow["error"]) == (100_000, 400_000, "")
    shown = json.loads(client.run([PY, "-m", "netwarden", "policy", "show", "--json"]).stdout)
    counts = {c["rule"]: c["packets"] for c in shown["rules"]}
    assert counts["to-scanner"] == 1
    assert counts["scanner-to-dlp"] == 1

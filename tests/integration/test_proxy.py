"""The transparent proxy behind redirection: pass-through, half-close, the hop guard."""

from __future__ import annotations

import json
import subprocess

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


@pytest.fixture
def proxied(pair: tuple[Host, Host]) -> tuple[Host, Host, subprocess.Popen[str]]:
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000", "--send", "3000000")
    proxy = _start_proxy(client)
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
    proxy.terminate()
    _out, err = proxy.communicate(timeout=10)
    assert "redirection loop" in err
    assert err.count("redirection loop") == 1  # refused once, not spinning

"""A host in the middle: forwarded traffic under a policy, and redirected into a proxy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from netwarden.testing.netlab import Host, Lab
from tests.integration.conftest import PY, start_server, traffic
from tests.integration.test_policy import probe

pytestmark = pytest.mark.root


@pytest.fixture
def routed(lab: Lab) -> tuple[Host, Host, Host]:
    client, gateway, server = lab.host("client"), lab.host("gateway"), lab.host("server")
    lab.link(client, gateway)
    lab.link(gateway, server)
    lab.route_through(client, gateway)
    lab.route_through(server, gateway)
    for port in (5000, 5001):
        start_server(server, "tcp-server", "--port", str(port), "--send", "200000")
    return client, gateway, server


def test_forward_rules_on_a_gateway(routed: tuple[Host, Host, Host], tmp_path: Path) -> None:
    client, gateway, server = routed
    target4, target6 = server.links[2]
    assert probe(client, target4, 5001) == "connected"
    policy = tmp_path / "gateway.toml"
    policy.write_text('[[rule]]\nname = "no-5001-through"\naction = "block"\n'
                      'direction = "forward"\nprotocol = "tcp"\nport = 5001\n')  # fmt: skip
    gateway.run([PY, "-m", "netwarden", "policy", "apply", str(policy)])
    for address in (target4, target6):
        assert probe(client, address, 5001) == "timeout"
        assert probe(client, address, 5000) == "connected"
    shown = json.loads(gateway.run([PY, "-m", "netwarden", "policy", "show", "--json"]).stdout)
    counts = {c["rule"]: c["packets"] for c in shown["rules"]}
    assert counts["no-5001-through"] >= 2


def test_forwarded_connections_redirected_into_the_gateways_proxy(
    routed: tuple[Host, Host, Host],
) -> None:
    client, gateway, server = routed
    target4, target6 = server.links[2]
    proxy = gateway.popen([PY, "-m", "netwarden", "proxy", "--listen", "0.0.0.0:15001",
                           "--listen", "[::]:15001"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proxy.stderr is not None
    assert "proxy listening" in proxy.stderr.readline()
    gateway.run([PY, "-m", "netwarden", "redirect", "--gateway", "--dport", "5000",
                 "--to", "127.0.0.1:15001", "--to", "[::1]:15001"])  # fmt: skip
    assert proxy.stdout is not None
    for address in (target4, target6):
        report = traffic(client, "tcp-client", "--host", address, "--port", "5000",
                         "--send", "100000", "--recv", "200000")  # fmt: skip
        assert report["received"] == 200_000
        flow = json.loads(proxy.stdout.readline())
        assert address in flow["destination"]  # the original destination, read on the gateway
        assert client.links[1][0 if ":" not in address else 1] in flow["client"]
        assert (flow["bytes_up"], flow["bytes_down"]) == (100_000, 200_000)


def _tproxy_listener(host: Host) -> subprocess.Popen[str]:
    proxy = host.popen([PY, "-m", "netwarden", "proxy", "--tproxy", "--listen",
                        "0.0.0.0:15001", "--listen", "[::]:15001"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proxy.stderr is not None
    assert "proxy listening" in proxy.stderr.readline()
    return proxy


def test_tproxy_hands_forwarded_connections_over_unchanged(
    routed: tuple[Host, Host, Host], tmp_path: Path
) -> None:
    client, gateway, server = routed
    target4, target6 = server.links[2]
    proxy = _tproxy_listener(gateway)
    policy = tmp_path / "tproxy.toml"
    policy.write_text('[[redirect]]\nname = "tproxy-5000"\ndirection = "forward"\n'
                      'method = "tproxy"\nport = 5000\nto = "proxy"\n')  # fmt: skip
    gateway.run([PY, "-m", "netwarden", "policy", "apply", str(policy)])
    assert "lookup 3100" in gateway.run(["ip", "rule"]).stdout
    assert proxy.stdout is not None
    for address, source in ((target4, client.links[1][0]), (target6, client.links[1][1])):
        report = traffic(client, "tcp-client", "--host", address, "--port", "5000",
                         "--send", "30000", "--recv", "200000")  # fmt: skip
        assert report["received"] == 200_000
        flow = json.loads(proxy.stdout.readline())
        assert address in flow["destination"]  # getsockname of the transparent socket
        assert source in flow["client"]
        assert (flow["bytes_up"], flow["bytes_down"]) == (30_000, 200_000)
    gateway.run([PY, "-m", "netwarden", "policy", "off"])
    assert "lookup 3100" not in gateway.run(["ip", "rule"]).stdout
    assert "lookup 3100" not in gateway.run(["ip", "-6", "rule"]).stdout


def test_tproxy_takes_this_hosts_own_connections_too(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    """`direction = "out"` with TPROXY: the application's packets are rerouted onto lo
    by their mark and handed to the listener; nothing rewrites an address."""
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000", "--send", "200000")
    start_server(server, "tcp-server", "--port", "5001", "--send", "1000")
    proxy = _tproxy_listener(client)
    policy = tmp_path / "tproxy-out.toml"
    policy.write_text('[[redirect]]\nname = "tproxy-out-5000"\ndirection = "out"\n'
                      'method = "tproxy"\nport = 5000\nto = "proxy"\n')  # fmt: skip
    client.run([PY, "-m", "netwarden", "policy", "apply", str(policy)])
    assert proxy.stdout is not None
    for address in (server.ipv4, server.ipv6):
        report = traffic(client, "tcp-client", "--host", address, "--port", "5000",
                         "--send", "30000", "--recv", "200000")  # fmt: skip
        assert report["received"] == 200_000
        flow = json.loads(proxy.stdout.readline())
        assert flow["destination"].rsplit(":", 1)[0].strip("[]") == address
        assert flow["client"].rsplit(":", 1)[1] == str(report["local_port"])
        assert (flow["bytes_up"], flow["bytes_down"]) == (30_000, 200_000)
        other = traffic(client, "tcp-client", "--host", address, "--port", "5001",
                        "--recv", "1000")  # fmt: skip
        assert other["received"] == 1000  # not chosen: straight to the server
    shown = json.loads(client.run([PY, "-m", "netwarden", "policy", "show", "--json"]).stdout)
    assert {c["rule"]: c["packets"] for c in shown["rules"]}["tproxy-out-5000"] > 2
    client.run([PY, "-m", "netwarden", "policy", "off"])
    assert "lookup 3100" not in client.run(["ip", "rule"]).stdout
    report = traffic(client, "tcp-client", "--host", server.ipv4, "--port", "5000",
                     "--recv", "200000")  # fmt: skip
    assert report["received"] == 200_000

"""The kernel and the pure matcher agree: generated policies, real packets in netlab.

For each generated policy, every probe's outcome must be what the matcher's decision
predicts, and each rule's counter must have counted exactly when the matcher says the
rule decided some probe.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwarden.policy.environment import fake_environment
from netwarden.policy.loader import parse
from netwarden.policy.matcher import decide, parse_flow
from netwarden.policy.model import Action
from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_server
from tests.integration.test_policy import counters, netwarden

pytestmark = pytest.mark.root

PROBES = [("tcp", 5000), ("tcp", 5001), ("udp", 5002)]
# What a client sees. A datagram dropped by this host's own output rules fails with
# EPERM ("denied") whether the rule blocks or rejects.
OUTCOMES = {
    ("tcp", Action.ALLOW): {"connected"},
    ("tcp", Action.BLOCK): {"timeout"},
    ("tcp", Action.REJECT): {"refused"},
    ("udp", Action.ALLOW): {"answered"},
    ("udp", Action.BLOCK): {"denied"},
    ("udp", Action.REJECT): {"refused", "denied"},
}
PROBE_SCRIPT = """
import json, socket, sys
results = []
for protocol, host, port in json.loads(sys.argv[1]):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.settimeout(0.4)
    try:
        s.connect((host, port))
        if protocol == "udp":
            s.send(b"x"); s.recv(100); results.append("answered")
        else:
            results.append("connected")
    except ConnectionRefusedError:
        results.append("refused")
    except TimeoutError:
        results.append("timeout")
    except PermissionError:
        results.append("denied")
    finally:
        s.close()
print(json.dumps(results))
"""


def _rule(draw: st.DrawFn, index: int, server: Host) -> str:
    action = draw(st.sampled_from(["allow", "block", "reject"]))
    protocol = draw(st.sampled_from(["tcp", "udp", "any"]))
    to = draw(st.sampled_from(
        [None, f"{server.ipv4}/32", f"{server.ipv6}/128", "10.200.0.0/16", "192.0.2.0/24"]
    ))  # fmt: skip
    port = draw(st.sampled_from([None, 5000, 5001, 5002, "5000-5001"]))
    lines = [f'[[rule]]\nname = "r{index}"\naction = "{action}"\ndirection = "out"',
             f'protocol = "{protocol}"']  # fmt: skip
    if to:
        lines.append(f'to = ["{to}"]')
    if port is not None:
        lines.append(f"port = {json.dumps(port)}")
    return "\n".join(lines)


@st.composite
def policies(draw: st.DrawFn, server: Host) -> str:
    default = draw(st.sampled_from(["allow", "block", "reject"]))
    count = draw(st.integers(min_value=0, max_value=4))
    rules = [_rule(draw, i, server) for i in range(count)]
    return "\n\n".join([f'[defaults]\nout = "{default}"', *rules]) + "\n"


@pytest.fixture
def lab_servers(pair: tuple[Host, Host]) -> tuple[Host, Host]:
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000")
    start_server(server, "tcp-server", "--port", "5001")
    start_server(server, "udp-server", "--port", "5002", "--reply", "5")
    return client, server


def test_kernel_verdicts_and_counters_match_the_matcher(lab_servers: tuple[Host, Host]) -> None:
    client, server = lab_servers
    env = fake_environment()
    checked = 0

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.data())
    def agree(data: st.DataObject) -> None:
        nonlocal checked
        text = data.draw(policies(server))
        policy = parse(text, "generated.toml", env)
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
            handle.write(text)
        path = Path(handle.name)
        path.chmod(0o644)
        try:
            netwarden(client, "policy", "apply", str(path))
        finally:
            path.unlink()
        flows = [(p, host, port) for host in (server.ipv4, server.ipv6) for p, port in PROBES]
        result = client.run([PY, "-c", PROBE_SCRIPT, json.dumps(flows)])
        outcomes = json.loads(result.stdout)
        decided: set[str] = set()
        for (protocol, host, port), outcome in zip(flows, outcomes, strict=True):
            shown = f"[{host}]" if ":" in host else host
            flow = parse_flow(f"{protocol} out {shown}:40000 -> {shown}:{port}", env)
            decision = decide(policy, flow)
            assert outcome in OUTCOMES[(protocol, decision.action)], (
                f"{protocol} to {host}:{port}: kernel said {outcome}, matcher "
                f"{decision.action} ({decision.reason})\n{text}"
            )
            if decision.rule is not None:
                decided.add(decision.rule.name)
        seen = counters(client)
        for rule in policy.rules:
            counted = seen[rule.name]["packets"] > 0
            assert counted == (rule.name in decided), f"counter of {rule.name}\n{text}"
        checked += 1

    agree()
    assert checked >= 10

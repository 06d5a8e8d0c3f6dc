"""Policies applied to the kernel in netlab: verdicts, counters, bad input, coexistence."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from netwarden.platform.linux import cgroup_marks, netns, nftables
from netwarden.policy.compiler import HASHED_SET_MIN
from netwarden.testing.netlab import Host, Lab
from tests.integration.conftest import PY, in_cgroup, start_server

pytestmark = pytest.mark.root

DROP_PORT_7 = '[[rule]]\naction = "block"\ndirection = "out"\nport = 7\n'
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


# Rulesets are compared with `nft -s` (no counters): stray packets, such as IPv6
# multicast reports, may be counted at any moment.


def netwarden(host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return host.run([PY, "-m", "netwarden", *args], check=check)


def probe(host: Host, address: str, port: int, protocol: str = "tcp",
          prefix: tuple[str, ...] = ()) -> str:  # fmt: skip
    result = host.run([*prefix, PY, "-m", "netwarden.testing.traffic", "probe", "--host",
                       address, "--port", str(port), "--protocol", protocol])  # fmt: skip
    outcome: str = json.loads(result.stdout)["outcome"]
    return outcome


def counters(host: Host) -> dict[str, dict[str, Any]]:
    shown = json.loads(netwarden(host, "policy", "show", "--json").stdout)
    return {c["rule"] or c["counter"]: c for c in shown["rules"]}


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture
def servers(pair: tuple[Host, Host]) -> tuple[Host, Host]:
    client, server = pair
    for port in (5000, 5001, 5002):
        start_server(server, "tcp-server", "--port", str(port))
    start_server(server, "udp-server", "--port", "5003", "--reply", "10")
    return client, server


@pytest.mark.parametrize("family", [4, 6])
def test_outbound_block_reject_allow_by_address_port_protocol(
    servers: tuple[Host, Host], tmp_path: Path, family: int
) -> None:
    client, server = servers
    address = server.ipv4 if family == 4 else server.ipv6
    policy = write(
        tmp_path,
        f"""
[[rule]]
name = "drop-5000"
action = "block"
direction = "out"
protocol = "tcp"
to = ["{address}"]
port = 5000

[[rule]]
name = "refuse-5001"
action = "reject"
direction = "out"
protocol = "tcp"
port = [5001]

[[rule]]
name = "drop-udp"
action = "block"
direction = "out"
protocol = "udp"
port = "5003-5003"
""",
    )
    assert probe(client, address, 5000) == "connected"
    netwarden(client, "policy", "apply", str(policy))
    assert probe(client, address, 5000) == "timeout"
    assert probe(client, address, 5001) == "refused"
    assert probe(client, address, 5002) == "connected"
    assert probe(client, address, 5003, "udp") == "denied"
    seen = counters(client)
    assert seen["drop-5000"]["packets"] >= 1  # the SYN and its retransmissions
    assert seen["refuse-5001"]["packets"] == 1
    assert seen["drop-udp"]["packets"] == 1
    assert (seen["refuse-5001"]["action"], seen["refuse-5001"]["direction"]) == ("reject", "out")
    assert seen["refuse-5001"]["matches"] == "tcp port 5001"
    shown = json.loads(netwarden(client, "policy", "show", "--json").stdout)
    assert (shown["source"], shown["by"]) == (str(policy), "netwarden policy apply")
    text = netwarden(client, "policy", "show").stdout
    assert f"table inet netwarden: {policy}, applied " in text
    netwarden(client, "policy", "off")
    assert probe(client, address, 5000) == "connected"
    assert probe(client, address, 5003, "udp") == "answered"


def test_inbound_rules_and_default(servers: tuple[Host, Host], tmp_path: Path) -> None:
    client, server = servers
    policy = write(
        tmp_path,
        """
[defaults]
in = "block"

[[rule]]
name = "web-in"
action = "allow"
direction = "in"
protocol = "tcp"
port = 5002

[[rule]]
name = "refuse-5001"
action = "reject"
direction = "in"
protocol = "tcp"
port = 5001
""",
    )
    netwarden(server, "policy", "apply", str(policy))
    for address in (server.ipv4, server.ipv6):
        assert probe(client, address, 5002) == "connected"
        assert probe(client, address, 5001) == "refused"
        assert probe(client, address, 5000) == "timeout"
    seen = counters(server)
    assert seen["web-in"]["packets"] == 2  # one SYN per family; the rest is established
    assert seen["refuse-5001"]["packets"] == 2
    assert seen["default in"]["packets"] >= 2


def test_rules_by_user(servers: tuple[Host, Host], tmp_path: Path) -> None:
    client, server = servers
    policy = write(
        tmp_path,
        """
[[rule]]
name = "nobody-offline"
action = "reject"
direction = "out"
user = "nobody"
""",
    )
    netwarden(client, "policy", "apply", str(policy))
    assert probe(client, server.ipv4, 5002) == "connected"
    assert probe(client, server.ipv4, 5002, prefix=tuple(NOBODY)) != "connected"
    assert counters(client)["nobody-offline"]["packets"] >= 1


def test_bad_policy_changes_nothing(servers: tuple[Host, Host], tmp_path: Path) -> None:
    client, server = servers
    good = write(
        tmp_path,
        """
[[rule]]
name = "drop-5000"
action = "block"
direction = "out"
port = 5000
""",
    )
    netwarden(client, "policy", "apply", str(good))
    before = client.run(["nft", "-s", "list", "ruleset"]).stdout
    bad = write(
        tmp_path,
        """
[[rule]]
name = "broken"
action = "block"
direction = "out"
to = ["10.0.0.300/8"]
port = "80-70"
""",
        "bad.toml",
    )
    result = netwarden(client, "policy", "apply", str(bad), check=False)
    assert result.returncode == 2
    assert f"{bad}:6: '10.0.0.300/8' is not an IP address" in result.stderr
    assert f"{bad}:7: '80-70' is not a port" in result.stderr
    assert client.run(["nft", "-s", "list", "ruleset"]).stdout == before
    assert probe(client, server.ipv4, 5000) == "timeout"  # the previous policy holds


def test_kernel_refusal_keeps_the_previous_policy(
    servers: tuple[Host, Host], tmp_path: Path
) -> None:
    """The batch is atomic: when the kernel refuses any part, the old table survives."""
    client, _server = servers
    netwarden(client, "policy", "apply", str(write(tmp_path, DROP_PORT_7)))
    before = client.run(["nft", "-s", "list", "ruleset"]).stdout
    where = {"family": "inet", "table": "netwarden"}
    missing_set = {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "ip", "field": "daddr"}},
            "right": "@no_such_set",
        }
    }
    chain = {**where, "name": "out", "type": "filter", "hook": "output", "prio": 0}
    body: list[dict[str, Any]] = [
        {"add": {"chain": chain}},
        {"add": {"rule": {**where, "chain": "out", "expr": [missing_set, {"drop": None}]}}},
    ]
    with netns.entered(client.netns), pytest.raises(nftables.NftError):
        nftables.replace_table("inet", "netwarden", body)
    assert client.run(["nft", "-s", "list", "ruleset"]).stdout == before


def test_tables_netwarden_does_not_own_are_never_touched(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, _server = pair
    client.run(["nft", "add", "table", "inet", "docker_like"])
    client.run(["nft", "add", "chain", "inet", "docker_like", "c",
                "{ type filter hook output priority 10; }"])  # fmt: skip
    client.run(["nft", "add", "rule", "inet", "docker_like", "c", "tcp", "dport", "9", "drop"])
    theirs = client.run(["nft", "list", "table", "inet", "docker_like"]).stdout
    policy = write(tmp_path, DROP_PORT_7)
    netwarden(client, "policy", "apply", str(policy))
    netwarden(client, "policy", "apply", str(policy))  # replacing ours again
    assert client.run(["nft", "list", "table", "inet", "docker_like"]).stdout == theirs
    netwarden(client, "policy", "off")
    assert client.run(["nft", "list", "table", "inet", "docker_like"]).stdout == theirs
    assert "netwarden" not in client.run(["nft", "list", "tables"]).stdout


def test_policy_test_needs_no_root() -> None:
    readable = Path(tempfile.mkdtemp(prefix="nwpolicy-"))  # pytest's tmp_path is root-only
    readable.chmod(0o755)
    try:
        policy = write(readable, HTTPS_FOR_1000)
        result = subprocess.run(
            [*NOBODY, sys.executable, "-m", "netwarden", "policy", "test", str(policy),
             "--flow", "tcp out 10.0.0.5:40000 -> 192.0.2.7:443 uid=1000"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(readable)
    assert result.returncode == 0, result.stderr
    assert "reject: rule 'no-https-for-1000'" in result.stdout


HTTPS_FOR_1000 = """
[[rule]]
name = "no-https-for-1000"
action = "reject"
direction = "out"
protocol = "tcp"
port = 443
user = 1000
"""


GOLDEN = Path(__file__).parent.parent / "unit" / "policy_golden"


@pytest.mark.parametrize("case", sorted(p.stem for p in GOLDEN.glob("*.json")))
def test_golden_outputs_are_accepted_by_the_kernel(pair: tuple[Host, Host], case: str) -> None:
    """The compiler's golden files are real nftables: the kernel accepts each (checked)."""
    client, _server = pair
    body = json.loads((GOLDEN / f"{case}.json").read_text())
    table = next(c["add"]["counter"]["table"] for c in body if "counter" in c["add"])
    batch = {"nftables": [{"add": {"table": {"family": "inet", "name": table}}}, *body]}
    result = client.run(["nft", "-c", "-j", "-f", "-"], input=json.dumps(batch), check=False)
    assert result.returncode == 0, result.stderr


def test_rules_by_scope(servers: tuple[Host, Host], tmp_path: Path) -> None:
    client, server = servers
    policy = write(
        tmp_path,
        """
[[rule]]
name = "browser-no-5002"
action = "reject"
direction = "out"
protocol = "tcp"
port = 5002
scope = "nwtest-browser"
""",
    )
    netwarden(client, "policy", "apply", str(policy))
    assert probe(client, server.ipv4, 5002) == "connected"
    runner = (PY, "-m", "netwarden", "run", "--scope", "nwtest-browser", "--")
    assert probe(client, server.ipv4, 5002, prefix=runner) == "refused"
    assert probe(client, server.ipv6, 5002, prefix=runner) == "refused"
    assert probe(client, server.ipv4, 5001, prefix=runner) == "connected"
    assert counters(client)["browser-no-5002"]["packets"] == 2
    netwarden(client, "policy", "off")
    assert probe(client, server.ipv4, 5002, prefix=runner) == "connected"
    assert not list(Path("/sys/fs/cgroup").glob("**/nwtest-browser")), "scope cgroup left"


WAIT_THEN_CONNECT = """
import socket, sys
sock = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
print("socket made", flush=True)
sys.stdin.readline()
try:
    sock.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except ConnectionRefusedError:
    print("refused")
"""


def test_rules_by_service_also_catch_sockets_made_before_the_policy(
    servers: tuple[Host, Host], service_cgroup: tuple[str, Path], tmp_path: Path
) -> None:
    client, server = servers
    unit, directory = service_cgroup
    early = client.popen([*in_cgroup(directory), PY, "-c", WAIT_THEN_CONNECT, server.ipv4,
                          "5002"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert early.stdout is not None
    assert early.stdin is not None
    assert early.stdout.readline().strip() == "socket made"
    policy = write(tmp_path, f'[[rule]]\nname = "web-no-5002"\naction = "reject"\n'
                             f'direction = "out"\nprotocol = "tcp"\nport = 5002\n'
                             f'service = "{unit}"\n')  # fmt: skip
    netwarden(client, "policy", "apply", str(policy))
    early.stdin.write("go\n")
    early.stdin.flush()
    assert early.stdout.readline().strip() == "refused"
    assert early.wait(timeout=10) == 0
    assert probe(client, server.ipv6, 5002, prefix=in_cgroup(directory)) == "refused"
    assert probe(client, server.ipv4, 5001, prefix=in_cgroup(directory)) == "connected"
    assert probe(client, server.ipv4, 5002) == "connected"  # outside the service
    assert counters(client)["web-no-5002"]["packets"] == 2
    netwarden(client, "policy", "off")
    assert not cgroup_marks.any_attached(directory)
    assert probe(client, server.ipv4, 5002, prefix=in_cgroup(directory)) == "connected"


def test_marks_of_a_namespace_deleted_without_policy_off_are_released(
    service_cgroup: tuple[str, Path], tmp_path: Path
) -> None:
    unit, directory = service_cgroup
    policy = write(tmp_path, f'[[rule]]\naction = "block"\ndirection = "out"\n'
                             f'service = "{unit}"\n')  # fmt: skip
    with Lab() as lab:
        netwarden(lab.host("lonely"), "policy", "apply", str(policy))
        assert cgroup_marks.any_attached(directory)
    assert not cgroup_marks.any_attached(directory)


def test_large_sets_match_by_every_prefix_length(
    servers: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = servers
    subnet_v4 = server.ipv4.rsplit(".", 1)[0] + ".0/24"
    lines = [f"198.{i >> 8}.{i & 255}.0/24" for i in range(HASHED_SET_MIN)]
    lines += [f"2001:db8:{i:x}::/48" for i in range(HASHED_SET_MIN)]
    lines += ["192.0.2.0/28", subnet_v4, f"{server.ipv6}/128"]
    write(tmp_path, "\n".join(lines), "big.txt")
    policy = write(tmp_path, '[sets.big]\nfile = "big.txt"\n\n[[rule]]\nname = "big"\n'
                             'action = "reject"\ndirection = "out"\nprotocol = "tcp"\n'
                             'to = ["@big"]\nport = 5001\n')  # fmt: skip
    netwarden(client, "policy", "apply", str(policy))
    listing = client.run(["nft", "-j", "list", "sets", "table", "inet", "netwarden"]).stdout
    names = {item["set"]["name"] for item in json.loads(listing)["nftables"] if "set" in item}
    assert names == {"big_v4_24", "big_v4_28", "big_v6_48", "big_v6_128"}
    for address in (server.ipv4, server.ipv6):
        assert probe(client, address, 5001) == "refused"
        assert probe(client, address, 5002) == "connected"
    assert counters(client)["big"]["packets"] == 2

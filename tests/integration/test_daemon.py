"""`netwarden up` and `netwarden down`: everything set up, everything removed, also
after a crash."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, in_cgroup, start_server, start_up, traffic
from tests.integration.monitor_process import within
from tests.integration.test_policy import probe

pytestmark = pytest.mark.root

POLICY = """
[settings]
proxy_port = 15001

[[redirect]]
name = "through-proxy"
port = 5000
to = "proxy"

[[rule]]
name = "no-5001"
action = "reject"
direction = "out"
port = 5001
"""


def _up(client: Host, policy: Path, history: Path) -> subprocess.Popen[str]:
    return start_up(client, policy, "--history", str(history))[0]


def _tables(host: Host) -> str:
    return host.run(["nft", "list", "tables"]).stdout


def test_up_enforces_proxies_and_records_then_down_removes_it_all(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    for port in (5000, 5001):
        start_server(server, "tcp-server", "--port", str(port), "--send", "50000")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    daemon = _up(client, policy, tmp_path / "history.sqlite")
    assert "netwarden" in _tables(client)

    report = traffic(client, "tcp-client", "--host", server.ipv4, "--port", "5000",
                     "--send", "20000", "--recv", "50000")  # fmt: skip
    assert report["received"] == 50_000
    assert daemon.stdout is not None
    flow = json.loads(daemon.stdout.readline())  # the proxy relayed it
    assert flow["destination"] == f"{server.ipv4}:5000"
    assert (flow["bytes_up"], flow["bytes_down"]) == (20_000, 50_000)
    refused = client.run([PY, "-m", "netwarden.testing.traffic", "probe", "--host",
                          server.ipv4, "--port", "5001"])  # fmt: skip
    assert json.loads(refused.stdout)["outcome"] == "refused"
    again = client.run([PY, "-m", "netwarden", "up", "--policy", str(policy), "--no-history"],
                       check=False)  # fmt: skip
    assert again.returncode == 1
    assert "already up here" in again.stderr

    result = client.run([PY, "-m", "netwarden", "down"])
    assert "stopped netwarden up" in result.stdout
    assert daemon.wait(timeout=15) == 0
    assert _tables(client).strip() == ""
    history = client.run([PY, "-m", "netwarden", "history", "--db",
                          str(tmp_path / "history.sqlite"), "--port", "5000", "--format",
                          "json"])  # fmt: skip
    # The application's own socket keeps the original destination under NAT: the
    # history shows the connection with the application's process and its bytes.
    flows = json.loads(history.stdout)
    mine = [f for f in flows if f["remote_port"] == 5000 and f["process"]
            and f["process"]["pid"] == report["pid"]]  # fmt: skip
    assert len(mine) == 1, mine
    assert mine[0]["remote_address"] == server.ipv4
    assert within(mine[0]["bytes_sent"], 20_000)
    assert within(mine[0]["bytes_received"], 50_000)
    # The proxy's two sockets of that connection say what they are: one connection is
    # not read as three.
    app_end = f"{mine[0]['local_address']}:{mine[0]['local_port']}"
    assert mine[0]["relay"].startswith("proxied: the proxy's upstream is ")
    everything = json.loads(client.run([PY, "-m", "netwarden", "history", "--db",
                                        str(tmp_path / "history.sqlite"), "--format",
                                        "json"]).stdout)  # fmt: skip
    relayed = {f["relay"].split(",")[1].split(" side")[0].strip(): f for f in everything
               if f["relay"].startswith("proxy,")}  # fmt: skip
    assert set(relayed) == {"accepted", "upstream"}, [f["relay"] for f in everything]
    for side in relayed.values():
        assert side["relay"].endswith(f"side of {app_end} -> {server.ipv4}:5000")
        assert side["process"]["pid"] == daemon.pid
    assert relayed["upstream"]["remote_address"] == server.ipv4
    assert (relayed["accepted"]["local_address"], relayed["accepted"]["local_port"]) == (
        "127.0.0.1", 15001)  # fmt: skip


def test_a_crashed_daemon_is_cleaned_up(pair: tuple[Host, Host], tmp_path: Path) -> None:
    client, _server = pair
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    crashed = _up(client, policy, tmp_path / "h.sqlite")
    os.killpg(crashed.pid, signal.SIGKILL)
    crashed.wait(timeout=10)
    assert "netwarden" in _tables(client)  # left behind by the crash
    second = _up(client, policy, tmp_path / "h.sqlite")  # takes over the stale state
    assert _tables(client).count("table inet netwarden\n") == 1
    second.terminate()
    assert second.wait(timeout=15) == 0
    assert _tables(client).strip() == ""
    os.killpg(_up(client, policy, tmp_path / "h.sqlite").pid, signal.SIGKILL)
    result = client.run([PY, "-m", "netwarden", "down"])
    assert "removed table inet netwarden" in result.stdout
    assert _tables(client).strip() == ""


def test_up_runs_the_user_mode_listeners_under_its_policy(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    for port in (8080, 8081):
        web = server.popen([PY, "-u", "-m", "http.server", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        assert web.stdout is not None
        assert "Serving HTTP" in web.stdout.readline()
    policy = tmp_path / "policy.toml"
    policy.write_text('[settings]\nsocks5 = ["127.0.0.1:1080"]\nhttp_proxy = "127.0.0.1:3128"\n\n'
                      '[[rule]]\nname = "no-8081"\naction = "block"\ndirection = "out"\n'
                      "port = 8081\n")  # fmt: skip
    daemon = _up(client, policy, tmp_path / "h.sqlite")

    def status(proxy: str, port: int) -> str:
        result = client.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                             "--max-time", "5", "--proxy", proxy,
                             f"http://{server.ipv4}:{port}/"], check=False)  # fmt: skip
        return result.stdout

    assert status("socks5h://127.0.0.1:1080", 8080) == "200"
    assert status("socks5h://127.0.0.1:1080", 8081) == "000"  # refused by the ruleset
    assert status("http://127.0.0.1:3128", 8080) == "200"
    assert status("http://127.0.0.1:3128", 8081) == "403"
    client.run([PY, "-m", "netwarden", "down"])
    assert daemon.wait(timeout=15) == 0


def test_up_marks_a_restarted_service_again(
    pair: tuple[Host, Host], service_cgroup: tuple[str, Path], tmp_path: Path
) -> None:
    client, server = pair
    start_server(server, "tcp-server", "--port", "5002")
    unit, directory = service_cgroup
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[[rule]]\nname = "web-no-5002"\naction = "reject"\ndirection = "out"\n'
                      f'protocol = "tcp"\nport = 5002\nservice = "{unit}"\n')  # fmt: skip
    _up(client, policy, tmp_path / "history.sqlite")
    assert probe(client, server.ipv4, 5002, prefix=in_cgroup(directory)) == "refused"
    directory.rmdir()  # the unit stops; it starts again in a new cgroup, unmarked
    directory.mkdir()
    deadline = time.monotonic() + 10
    while probe(client, server.ipv4, 5002, prefix=in_cgroup(directory)) != "refused":
        assert time.monotonic() < deadline, "the new cgroup was never marked"
        time.sleep(0.5)
    client.run([PY, "-m", "netwarden", "down"])
    assert probe(client, server.ipv4, 5002, prefix=in_cgroup(directory)) == "connected"


def test_policy_apply_and_off_refuse_to_change_a_running_daemons_table(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, _server = pair
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    other = tmp_path / "other.toml"
    other.write_text('[[rule]]\naction = "block"\ndirection = "out"\nport = 9\n')
    daemon = _up(client, policy, tmp_path / "history.sqlite")

    def rules() -> str:  # the table without its counters' values
        listing = client.run(["nft", "list", "table", "inet", "netwarden"]).stdout
        return re.sub(r"packets \d+ bytes \d+", "", listing)

    before = rules()
    for command in (["policy", "apply", str(other)], ["policy", "off"]):
        result = client.run([PY, "-m", "netwarden", *command], check=False)
        assert result.returncode == 1
        assert "netwarden up (pid" in result.stderr
        assert "netwarden down" in result.stderr
    assert rules() == before
    client.run([PY, "-m", "netwarden", "down"])
    assert daemon.wait(timeout=15) == 0

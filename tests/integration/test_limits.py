"""Access limits and shaping under `netwarden up`, in netlab with real programs: rules
in force only in their time window (the daemon's clock shifted by the test), byte
quotas per program, and rate limits per program."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import netwarden
from netwarden.testing import rates, web
from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_up

pytestmark = pytest.mark.root

WINDOW_POLICY = """
[[rule]]
name = "office-hours-only"
action = "reject"
direction = "out"
protocol = "tcp"
port = 80
days = ["mon-fri"]
hours = "09:00-17:00"
timezone = "UTC"
"""


def _up(client: Host, policy: Path, *env: str) -> tuple[subprocess.Popen[str], str]:
    return start_up(client, policy, "--no-history", env=env, stdout=subprocess.DEVNULL)


def _down(client: Host, daemon: subprocess.Popen[str]) -> str:
    client.run([PY, "-m", "netwarden", "down"])
    _out, err = daemon.communicate(timeout=20)
    return err


def _offset_to(moment: str) -> str:
    """NETWARDEN_TIME_OFFSET=... making the daemon's clock read `moment` now."""
    target = datetime.datetime.fromisoformat(moment).timestamp()
    return f"NETWARDEN_TIME_OFFSET={target - time.time():.3f}"


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether check() came true within timeout seconds (asked again and again)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _fetch(client: Host, server: Host) -> int:
    done = client.run(
        ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", f"http://{server.ipv4}/"],
        check=False,
    )
    return done.returncode


def test_a_rule_is_in_force_only_inside_its_time_window(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    web.start(server, 80)
    policy = tmp_path / "policy.toml"
    policy.write_text(WINDOW_POLICY)
    # Monday 08:59:57 UTC: the window opens three seconds later.
    daemon, said = _up(client, policy, _offset_to("2026-12-07T08:59:57+00:00"))
    assert "1 rule with days/hours (0 in force now)" in said
    assert _fetch(client, server) == 0
    assert _until(lambda: _fetch(client, server) == 7)  # refused: the rule is in force
    err = _down(client, daemon)
    assert "rule 'office-hours-only' is in force now" in err
    # Monday 16:59:57 UTC: in force, and out of it three seconds later.
    daemon, said = _up(client, policy, _offset_to("2026-12-07T16:59:57+00:00"))
    assert "(1 in force now)" in said
    assert _fetch(client, server) == 7
    assert _until(lambda: _fetch(client, server) == 0)
    err = _down(client, daemon)
    assert "rule 'office-hours-only' is out of force now" in err
    # Saturday: never in force.
    daemon, said = _up(client, policy, _offset_to("2026-12-05T10:00:00+00:00"))
    assert "(0 in force now)" in said
    assert _fetch(client, server) == 0
    _down(client, daemon)


QUOTA_POLICY = """
[[quota]]
name = "curl-5mb"
process = ["curl"]
limit = "5 MB"
period = "day"
"""

PYTHON_GET = (
    "import sys, urllib.request; print(len(urllib.request.urlopen(sys.argv[1], timeout=10).read()))"
)


def _quota_used(client: Host, env: str) -> dict[str, object]:
    shown = client.run(["env", env, PY, "-m", "netwarden", "quota", "show", "--json"])
    [row] = json.loads(shown.stdout)
    return dict(row)


def _until_reached(
    client: Host, env: str, reached: bool, timeout: float = 10.0
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        row = _quota_used(client, env)
        if row["reached"] is reached or time.monotonic() > deadline:
            return row
        time.sleep(0.2)


def test_a_quota_blocks_the_programs_next_connection_and_survives_a_restart(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    web.start(server, 80)
    policy = tmp_path / "policy.toml"
    policy.write_text(QUOTA_POLICY)
    env = f"NETWARDEN_STATE_DIR={tmp_path / 'state'}"
    url = f"http://{server.ipv4}/bytes/3000000"

    def curl() -> subprocess.CompletedProcess[str]:
        return client.run(
            ["curl", "-sS", "--max-time", "3", "-o", "/dev/null", "-w", "%{size_download}", url],
            check=False,
        )

    daemon, said = _up(client, policy, env)
    assert "1 quota" in said
    assert curl().stdout == "3000000"
    assert curl().stdout == "3000000"  # over 5 MB now: the next connection is refused
    row = _until_reached(client, env, True)
    assert row["reached"] is True
    assert 6_000_000 <= int(str(row["used"])) < 6_100_000
    assert curl().returncode != 0
    other = client.run([PY, "-c", PYTHON_GET, url])  # another program goes on
    assert other.stdout.strip() == "3000000"
    _down(client, daemon)
    daemon, _said = _up(client, policy, env)  # the count survives a restart
    assert _quota_used(client, env)["reached"] is True
    assert curl().returncode != 0
    client.run(["env", env, PY, "-m", "netwarden", "quota", "reset", "curl-5mb"])
    assert _until_reached(client, env, False)["used"] == 0
    assert curl().stdout == "3000000"
    _down(client, daemon)


SHAPE_POLICY = """
[[shape]]
name = "uploads"
process = ["nw-uploader"]
upload = "2 MB/s"

[[shape]]
name = "downloads"
process = ["nw-downloader"]
download = "2 MB/s"
"""
SECONDS = 10


def _programs(directory: Path) -> dict[str, str]:
    """Interpreters under other names: the kernel names a process by what it ran."""
    directory.mkdir()
    directory.chmod(0o755)
    names = {}
    for name in ("nw-uploader", "nw-downloader", "nw-unlimited"):
        (directory / name).symlink_to(sys.executable)
        names[name] = str(directory / name)
    return names


def _rates_at_once(
    client: Host, server: Host, programs: dict[str, str], seconds: int
) -> dict[str, float]:
    """Each program's measured rate, all running at once: the uploader uploads, the
    others download."""
    source = str(Path(netwarden.__file__).parents[1])
    runs = {}
    for name, path in programs.items():
        mode = "upload" if name == "nw-uploader" else "download"
        argv = [path, "-m", "netwarden.testing.rates", mode, server.ipv4, "7000", str(seconds)]
        runs[name] = client.popen(["env", f"PYTHONPATH={source}", *argv], stdout=subprocess.PIPE)
    return {
        name: float(json.loads(run.communicate(timeout=seconds + 60)[0])["rate"])
        for name, run in runs.items()
    }


def test_rate_limits_hold_each_program_to_its_rate_and_leave_others_alone(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    tmp_path.chmod(0o755)
    rates.start(server, 7000)
    programs = _programs(tmp_path / "bin")
    policy = tmp_path / "policy.toml"
    policy.write_text(SHAPE_POLICY)
    daemon, said = _up(client, policy)
    assert "2 rate limits" in said
    measured = _rates_at_once(client, server, programs, SECONDS)
    assert 1_800_000 <= measured["nw-uploader"] <= 2_200_000, measured
    assert 1_800_000 <= measured["nw-downloader"] <= 2_200_000, measured
    assert measured["nw-unlimited"] > 20_000_000, measured
    err = _down(client, daemon)
    assert "Traceback" not in err
    links = client.run(["ip", "-o", "link"]).stdout
    assert "nw-upload" not in links
    assert "nw-download" not in links
    interface = client.run(["ip", "-o", "addr", "show", "to", client.ipv4]).stdout.split()[1]
    for way in ("ingress", "egress"):
        assert client.run(["tc", "filter", "show", "dev", interface, way]).stdout == ""
    assert "clsact" not in client.run(["tc", "qdisc", "show", "dev", interface]).stdout


PROXIED_SHAPE_POLICY = (
    """
[settings]
proxy_port = 15001

[[redirect]]
name = "through-the-proxy"
port = 7000
to = "proxy"
"""
    + SHAPE_POLICY
)


def test_rate_limits_hold_for_connections_through_the_proxy(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    """The proxy's upstream connections are netwarden's own: the proxy paces the
    program's reads and writes itself."""
    client, server = pair
    tmp_path.chmod(0o755)
    rates.start(server, 7000)
    programs = _programs(tmp_path / "bin")
    policy = tmp_path / "policy.toml"
    policy.write_text(PROXIED_SHAPE_POLICY)
    daemon, _said = _up(client, policy)
    measured = _rates_at_once(client, server, programs, 6)
    err = _down(client, daemon)
    assert "Traceback" not in err, err
    assert 1_800_000 <= measured["nw-uploader"] <= 2_200_000, measured
    assert 1_800_000 <= measured["nw-downloader"] <= 2_200_000, measured
    assert measured["nw-unlimited"] > 20_000_000, measured


def _shaping_left(client: Host, interface: str) -> list[str]:
    left = [line for line in client.run(["ip", "-o", "link"]).stdout.splitlines() if "nw-" in line]
    for way in ("ingress", "egress"):
        left += client.run(["tc", "filter", "show", "dev", interface, way]).stdout.splitlines()
    return left


def test_rate_limits_a_crashed_daemon_left_are_removed_by_down_and_by_the_next_up(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    rates.start(server, 7000)
    policy = tmp_path / "policy.toml"
    policy.write_text(SHAPE_POLICY.replace("nw-uploader", "curl"))
    interface = client.run(["ip", "-o", "addr", "show", "to", client.ipv4]).stdout.split()[1]
    for recover in (["down"], ["up"]):
        daemon, _said = _up(client, policy)
        telnet = ["curl", "-s", "--max-time", "20", f"telnet://{server.ipv4}:7000"]
        held = client.popen(telnet, stdin=subprocess.DEVNULL)
        # Its connection shaped: a filter on the interface and on the device.
        assert _until(lambda: len(_shaping_left(client, interface)) > 2)
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=10)
        held.kill()
        assert _shaping_left(client, interface)  # left behind by the crash
        if recover == ["down"]:
            said = client.run([PY, "-m", "netwarden", "down"]).stdout
            assert "removed the rate limits left by a daemon that died" in said
        else:
            daemon, _said = _up(client, policy)  # takes over, then stops cleanly
            _down(client, daemon)
        assert _shaping_left(client, interface) == []
        assert "clsact" not in client.run(["tc", "qdisc", "show", "dev", interface]).stdout

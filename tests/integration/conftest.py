from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netwarden.platform.linux.procfs import cgroup2_mount
from netwarden.testing.netlab import Host, Lab
from tests.integration.monitor_process import MonitorProcess

PY = sys.executable


def traffic(host: Host, *args: str) -> dict[str, Any]:
    result = host.run([PY, "-m", "netwarden.testing.traffic", *args])
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def start_server(host: Host, *args: str) -> subprocess.Popen[str]:
    proc = host.popen([PY, "-m", "netwarden.testing.traffic", *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())  # the server reports once it listens
    return proc


def start_up(
    host: Host,
    policy: Path,
    *extra: str,
    env: tuple[str, ...] = (),
    stdout: int = subprocess.PIPE,
) -> tuple[subprocess.Popen[str], str]:
    """netwarden up in a host, once it says it is up; and what it said then."""
    daemon = host.popen(
        ["env", *env, PY, "-m", "netwarden", "up", "--policy", str(policy), *extra],
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    assert daemon.stderr is not None
    said: list[str] = []
    while not said or "netwarden: up:" not in said[-1]:
        line = daemon.stderr.readline()
        assert line, f"netwarden up exited: {said}"
        said.append(line)
    return daemon, said[-1]


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """netwarden's state (the API token, quotas, the CA) under the test's directory,
    never the host's /var/lib/netwarden."""
    state = tmp_path / "nw-state"
    monkeypatch.setenv("NETWARDEN_STATE_DIR", str(state))
    return state


@pytest.fixture
def pair(lab: Lab) -> tuple[Host, Host]:
    client, server = lab.host("client"), lab.host("server")
    lab.link(client, server)
    return client, server


@pytest.fixture
def history_db(tmp_path: Path) -> Path:
    return tmp_path / "history.sqlite"


@pytest.fixture
def monitor_client(pair: tuple[Host, Host], history_db: Path) -> Iterator[MonitorProcess]:
    mon = MonitorProcess(pair[0].netns, history_db)
    try:
        yield mon
    finally:
        mon.stop()


@pytest.fixture
def service_cgroup() -> Iterator[tuple[str, Path]]:
    """A cgroup that stands for a running systemd service (CI has no systemd)."""
    mount = cgroup2_mount()
    assert mount is not None
    unit = f"nwtest-{os.getpid()}.service"
    directory = mount / "nwtest.slice" / unit
    directory.mkdir(parents=True)
    yield unit, directory
    for cgroup in (directory, directory.parent):
        with contextlib.suppress(OSError):
            cgroup.rmdir()


def in_cgroup(directory: Path) -> tuple[str, ...]:
    return ("sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(directory))

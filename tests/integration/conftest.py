from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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

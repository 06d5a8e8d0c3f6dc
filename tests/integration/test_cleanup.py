"""The monitor owns one nft table per namespace and leaves nothing behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from netwarden.testing.netlab import Host
from tests.integration.monitor_process import MonitorProcess

pytestmark = pytest.mark.root


def _tables(host: Host) -> str:
    return host.run(["nft", "list", "tables"]).stdout


def test_table_left_by_a_killed_monitor_is_replaced_then_removed(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, _server = pair
    client.run(["nft", "add", "table", "inet", "distro_firewall"])  # not ours: must stay
    crashed = MonitorProcess(client.netns, tmp_path / "h.sqlite")
    os.killpg(crashed.proc.pid, signal.SIGKILL)
    crashed.stop()
    assert "netwarden_monitor" in _tables(client)

    again = MonitorProcess(client.netns, tmp_path / "h.sqlite")
    assert _tables(client).count("netwarden_monitor") == 1
    assert again.stop() == 0
    tables = _tables(client)
    assert "netwarden_monitor" not in tables
    assert "distro_firewall" in tables


def test_two_monitors_in_one_namespace_keep_their_own_tables(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, _server = pair
    first = MonitorProcess(client.netns, tmp_path / "a.sqlite")
    second = MonitorProcess(client.netns, tmp_path / "b.sqlite")
    assert _tables(client).count("netwarden_monitor") == 2
    assert first.stop() == 0
    assert _tables(client).count("netwarden_monitor") == 1  # the second still tracks
    assert second.stop() == 0
    assert "netwarden_monitor" not in _tables(client)


def _acct(host: Host) -> str:
    return host.run(["sysctl", "-n", "net.netfilter.nf_conntrack_acct"]).stdout.strip()


def test_byte_accounting_is_restored_after_a_killed_monitor(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    from tests.integration.conftest import PY

    client, _server = pair
    client.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=0"])
    crashed = MonitorProcess(client.netns, tmp_path / "h.sqlite")
    assert _acct(client) == "1"
    os.killpg(crashed.proc.pid, signal.SIGKILL)
    crashed.stop()
    assert _acct(client) == "1"  # nobody restored it yet

    # The next monitor takes over what the dead one meant to restore, and restores it.
    again = MonitorProcess(client.netns, tmp_path / "h.sqlite")
    assert _acct(client) == "1"
    assert again.stop() == 0
    assert _acct(client) == "0"

    # A crash with no monitor after it: `netwarden down` cleans up.
    crashed = MonitorProcess(client.netns, tmp_path / "h.sqlite")
    os.killpg(crashed.proc.pid, signal.SIGKILL)
    crashed.stop()
    said = client.run([PY, "-m", "netwarden", "down"]).stdout
    assert "of a monitor that died" in said
    assert _acct(client) == "0"
    assert "netwarden_monitor" not in _tables(client)

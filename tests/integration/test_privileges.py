"""Without root the monitor runs with less detail and says what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netwarden.testing.netlab import Host, Lab

pytestmark = pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(*args: str, host: Host | None = None) -> subprocess.CompletedProcess[str]:
    """This interpreter with these arguments, run as an unprivileged user; with host,
    inside that lab host's network namespace and a process namespace of its own (with
    one root process beside it), so that what it reads is the test's alone."""
    prefix: list[str] = []
    if host is not None:
        prefix = [
            "nsenter",
            f"--net=/run/netns/{host.netns}",
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            'sleep 60 & exec "$@"',
            "sh",
        ]
    return subprocess.run(
        [*prefix, *NOBODY, sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("integration tests must run as root in CI")
        pytest.skip("dropping privileges needs root")
    probe = as_nobody("-c", "pass")
    assert probe.returncode == 0, (
        "an unprivileged user cannot run this interpreter (a venv made from a Python in "
        f"root's home?): {probe.stderr.strip()}"
    )


@pytest.fixture
def quiet_host(lab: Lab) -> Host:
    """A namespace with a listener and a connection in it, held by a process of root's."""
    host = lab.host("quiet")
    hold = "import socket, time\nl = socket.socket(); l.bind(('127.0.0.1', 7000)); l.listen()\n"
    hold += "c = socket.create_connection(('127.0.0.1', 7000)); a = l.accept()\n"
    hold += "print('ready', flush=True); time.sleep(60)\n"
    proc = host.popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return host


def test_once_as_unprivileged_user_reports_what_is_missing() -> None:
    result = as_nobody("-m", "netwarden", "monitor", "--once", "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert any("not root" in note for note in document["missing"])
    assert any("conntrack" in note for note in document["missing"])


def test_watch_as_unprivileged_user_runs_and_stops() -> None:
    result = as_nobody("-m", "netwarden", "monitor", "--watch", "--no-history", "--duration", "1")
    assert result.returncode == 0, result.stderr
    assert "netwarden: watching this host" in result.stderr
    assert "flow events need root" in result.stderr
    assert "libbpf" not in result.stderr  # not asked to load what it may not
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["policy", "show"], ["policy", "off"], ["down"], ["up", "--policy", "/dev/null"],
     ["redirect", "--dport", "80", "--to", "127.0.0.1:1"], ["run", "--scope", "x", "--", "true"]],
)  # fmt: skip
def test_root_only_commands_say_so_without_a_traceback(args: list[str]) -> None:
    result = as_nobody("-m", "netwarden", *args)
    assert result.returncode == 1, result.stderr
    assert "root" in result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_as_unprivileged_user_says_what_it_cannot_tell() -> None:
    result = as_nobody("-m", "netwarden", "doctor")
    assert result.returncode == 0, result.stderr
    assert "iptables NFQUEUE: cannot tell without root" in result.stdout
    assert "the kernel has no NFQUEUE target" not in result.stdout


def test_native_scan_counts_refusals_as_the_python_scan_does(quiet_host: Host) -> None:
    """As a user who may not read other users' open files, the C scan of /proc finds
    the same owners and counts the same refusing processes as the Python one (the
    count is what the monitor's 'unknown' reasons quote)."""
    compare = (
        "from netwarden.platform.linux import _native, procfs\n"
        "native, python = _native.scan_socket_inodes(), procfs.scan_socket_inodes_python()\n"
        "print(native[0] == python[0], native[1], python[1])\n"
    )
    result = as_nobody("-c", compare, host=quiet_host)
    assert result.returncode == 0, result.stderr
    same, native_refused, python_refused = result.stdout.split()
    assert same == "True"
    assert int(native_refused) == int(python_refused) == 1  # the root process beside it


def test_native_json_listing_as_unprivileged_user_is_the_flow_tables(quiet_host: Host) -> None:
    """Without root the one-shot listing still takes the native path (sock_diag and
    the /proc scan need no privilege) and says the same as the flow table."""
    compare = (
        "import json, tempfile\n"
        "from netwarden.monitor.oneshot import flow_key_order, write_flows_json\n"
        "from netwarden.monitor.service import Monitor\n"
        "from netwarden.platform.select import current\n"
        "with current().open_sources(None, events=False) as sources:\n"
        "    with tempfile.TemporaryFile() as out:\n"
        "        ok = write_flows_json(Monitor(sources, is_root=False), sources.missing, out,\n"
        "                              is_root=False)\n"
        "        out.seek(0)\n"
        "        native = json.load(out)['flows']\n"
        "    flows = sorted(Monitor(sources, is_root=False).snapshot(), key=flow_key_order)\n"
        "strip = lambda f: {k: v for k, v in f.items() if k not in ('first_seen', 'last_seen')}\n"
        "print(ok, [strip(f) for f in native] == [strip(f.to_json()) for f in flows],\n"
        "      len(flows))\n"
    )
    result = as_nobody("-c", compare, host=quiet_host)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "3"]  # the listener, both ends

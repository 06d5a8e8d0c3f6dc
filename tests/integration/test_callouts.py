"""Callouts and rules by program at the CONNECT layer, with real processes in a
network namespace: `netwarden up` holds each new connection's first packet, names
its process, and releases it with the verdict."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_server

pytestmark = pytest.mark.root

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "callouts"

# One connection (tcp) or one request (udp), stdlib only: run by copies of the Python
# interpreter, so that two programs with different executables make the same traffic.
CLIENT = """
import socket, sys
protocol, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
sock.settimeout(2)
try:
    sock.connect((host, port))
    if protocol == "udp":
        sock.send(b"probe")
    else:
        sock.shutdown(socket.SHUT_WR)  # the test server answers once the client is done
    received = sock.recv(65536)
    print("answered", received.decode(errors="replace").replace("\\n", " "))
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
except OSError as exc:
    print("error", exc)
"""


@pytest.fixture
def programs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two executables (copies of this Python) and the client script they run."""
    interpreter = Path(sys.executable).resolve()
    a, b = tmp_path / "program-a", tmp_path / "program-b"
    for copy in (a, b):
        shutil.copy(interpreter, copy)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    return a, b, script


def ask(host: Host, program: Path, script: Path, protocol: str, address: str, port: int) -> str:
    result = host.run([str(program), str(script), protocol, address, str(port)], check=False)
    return result.stdout.strip() or result.stderr.strip()


class Daemon:
    def __init__(self, host: Host, tmp_path: Path, policy: str, *args: str,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.host = host
        if env is not None:  # netwarden's state stays the test's (see own_state_dir)
            env = {**env, "NETWARDEN_STATE_DIR": os.environ["NETWARDEN_STATE_DIR"]}
        path = tmp_path / "policy.toml"
        path.write_text(policy)
        self.proc = host.popen([PY, "-m", "netwarden", "up", "--policy", str(path),
                                "--no-history", "--decisions", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env)  # fmt: skip
        assert self.proc.stderr is not None
        self.said: list[str] = []
        while not self.said or "netwarden: up:" not in self.said[-1]:
            line = self.proc.stderr.readline()
            assert line, f"netwarden up exited: {self.said}"
            self.said.append(line)

    def decisions(self, count: int, timeout: float = 10.0) -> list[dict[str, str]]:
        assert self.proc.stdout is not None
        lines: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout
        while len(lines) < count and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
        return lines

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=20)
        return "".join(self.said) + err


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.stop()


def blocking(program: Path) -> str:
    """A policy with one rule: the program may not connect out."""
    return f'[[rule]]\nname = "no-a"\naction = "block"\ndirection = "out"\nexe = "{program}"\n'


def queue_chain(host: Host) -> str:
    return host.run(["iptables-save", "-t", "mangle"]).stdout


def test_a_rule_by_executable_blocks_one_program_and_not_another(
    pair: tuple[Host, Host], tmp_path: Path, programs: tuple[Path, Path, Path],
    daemons: list[Daemon],
) -> None:  # fmt: skip
    client, server = pair
    a, b, script = programs
    start_server(server, "tcp-server", "--port", "7000", "--send", "5")
    start_server(server, "udp-server", "--port", "7001", "--reply", "5")
    policy = blocking(a)
    daemons.append(daemon := Daemon(client, tmp_path, policy))
    # A refused TCP connection is reset; a blocked datagram was already handed to the
    # kernel when it was queued, so the sender hears nothing (the decision says why).
    for protocol, port, refused in (("tcp", 7000, "refused"), ("udp", 7001, "timeout")):
        for address in (server.ipv4, server.ipv6):
            assert ask(client, a, script, protocol, address, port) == refused
            assert ask(client, b, script, protocol, address, port).startswith("answered")
    decided = daemon.decisions(8)
    by_program = {(d["flow"].split()[0], d["process"].split()[0]): d for d in decided}
    assert by_program[("tcp", "program-a")]["decision"] == "block"
    assert by_program[("tcp", "program-a")]["by"] == "policy"
    assert by_program[("udp", "program-a")]["decision"] == "block"
    assert by_program[("tcp", "program-b")]["decision"] == "continue"
    assert str(a) in by_program[("tcp", "program-a")]["process"]


def test_a_callout_redirects_only_one_programs_connections(
    pair: tuple[Host, Host], tmp_path: Path, programs: tuple[Path, Path, Path],
    daemons: list[Daemon],
) -> None:  # fmt: skip
    client, server = pair
    a, b, script = programs
    start_server(server, "tcp-server", "--port", "80", "--send", "7")
    listener = client.popen([PY, "-m", "netwarden.testing.hello_server", "--port", "55555"],
                            stdout=subprocess.PIPE)  # fmt: skip
    assert listener.stdout is not None
    assert "listening" in listener.stdout.readline()
    env = {"NETWARDEN_REDIRECT_EXE": str(a), "NETWARDEN_REDIRECT_TO": "127.0.0.1:55555",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # fmt: skip
    daemons.append(Daemon(client, tmp_path, "", "--callouts",
                          str(EXAMPLES / "redirect_one_program.py"), env=env))  # fmt: skip
    redirected = client.run([str(a), "-c", HTTP_GET, server.ipv4]).stdout
    assert "Hello from local server" in redirected, redirected
    assert f"X-Original-Destination: {server.ipv4}:80" in redirected
    direct = ask(client, b, script, "tcp", server.ipv4, 80)
    assert direct.startswith("answered")
    assert "Hello" not in direct
    listener.terminate()


def test_a_redirect_target_added_at_run_time_stays_when_the_policy_is_applied_live(
    pair: tuple[Host, Host],
    tmp_path: Path,
    programs: tuple[Path, Path, Path],
    daemons: list[Daemon],
) -> None:
    client, server = pair
    a, _b, _script = programs
    start_server(server, "tcp-server", "--port", "80", "--send", "7")
    hello = [PY, "-m", "netwarden.testing.hello_server", "--port", "55555"]
    listener = client.popen(hello, stdout=subprocess.PIPE)
    assert listener.stdout is not None
    assert "listening" in listener.stdout.readline()
    env = {
        "NETWARDEN_REDIRECT_EXE": str(a),
        "NETWARDEN_REDIRECT_TO": "127.0.0.1:55555",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    callout = str(EXAMPLES / "redirect_one_program.py")
    daemons.append(Daemon(client, tmp_path, "", "--web", "--callouts", callout, env=env))
    first = client.run([str(a), "-c", HTTP_GET, server.ipv4]).stdout
    assert "Hello from local server" in first, first  # the target joined the kernel's rules
    token = (Path(os.environ["NETWARDEN_STATE_DIR"]) / "api-token").read_text().strip()
    rule = '[[rule]]\naction = "block"\ndirection = "out"\nport = 9\n'
    post = ["curl", "-s", "-X", "POST", "-H", f"Authorization: Bearer {token}"]
    post += ["-H", "Content-Type: application/json"]
    post += ["-d", json.dumps({"text": rule, "dry_run": False})]
    applied = client.run([*post, "http://127.0.0.1:8470/api/policy/apply"]).stdout
    assert json.loads(applied)["applied"] is True, applied
    again = client.run([str(a), "-c", HTTP_GET, server.ipv4]).stdout
    assert "Hello from local server" in again, again  # still redirected
    listener.terminate()


HTTP_GET = """
import socket, sys
sock = socket.create_connection((sys.argv[1], 80), timeout=5)
sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
data = b""
while chunk := sock.recv(4096):
    data += chunk
print(data.decode())
"""


def test_flow_callouts_hear_each_flow_with_its_process_and_final_bytes(
    pair: tuple[Host, Host], tmp_path: Path, daemons: list[Daemon],
) -> None:  # fmt: skip
    client, server = pair
    start_server(server, "tcp-server", "--port", "7002", "--send", "50000")
    log = tmp_path / "flows.ndjson"
    env = {"NETWARDEN_MONITOR_LOG": str(log), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    daemons.append(Daemon(client, tmp_path, "", "--callouts",
                          str(EXAMPLES / "connection_monitor.py"), env=env))  # fmt: skip
    client.run([PY, "-m", "netwarden.testing.traffic", "tcp-client", "--host", server.ipv4,
                "--port", "7002", "--send", "20000", "--recv", "50000"])  # fmt: skip
    deadline = time.monotonic() + 20
    deleted: list[dict[str, object]] = []
    while not deleted and time.monotonic() < deadline:
        time.sleep(0.5)
        lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        deleted = [e for e in lines if e["event"] == "deleted" and e["remote"].endswith(":7002")]
    assert deleted, "flow_deleted never heard of the connection"
    flow = deleted[0]
    assert flow["bytes_sent"] == 20_000
    # The kernel does not say whether the peer's FIN was counted (README, "How the
    # monitor knows"): received bytes at close may read one short.
    assert flow["bytes_received"] in (49_999, 50_000)
    assert flow["exe"] == str(Path(PY).resolve())
    established = [
        e for e in lines if e["event"] == "established" and e["remote"] == flow["remote"]
    ]
    assert established
    assert established[0]["pid"] == flow["pid"]


RAISING = """
from netwarden.callout.api import Callout

class Broken(Callout):
    def classify(self, connection):
        raise RuntimeError("this callout is broken")

callouts = [Broken()]
"""


@pytest.mark.parametrize(("mode", "outcome"), [("open", "answered"), ("closed", "refused")])
def test_a_raising_callout_is_logged_and_the_fail_mode_decides(
    pair: tuple[Host, Host], tmp_path: Path, programs: tuple[Path, Path, Path],
    daemons: list[Daemon], mode: str, outcome: str,
) -> None:  # fmt: skip
    client, server = pair
    _a, b, script = programs
    start_server(server, "tcp-server", "--port", "7003", "--send", "5")
    broken = tmp_path / "broken.py"
    broken.write_text(RAISING)
    daemon = Daemon(client, tmp_path, "", "--callouts", str(broken), "--fail-mode", mode)
    daemons.append(daemon)
    assert ask(client, b, script, "tcp", server.ipv4, 7003).split()[0] == outcome
    said = daemon.stop()
    assert "callout Broken at connect raised RuntimeError: this callout is broken" in said
    assert f"fail-{mode}" in said


def test_a_killed_daemon_fails_open_and_the_next_down_cleans_up(
    pair: tuple[Host, Host], tmp_path: Path, programs: tuple[Path, Path, Path],
    daemons: list[Daemon],
) -> None:  # fmt: skip
    client, server = pair
    a, b, script = programs
    start_server(server, "tcp-server", "--port", "7004", "--send", "5")
    policy = blocking(a)
    daemon = Daemon(client, tmp_path, policy, "--fail-mode", "open")
    daemons.append(daemon)
    assert "NETWARDEN-CONNECT" in queue_chain(client)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=10)
    assert ask(client, b, script, "tcp", server.ipv4, 7004).startswith("answered")
    result = client.run([PY, "-m", "netwarden", "down"])
    assert "removed" in result.stdout
    assert "NETWARDEN" not in queue_chain(client)
    assert client.run(["nft", "list", "tables"]).stdout.strip() == ""
    assert ask(client, a, script, "tcp", server.ipv4, 7004).startswith("answered")


def test_a_killed_daemon_fails_closed_until_the_next_up(
    pair: tuple[Host, Host], tmp_path: Path, programs: tuple[Path, Path, Path],
    daemons: list[Daemon],
) -> None:  # fmt: skip
    client, server = pair
    a, b, script = programs
    start_server(server, "tcp-server", "--port", "7005", "--send", "5")
    policy = blocking(a)
    daemon = Daemon(client, tmp_path, policy, "--fail-mode", "closed")
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=10)
    assert ask(client, b, script, "tcp", server.ipv4, 7005) == "timeout"
    daemons.append(again := Daemon(client, tmp_path, policy, "--fail-mode", "closed"))
    assert "cleaning up after a daemon that did not stop" in "".join(again.said)
    assert ask(client, b, script, "tcp", server.ipv4, 7005).startswith("answered")
    assert ask(client, a, script, "tcp", server.ipv4, 7005) == "refused"


QUICK = """
import socket, sys
protocol, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if protocol == "tcp":
    socket.create_connection((host, port)).sendall(b"x" * 1000)
else:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (host, port))
"""


def test_a_process_that_connects_and_exits_at_once_is_decided_with_its_exe(
    pair: tuple[Host, Host], tmp_path: Path, programs: tuple[Path, Path, Path],
    daemons: list[Daemon],
) -> None:  # fmt: skip
    client, server = pair
    a, _b, _script = programs
    start_server(server, "tcp-server", "--port", "7006")
    start_server(server, "udp-server", "--port", "7007")
    quick = tmp_path / "quick.py"
    quick.write_text(QUICK)
    daemons.append(daemon := Daemon(client, tmp_path, ""))
    # Without a classifying callout the daemon runs no CONNECT layer: load one.
    listed = client.run([PY, "-m", "netwarden", "callouts", "list"]).stdout
    assert "runs no callouts and no rules by program" in listed
    daemon.stop()
    notifier = str(EXAMPLES / "new_program_notifier.py")
    daemons.append(daemon := Daemon(client, tmp_path, "", "--callouts", notifier))
    for protocol, port in (("tcp", 7006), ("udp", 7007)):
        started = time.monotonic()
        client.run([str(a), "-S", str(quick), protocol, server.ipv4, str(port)])
        assert time.monotonic() - started < 1.0
    decided = daemon.decisions(2)
    assert {d["flow"].split()[0] for d in decided} == {"tcp", "udp"}
    deadline = time.monotonic() + 5  # the daemon writes its callouts' counters every second
    while True:
        listing = client.run([PY, "-m", "netwarden", "callouts", "list", "--json"]).stdout
        listed = json.loads(listing)
        if listed["decided"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert listed["running"] is True
    assert listed["queue"] == "iptables-nft NFQUEUE"
    [notifier] = listed["callouts"]
    assert (notifier["name"], notifier["layers"]) == ("new program notifier", ["connect"])
    assert notifier["calls"] >= 2
    assert notifier["verdicts"].get("continue", 0) >= 2
    for decision in decided:
        assert "program-a (pid" in decision["process"], decided
        assert str(a) in decision["process"]


HOW_NAMED = """
import os
from netwarden.callout.api import Callout

class HowNamed(Callout):
    def classify(self, connection):
        process = connection.process
        with open(os.environ["NETWARDEN_NAMED_LOG"], "a") as log:
            log.write(f"{connection.transport} {connection.direction} "
                      f"{connection.attribution.method} {process.exe if process else '-'}\\n")
        return None

callouts = [HowNamed()]
"""

LISTENER = """
import socket, sys
server = socket.create_server(("", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
conn, _ = server.accept()
conn.sendall(b"hello")
conn.close()
"""


def test_tcp_connections_are_named_by_the_kernel_as_they_connect(
    pair: tuple[Host, Host],
    tmp_path: Path,
    programs: tuple[Path, Path, Path],
    daemons: list[Daemon],
) -> None:
    """The C module's BPF program notes which process put each TCP socket into SYN-SENT
    or LISTEN (no walk of open files); UDP senders are found by their open files."""
    client, server = pair
    a, b, script = programs
    start_server(server, "tcp-server", "--port", "7012", "--send", "5")
    start_server(server, "udp-server", "--port", "7013", "--reply", "5")
    callout = tmp_path / "how_named.py"
    callout.write_text(HOW_NAMED)
    log = tmp_path / "named.log"
    env = {"NETWARDEN_NAMED_LOG": str(log), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    daemons.append(Daemon(client, tmp_path, "", "--callouts", str(callout), env=env))
    for program in (a, b):
        assert ask(client, program, script, "tcp", server.ipv4, 7012).startswith("answered")
        assert ask(client, program, script, "tcp", server.ipv6, 7012).startswith("answered")
    assert ask(client, a, script, "udp", server.ipv4, 7013).startswith("answered")
    listener_script = tmp_path / "listener.py"
    listener_script.write_text(LISTENER)
    listener = client.popen([str(b), str(listener_script), "7014"], stdout=subprocess.PIPE)
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "ready"
    assert ask(server, Path(PY), script, "tcp", client.ipv4, 7014) == "answered hello"
    listener.wait(timeout=10)
    lines = log.read_text().splitlines()
    # A datagram reaches the queue inside its sendmsg(), before the BPF program that
    # names UDP senders has run (as sendmsg returns): most often it has by the time the
    # daemon looks, else the socket's open files name the sender.
    assert lines[4] in (f"udp out flow-event {a}", f"udp out socket-owner {a}")
    assert lines[:4] + lines[5:] == [
        f"tcp out flow-event {a}",
        f"tcp out flow-event {a}",
        f"tcp out flow-event {b}",
        f"tcp out flow-event {b}",
        f"tcp in flow-event {b}",
    ]


IN_PID_NAMESPACE = """
{py} -m netwarden up --policy {policy} --no-history --callouts {callout} 2>{said} &
up=$!
for i in $(seq 100); do grep -q "netwarden: up:" {said} && break; sleep 0.1; done
{program} {script} tcp {address} 7015
kill -TERM $up
wait $up
"""


def test_in_a_pid_namespace_of_its_own_processes_are_found_by_their_open_files(
    pair: tuple[Host, Host], tmp_path: Path, programs: tuple[Path, Path, Path]
) -> None:
    """BPF programs number processes as the initial pid namespace does: a daemon in a
    pid namespace of its own (a container's) does not take their pids for its own, and
    still names the program behind a connection, from its open files."""
    client, server = pair
    a, _b, script = programs
    start_server(server, "tcp-server", "--port", "7015", "--send", "5")
    callout = tmp_path / "how_named.py"
    callout.write_text(HOW_NAMED)
    (tmp_path / "policy.toml").write_text("")
    log, said = tmp_path / "named.log", tmp_path / "up.err"
    shell = IN_PID_NAMESPACE.format(
        py=PY,
        policy=tmp_path / "policy.toml",
        callout=callout,
        said=said,
        program=a,
        script=script,
        address=server.ipv4,
    )
    named_log = f"NETWARDEN_NAMED_LOG={log}"
    unshared = ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", shell]
    result = client.run(["env", named_log, *unshared])
    assert result.stdout.startswith("answered")
    assert "connecting processes are found by their open files" in said.read_text()
    assert log.read_text().splitlines() == [f"tcp out socket-owner {a}"]


OWNERS_PROBE = """
import json, os, socket, struct
from netwarden.platform.linux import _native
reader = _native.ConnectReader(-1, 0, os.stat("/proc/self/ns/net").st_ino)
assert reader.owners_error == 0, os.strerror(reader.owners_error)

def cookie(sock):
    return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, 57, 8))[0]

listener = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(listener.getsockname())
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.sendto(b"x", listener.getsockname())
quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
quiet.bind(("127.0.0.1", 0))
named = {name: reader.connector(cookie(sock)) for name, sock in
         (("listener", listener), ("client", client), ("sender", sender), ("quiet", quiet))}
print(json.dumps({"pid": os.getpid(), "uid": os.getuid(), "named": named}))
reader.close()
"""


def test_the_kernel_names_connecting_listening_and_sending_processes(
    pair: tuple[Host, Host],
) -> None:
    """The BPF programs behind the CONNECT layer's process lookup, in a namespace of the
    test: a TCP socket's process as it connects or listens, a UDP socket's as it first
    sends; a socket that did neither is not named."""
    client, _server = pair
    probe = json.loads(client.run([PY, "-c", OWNERS_PROBE]).stdout)
    me = [probe["pid"], probe["uid"]]
    assert probe["named"] == {"listener": me, "client": me, "sender": me, "quiet": None}


WATCHER = """
import os
from netwarden.callout.api import Callout
from netwarden.model.connect import BLOCK

class NoSecrets(Callout):
    def watch_packets(self, connection):
        return connection.remote.port == 7010

    def packet(self, packet):
        with open(os.environ["NETWARDEN_PACKET_LOG"], "a") as log:
            log.write(f"{packet.direction} {packet.size} {packet.payload!r}\\n")
        return BLOCK if b"secret" in packet.payload else None

callouts = [NoSecrets()]
"""

SENDER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
sock.connect((sys.argv[1], int(sys.argv[2])))
answers = []
for word in (b"first", b"a secret", b"last"):
    sock.send(word)
    try:
        answers.append(sock.recv(100).decode())
    except socket.timeout:
        answers.append("-")
print(" ".join(answers))
"""


def test_a_packet_callout_sees_every_packet_of_the_connections_it_watches(
    pair: tuple[Host, Host], tmp_path: Path, daemons: list[Daemon],
) -> None:  # fmt: skip
    client, server = pair
    echo = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    echo += "s.bind(('0.0.0.0', PORT))\nprint('ready', flush=True)\n"
    echo += "while True:\n    data, peer = s.recvfrom(100)\n    s.sendto(b'ok:' + data, peer)\n"
    for port in (7010, 7011):
        proc = server.popen([PY, "-c", echo.replace("PORT", str(port))], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    watcher = tmp_path / "watcher.py"
    watcher.write_text(WATCHER)
    log = tmp_path / "packets.log"
    env = {"NETWARDEN_PACKET_LOG": str(log), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    daemons.append(Daemon(client, tmp_path, "", "--callouts", str(watcher), env=env))
    sender = tmp_path / "sender.py"
    sender.write_text(SENDER)
    watched = client.run([PY, str(sender), server.ipv4, "7010"]).stdout.split()
    assert watched == ["ok:first", "-", "ok:last"]  # the secret was dropped on its way out
    other = client.run([PY, str(sender), server.ipv4, "7011"]).stdout.split()
    assert other == ["ok:first", "ok:a", "secret", "ok:last"]  # not watched: untouched
    # Every packet after the first (the first is the CONNECT layer's), both ways, with
    # its IP size and payload; nothing of the connection to 7011.
    assert log.read_text().splitlines() == [
        "in 36 b'ok:first'",
        "out 36 b'a secret'",
        "out 32 b'last'",
        "in 35 b'ok:last'",
    ]


def test_a_queue_held_by_another_program_is_said_and_nothing_is_left(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, _server = pair
    holder = client.popen([PY, "-c", "from netwarden.platform.linux.nfqueue import NfQueue\n"
                           "q = NfQueue(20055, fail_open=True)\nprint('held', flush=True)\n"
                           "import time; time.sleep(60)"], stdout=subprocess.PIPE)  # fmt: skip
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    policy = tmp_path / "empty.toml"
    policy.write_text("")
    result = client.run([PY, "-m", "netwarden", "up", "--policy", str(policy), "--no-history",
                         "--callouts", str(EXAMPLES / "new_program_notifier.py")],
                        check=False)  # fmt: skip
    assert result.returncode == 1
    assert "NFQUEUE 20055 is bound by another program" in result.stderr
    assert "Traceback" not in result.stderr
    assert "NETWARDEN" not in queue_chain(client)
    assert client.run(["nft", "list", "tables"]).stdout.strip() == ""

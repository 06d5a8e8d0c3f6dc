"""Proxies under a redirect that covers their own destinations, and under floods:
marked upstream connections, bounded listeners, and one SIGTERM that stops them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_server, traffic

pytestmark = pytest.mark.root


def _proxy(host: Host, *args: str) -> subprocess.Popen[str]:
    proc = host.popen([PY, "-m", "netwarden", "proxy", *args], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    assert "proxy listening" in proc.stderr.readline()
    return proc


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _stops_on_one_sigterm(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)


def test_a_root_socks5_listener_marks_its_upstream_so_a_redirect_does_not_loop(
    pair: tuple[Host, Host],
) -> None:
    """client -(redirect, every user)-> transparent proxy -(socks5 hop)-> SOCKS5
    listener -> server: the SOCKS5 listener's own connection to port 5000 carries the
    proxy mark, so the redirect skips it instead of sending it round again."""
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000", "--send", "100000")
    socks = _proxy(client, "--socks5", "127.0.0.1:1080")
    relay = _proxy(client, "--listen", "127.0.0.1:15001", "--upstream", "socks5://127.0.0.1:1080")
    client.run([PY, "-m", "netwarden", "redirect", "--dport", "5000", "--to", "127.0.0.1:15001"])
    report = traffic(client, "tcp-client", "--host", server.ipv4, "--port", "5000", "--send",
                     "1000", "--recv", "100000")  # fmt: skip
    assert report["received"] == 100_000
    time.sleep(0.5)
    assert relay.poll() is None
    assert _descriptors(socks.pid) < 40
    _stops_on_one_sigterm(socks)
    _stops_on_one_sigterm(relay)
    client.run([PY, "-m", "netwarden", "down"])


def test_a_loop_through_a_user_mode_listener_is_refused_not_amplified(
    pair: tuple[Host, Host],
) -> None:
    """The SOCKS5 listener's upstream redirected straight back to itself (a rule that
    sends port 5000 to it, unmarked because --mark 0): the hop guard refuses its own
    connection arriving back, once, instead of relaying it again and again."""
    client, server = pair
    start_server(server, "tcp-server", "--port", "5000", "--send", "10")
    socks = _proxy(client, "--socks5", "127.0.0.1:1080", "--mark", "0")
    client.run([PY, "-m", "netwarden", "redirect", "--dport", "5000", "--to", "127.0.0.1:1080"])
    probe = f"""
import socket, struct
s = socket.create_connection(("127.0.0.1", 1080), timeout=5)
s.sendall(b"\\x05\\x01\\x00"); s.recv(2)
s.sendall(b"\\x05\\x01\\x00\\x01" + socket.inet_aton("{server.ipv4}") + struct.pack(">H", 5000))
print(s.recv(10)[1])
"""
    reply = client.run([PY, "-c", probe], check=False)
    assert reply.returncode == 0, reply.stderr
    time.sleep(1)
    assert socks.poll() is None
    assert _descriptors(socks.pid) < 40
    _stops_on_one_sigterm(socks)
    _out, err = socks.communicate()
    assert "redirection loop" in err
    client.run([PY, "-m", "netwarden", "down"])


def test_a_listener_refuses_connections_beyond_its_bound_and_says_so(
    pair: tuple[Host, Host],
) -> None:
    client, _server = pair
    socks = _proxy(client, "--socks5", "127.0.0.1:1080", "--max-connections", "2")
    held = client.popen([PY, "-c", """
import socket, sys, time
held = [socket.create_connection(("127.0.0.1", 1080)) for _ in range(2)]
for conn in held:  # a SOCKS5 greeting answered: the proxy holds the connection
    conn.sendall(b"\\x05\\x01\\x00")
    assert conn.recv(2) == b"\\x05\\x00"
extra = socket.create_connection(("127.0.0.1", 1080))
extra.settimeout(3)
extra.sendall(b"\\x05\\x01\\x00")
try:
    print("answered" if extra.recv(2) else "closed")
except OSError as exc:
    print("closed", exc)
"""], stdout=subprocess.PIPE)  # fmt: skip
    out, _err = held.communicate(timeout=20)
    assert out.startswith("closed")
    _stops_on_one_sigterm(socks)
    _out, err = socks.communicate()
    assert "2 connections open, the limit; refusing new ones" in err


COUNTING_SERVER = """
import socket, sys
listener = socket.socket(socket.AF_INET6)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("::", 8080)); listener.listen(8)
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\\r\\n\\r\\n")
    length = 0
    for line in head.split(b"\\r\\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        body += conn.recv(65536)
    total = str(len(head) + 4 + len(body)).encode()
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n%s"
                 % (len(total), total))
    conn.close()
"""


def test_the_http_proxy_counts_every_byte_of_absolute_uri_requests(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    counting = server.popen([PY, "-c", COUNTING_SERVER], stdout=subprocess.PIPE)
    assert counting.stdout is not None
    assert counting.stdout.readline().strip() == "ready"
    proxy = _proxy(client, "--http", "127.0.0.1:3128")
    body = tmp_path / "body"
    body.write_bytes(b"x" * 1_000_000)
    url = f"http://{server.ipv4}:8080/upload"
    for extra in ([], ["--data-binary", f"@{body}"]):
        answer = client.run(["curl", "-sS", "--max-time", "10", "-x", "http://127.0.0.1:3128",
                             *extra, url])  # fmt: skip
        received_by_server = int(answer.stdout)
        assert proxy.stdout is not None
        flow = json.loads(proxy.stdout.readline())
        assert flow["bytes_up"] == received_by_server
        assert flow["bytes_down"] > 0
    assert received_by_server > 1_000_000
    _stops_on_one_sigterm(proxy)

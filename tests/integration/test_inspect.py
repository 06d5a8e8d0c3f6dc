"""The inspecting proxy in netlab, with real clients (curl, openssl) and servers: HTTP
rules on plain HTTP and inside intercepted TLS, the CA, refused upstreams, fail-open
for clients that refuse our certificate, and TLS that is not HTTP."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netwarden.testing import web
from netwarden.testing.certs import make_server_files
from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_up
from tests.integration.inspecting import Setup, start_inspecting

pytestmark = pytest.mark.root

BLOCKING = """\
[inspect]
intercept_tls = true
{upstream_ca}
[[inspect.http]]
name = "no-blocked-test"
action = "block"
host = ["blocked.test", "*.blocked.test"]

[[inspect.http]]
name = "no-secrets"
action = "block"
path_prefix = ["/secret"]
"""
POLICY = (
    BLOCKING
    + """
[[inspect.http]]
name = "tag"
action = "rewrite"
set_request_headers = {{ "X-Inspected-By" = "netwarden" }}
remove_response_headers = ["server"]
"""
)


@pytest.fixture
def inspecting(pair: tuple[Host, Host], tmp_path: Path) -> Setup:
    return start_inspecting(pair, tmp_path, trust_upstream=True, policy_text=POLICY)


@pytest.mark.parametrize(
    ("family", "version"), [(4, "--http1.1"), (6, "--http1.1"), (4, "--http2"), (6, "--http2")]
)
def test_https_through_interception_with_rules(
    inspecting: Setup, family: int, version: str
) -> None:
    server = inspecting.server.ipv4 if family == 4 else f"[{inspecting.server.ipv6}]"
    seen = inspecting.curl(version, "--cacert", inspecting.ca, "-i", f"https://{server}/headers")
    assert seen.returncode == 0, seen.stderr
    head, _, body = seen.stdout.partition("\n\n")
    assert head.startswith("HTTP/2 200" if version == "--http2" else "HTTP/1.1 200")
    sent = {name.lower(): value for name, value in json.loads(body).items()}
    assert sent["x-inspected-by"] == "netwarden"  # request header added
    assert "netlab-web" not in head  # the Server header was removed
    blocked = inspecting.curl(
        version, "--cacert", inspecting.ca, "-i", f"https://{server}/secret/x"
    )
    assert blocked.stdout.split(None, 2)[1] == "403"
    assert "no-secrets" in blocked.stdout
    exchanges = inspecting.records("http_exchange", 2)
    assert [(e["path"], e["verdict"], e["rule"]) for e in exchanges] == [
        ("/headers", "allowed", ""),
        ("/secret/x", "blocked", "no-secrets"),
    ]
    alpn = inspecting.records("tls_intercepted")[0]["alpn"]
    assert alpn == ("h2" if version == "--http2" else "http/1.1")
    flow = inspecting.records("transparent")[0]
    assert flow["app"]["protocol"] == "tls"
    assert flow["app"]["inspected"] is True
    assert flow["app"]["ja4"].startswith("t1")
    assert flow["process"]["name"] == "curl"  # the proxy's engine names the client


def test_keep_alive_exchanges_no_rule_rewrites_on_one_connection(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    """Without header rewrites, HTTP/1.1 heads pass as they came (no h11): four requests
    on one intercepted connection, a blocked one among them, a long body by count."""
    setup = start_inspecting(pair, tmp_path, trust_upstream=True, policy_text=BLOCKING)
    url = f"https://{setup.server.ipv4}"
    paths = ["/headers", "/secret/x", "/bytes/300000", "/last"]
    outputs = [tmp_path / f"answer{number}" for number in range(len(paths))]
    downloads: list[str] = []
    for path, output in zip(paths, outputs, strict=True):
        downloads += ["-o", str(output), url + path]
    result = setup.curl(
        "--http1.1",
        "--cacert",
        setup.ca,
        "-H",
        "X-Mixed-CASE: kept  as is",
        "-w",
        "%{num_connects} %{http_code}\\n",
        *downloads,
    )
    assert result.returncode == 0, result.stderr
    answers = [line.split() for line in result.stdout.splitlines()]
    assert answers == [["1", "200"], ["0", "403"], ["0", "200"], ["0", "200"]]  # one connection
    assert json.loads(outputs[0].read_text())["X-Mixed-CASE"] == "kept  as is"
    assert "no-secrets" in outputs[1].read_text()
    assert outputs[2].read_bytes() == b"x" * 300_000
    assert outputs[3].read_text() == "hello from /last\n"
    exchanges = setup.records("http_exchange", 4)
    assert [(e["path"], e["verdict"], e["status"]) for e in exchanges] == [
        ("/headers", "allowed", 200),
        ("/secret/x", "blocked", 403),
        ("/bytes/300000", "allowed", 200),
        ("/last", "allowed", 200),
    ]


def test_http2_streams_on_one_connection_each_decided(inspecting: Setup) -> None:
    """curl multiplexes three requests on one HTTP/2 connection; the middle one is
    blocked, the others arrive whole (a 5 MB body under flow control)."""
    server = inspecting.server.ipv4
    urls = [
        f"https://{server}/bytes/5000000",
        f"https://{server}/secret/two",
        f"https://{server}/third",
    ]
    fetched = inspecting.curl(
        "--http2",
        "--parallel",
        "--cacert",
        inspecting.ca,
        "-w",
        "%{http_code} %{size_download} %{http_version}\n",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        *urls,
    )
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(fetched.stdout.splitlines()) == ["200 18 2", "200 5000000 2", "403 257 2"]
    assert len(inspecting.records("tls_intercepted", 2, timeout=3)) == 1  # one connection


def test_sni_and_keep_alive_requests_each_decided(inspecting: Setup) -> None:
    resolve = f"web.test:443:{inspecting.server.ipv4}"
    both = inspecting.curl(
        "--http1.1",
        "--cacert",
        inspecting.ca,
        "--resolve",
        resolve,
        "https://web.test/first",
        "https://web.test/secret/two",
        "https://web.test/third",
    )
    assert both.returncode == 0, both.stderr
    assert "hello from /first" in both.stdout
    assert "Blocked by netwarden" in both.stdout
    assert "hello from /third" in both.stdout
    intercepted = inspecting.records("tls_intercepted")[0]
    assert intercepted["server_name"] == "web.test"
    assert intercepted["alpn"] == "http/1.1"
    flows = inspecting.records("transparent")
    assert flows[0]["app"]["sni"] == "web.test"


def test_socks5_and_http_connect_are_inspected_the_same_way(inspecting: Setup) -> None:
    """The user-mode listeners use the same layers: a CONNECT through the HTTP proxy is
    intercepted; SOCKS5 carries plain HTTP that the rules see."""
    server = inspecting.server.ipv4
    tunnelled = inspecting.curl(
        "--http1.1",
        "--proxy",
        "http://127.0.0.1:3128",
        "--cacert",
        inspecting.ca,
        "-i",
        f"https://{server}/secret/tunnel",
    )
    assert tunnelled.stdout.startswith("HTTP/1.1 200 Connection Established")
    assert "HTTP/1.1 403" in tunnelled.stdout
    socks = inspecting.curl("--socks5", "127.0.0.1:1080", "-i", f"http://{server}/secret/socks")
    assert socks.stdout.startswith("HTTP/1.1 403")
    forwarded = inspecting.curl("--proxy", "http://127.0.0.1:3128", f"http://{server}/fine")
    assert forwarded.stdout == "hello from /fine\n"
    paths = [(e["path"], e["verdict"]) for e in inspecting.records("http_exchange", 3)]
    assert paths == [
        ("/secret/tunnel", "blocked"),
        ("/secret/socks", "blocked"),
        ("/fine", "allowed"),
    ]


def test_plain_http_block_page_by_host(inspecting: Setup) -> None:
    server = inspecting.server.ipv4
    blocked = inspecting.curl("-i", "-H", "Host: ads.blocked.test", f"http://{server}/")
    assert blocked.stdout.startswith("HTTP/1.1 403")
    assert "no-blocked-test" in blocked.stdout
    fine = inspecting.curl(f"http://{server}/hello")
    assert fine.stdout == "hello from /hello\n"


def test_a_client_refusing_our_ca_gets_through_untouched_next_time(inspecting: Setup) -> None:
    server = inspecting.server.ipv4
    first = inspecting.curl(f"https://{server}/")  # trusts neither our CA nor the test CA
    assert first.returncode == 60
    assert inspecting.records("tls_failed")[0]["side"] == "client"
    test_ca = str(Path(inspecting.ca).parents[2] / "server" / "test-ca.pem")
    second = inspecting.curl("--cacert", test_ca, f"https://{server}/untouched")
    assert second.stdout == "hello from /untouched\n"  # the server's own certificate
    remembered = inspecting.netwarden("ca", "passthrough", "list", "--json")
    entries = {(e["host"], e["program"]) for e in map(json.loads, remembered.stdout.splitlines())}
    assert (server, "/usr/bin/curl") in entries  # the client program, with --processes
    inspecting.netwarden("ca", "passthrough", "clear")
    third = inspecting.curl("--cacert", test_ca, f"https://{server}/")
    assert third.returncode == 60  # intercepted again


def test_openssl_s_client_gets_the_alpn_the_server_chose(inspecting: Setup) -> None:
    shown = inspecting.client.run(
        [
            "openssl",
            "s_client",
            "-CAfile",
            inspecting.ca,
            "-alpn",
            "h2,http/1.1",
            "-connect",
            f"{inspecting.server.ipv4}:443",
        ],
        input="",
        check=False,
        timeout=15,
    )
    assert "ALPN protocol: h2" in shown.stdout  # the server's choice, offered to it
    assert "Verification: OK" in shown.stdout
    assert "issuer=O = netwarden" in shown.stdout


ECHO_CLIENT = r"""
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
context.set_alpn_protocols(["h2", "http/1.1", "echo-proto"])
with socket.create_connection((sys.argv[2], 443), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname="web.test") as tls:
        tls.sendall(b"ping from the client\n")
        print(tls.selected_alpn_protocol(), tls.recv(100).decode().strip())
"""


def test_tls_that_is_not_http_works_through_interception(inspecting: Setup) -> None:
    """A line service over TLS on port 443 (openssl s_server -rev answers each line
    reversed), with its own ALPN protocol: the bytes go untouched both ways."""
    server = inspecting.server
    _test_ca, cert, key = (
        Path(inspecting.ca).parents[2] / "server" / n
        for n in ("test-ca.pem", "server.pem", "server.key")
    )
    server.stop_all()  # frees port 443
    server.popen(
        [
            "openssl",
            "s_server",
            "-rev",
            "-accept",
            "443",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-alpn",
            "echo-proto",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listening = server.run(["ss", "-Hltn", "sport = :443"]).stdout
        if listening.strip():
            break
        time.sleep(0.05)
    talk = inspecting.client.run(
        [PY, "-c", ECHO_CLIENT, inspecting.ca, server.ipv4], check=False, timeout=15
    )
    assert talk.stdout.split(None, 1) == ["echo-proto", "tneilc eht morf gnip\n"], talk.stderr


@pytest.fixture
def distrusting(pair: tuple[Host, Host], tmp_path: Path) -> Setup:
    return start_inspecting(pair, tmp_path, trust_upstream=False, policy_text=POLICY)


def test_an_untrusted_upstream_is_refused_explicitly(distrusting: Setup) -> None:
    refused = distrusting.curl(
        "--http1.1", "--cacert", distrusting.ca, "-i", f"https://{distrusting.server.ipv4}/"
    )
    assert refused.stdout.startswith("HTTP/1.1 502")
    assert "upstream certificate refused" in refused.stdout
    failed = distrusting.records("tls_failed")[0]
    assert failed["side"] == "server"
    assert "certificate verify failed" in failed["reason"] or "unable to get" in failed["reason"]


def _up(
    client: Host, policy: Path, *extra: str, env: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], str]:
    return start_up(client, policy, *extra, env=env)


def _lines_until(
    process: subprocess.Popen[str], wanted: Callable[[str], bool], timeout: float = 15.0
) -> list[str]:
    """The process's output lines up to the first one wanted (all read until then, or
    until timeout)."""
    assert process.stdout is not None
    lines: list[str] = []
    pending = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([process.stdout], [], [], 0.1)[0]:
            continue
        chunk = os.read(process.stdout.fileno(), 65536).decode()
        if not chunk:
            break
        *complete, pending = (pending + chunk).split("\n")
        lines += complete
        if any(wanted(line) for line in complete):
            break
    return lines


UP_POLICY = """
[settings]
proxy_port = 15001

[[redirect]]
name = "inspect-web"
port = [80, 443]
to = "proxy"

[inspect]
intercept_tls = true
upstream_ca = "{upstream_ca}"

[[inspect.http]]
name = "no-secrets"
action = "block"
path_prefix = ["/secret"]
"""


def test_up_inspects_what_its_policy_redirects_and_records_the_protocol(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    """netwarden up with [inspect]: blocked paths inside TLS, and the history shows each
    flow's protocol and server name."""
    client, server = pair
    tmp_path.chmod(0o755)
    test_ca, cert, key = make_server_files(tmp_path / "server", [server.ipv4, "web.test"])
    web.start(server, 443, cert, key, h2=True)
    env = ("env", f"NETWARDEN_STATE_DIR={tmp_path / 'state'}")
    client.run([*env, PY, "-m", "netwarden", "ca", "init"])
    policy = tmp_path / "policy.toml"
    policy.write_text(UP_POLICY.format(upstream_ca=test_ca))
    history = tmp_path / "history.sqlite"
    daemon, said = _up(client, policy, "--history", str(history), env=env)
    assert "inspecting: 1 HTTP rule, TLS intercepted" in said
    watch = client.popen(
        [PY, "-m", "netwarden", "monitor", "--watch", "--no-history"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    watched = _lines_until(watch, lambda line: True)  # it has read the table once
    ca = str(tmp_path / "state" / "ca" / "ca.pem")

    def curl(*args: str) -> subprocess.CompletedProcess[str]:
        return client.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                ca,
                "--resolve",
                f"web.test:443:{server.ipv4}",
                *args,
            ],
            check=False,
        )

    fine = curl("https://web.test/fine")
    assert fine.stdout == "hello from /fine\n", fine.stderr
    blocked = curl("-o", "/dev/null", "-w", "%{http_code}", "https://web.test/secret")
    assert blocked.stdout == "403"
    # A monitor started apart shows what the daemon's proxy identified, too.
    watched += _lines_until(
        watch,
        lambda line: (
            '"event":"closed"' in line
            and '"remote_port":443' in line
            and '"name":"curl"' in line
            and '"app":"tls web.test' in line
        ),
    )
    watch.terminate()
    watch.wait(timeout=20)
    client.run([PY, "-m", "netwarden", "down"])
    out, _err = daemon.communicate(timeout=20)
    apps = {
        json.loads(line)["app"]
        for line in watched
        if '"remote_port":443' in line and '"name":"curl"' in line
    }
    assert "tls web.test h2,http/1.1" in apps, watched[-20:]
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["path"], r["verdict"]) for r in records if r["kind"] == "http_exchange"] == [
        ("/fine", "allowed"),
        ("/secret", "blocked"),
    ]
    flows = json.loads(
        client.run(
            [
                PY,
                "-m",
                "netwarden",
                "history",
                "--db",
                str(history),
                "--port",
                "443",
                "--format",
                "json",
            ]
        ).stdout
    )
    curl_flows = [f for f in flows if f["process"] and f["process"]["name"] == "curl"]
    assert len(curl_flows) == 2
    assert {f["app"] for f in curl_flows} == {"tls web.test h2,http/1.1"}


STREAM_POLICY = """
[settings]
proxy_port = 15001

[[redirect]]
name = "through-proxy"
port = 80
to = "proxy"
"""


def test_a_stream_callout_resets_a_connection_that_sends_a_secret(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    """examples/callouts/stream_secret_guard.py sees HTTP bodies through the proxy (the
    word split across two pieces too) and resets the connection that carries it."""
    client, server = pair
    web.start(server, 80)
    policy = tmp_path / "policy.toml"
    policy.write_text(STREAM_POLICY)
    guard = Path(__file__).parents[2] / "examples" / "callouts" / "stream_secret_guard.py"
    daemon, _said = _up(client, policy, "--no-history", "--callouts", str(guard))
    url = f"http://{server.ipv4}/upload"
    fine = client.run(
        ["curl", "-sS", "--max-time", "10", "--data-binary", "x" * 100_000, url], check=False
    )
    assert fine.stdout == "received 100000 bytes\n"
    body = tmp_path / "body"
    body.write_bytes(b"a" * 70_000 + b"TOP-SECRET" + b"b" * 70_000)
    leaked = client.run(
        ["curl", "-sS", "--max-time", "10", "--data-binary", f"@{body}", url], check=False
    )
    assert leaked.returncode in (52, 56), leaked  # reset: no answer
    assert "received" not in leaked.stdout
    client.run([PY, "-m", "netwarden", "down"])
    out, _err = daemon.communicate(timeout=20)
    blocked = [json.loads(line) for line in out.splitlines() if "stream_blocked" in line]
    assert [b["callout"] for b in blocked] == ["secret guard"]


SEND_RAW = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as sock:
    sock.sendall(bytes.fromhex(sys.argv[3]))
    if sys.argv[4] == "half":
        sock.shutdown(socket.SHUT_WR)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
"""


def test_hostile_clients_cost_their_connection_only(inspecting: Setup) -> None:
    """Garbage, a truncated ClientHello, a ClientHello naming a host no certificate can
    carry, an HTTP request line without end: each is refused or passed on, and the
    proxy goes on serving."""
    from tests.unit.test_identify import chrome_hello

    hello = chrome_hello()
    odd_name = hello.replace(b"tls.example", b"tls.exampl\xff")  # same length, not ASCII
    server = inspecting.server.ipv4
    for port, data in (
        (443, b"\x16\x03\x01\xff\xff" + bytes(300)),
        (443, hello[:100]),
        (443, odd_name),
        (80, b"GET /" + b"a" * 40_000),
        (80, bytes(range(256)) * 10),
    ):
        for ending in ("half", "wait"):
            inspecting.client.run(
                [PY, "-c", SEND_RAW, server, str(port), data.hex(), ending], check=False, timeout=20
            )
    # The clients that left in the middle of a handshake were taken for pinning ones.
    assert server in inspecting.netwarden("ca", "passthrough", "list").stdout
    inspecting.netwarden("ca", "passthrough", "clear")
    fine = inspecting.curl("--cacert", inspecting.ca, f"https://{server}/after")
    assert fine.stdout == "hello from /after\n"
    assert inspecting.proxy.poll() is None
    assert inspecting.proxy.stderr is not None
    said = b""
    while select.select([inspecting.proxy.stderr], [], [], 0.2)[0]:
        chunk = os.read(inspecting.proxy.stderr.fileno(), 1 << 16)
        if not chunk:
            break
        said += chunk
    assert b"a bug" not in said, said


def test_up_without_a_ca_for_interception_says_so_and_leaves_nothing(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, _server = pair
    policy = tmp_path / "policy.toml"
    policy.write_text(UP_POLICY.format(upstream_ca=policy))  # any readable file will do
    result = client.run(
        [
            "env",
            f"NETWARDEN_STATE_DIR={tmp_path / 'state'}",
            PY,
            "-m",
            "netwarden",
            "up",
            "--policy",
            str(policy),
            "--no-history",
        ],
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert "intercept_tls needs netwarden's CA" in result.stderr
    assert "Traceback" not in result.stderr
    assert client.run(["nft", "list", "tables"]).stdout.strip() == ""


def test_identification_alone_names_each_flows_protocol(pair: tuple[Host, Host]) -> None:
    """netwarden proxy --inspect without a policy: nothing is decided or decrypted, and
    each flow says what it was (HTTP with its host, TLS with SNI and JA4)."""
    client, server = pair
    web.start(server, 80)
    proxy = client.popen(
        [PY, "-m", "netwarden", "proxy", "--listen", "127.0.0.1:15001", "--inspect"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proxy.stderr is not None
    assert "proxy listening" in proxy.stderr.readline()
    client.run([PY, "-m", "netwarden", "redirect", "--dport", "80", "--to", "127.0.0.1:15001"])
    fetched = client.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            "Host: named.test",
            f"http://{server.ipv4}/secret",
        ],
        check=False,
    )
    assert fetched.stdout == "hello from /secret\n"  # no rule: nothing blocked
    assert proxy.stdout is not None
    flow = json.loads(proxy.stdout.readline())
    assert flow["app"] == {
        "protocol": "http",
        "method": "GET",
        "host": "named.test",
        "path": "/secret",
    }  # identified, not inspected further

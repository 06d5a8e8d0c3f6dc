"""Content scanning and DLP in netlab with real clients and servers: EICAR and card
numbers in downloads and uploads over plain HTTP and intercepted HTTPS (HTTP/1.1 and
HTTP/2), a real clamd with signatures the test writes, clamd down, and the history of
what was found under `netwarden up`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from netwarden.inspect.scanning import EICAR
from netwarden.testing import clamd, web
from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_up
from tests.integration.inspecting import Setup, start_inspecting

pytestmark = pytest.mark.root

CARD = "4111 1111 1111 1111"  # a test number that passes the Luhn check
NOT_A_CARD = "4111 1111 1111 1112"

SCAN_POLICY = """\
[inspect]
intercept_tls = true
{upstream_ca}

[inspect.scan]
scanners = ["eicar"]
hold_back = "64 KiB"

[[inspect.dlp]]
name = "cards"
match = "card"
"""

URLS = {
    "http": ("http://{v4}", ()),
    "https-h1": ("https://{v4}", ("--http1.1",)),
    "https-h2": ("https://{v4}", ("--http2",)),
}


@pytest.fixture
def scanning(pair: tuple[Host, Host], tmp_path: Path) -> Setup:
    return start_inspecting(pair, tmp_path, trust_upstream=True, policy_text=SCAN_POLICY)


def _get(setup: Setup, kind: str, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    base, options = URLS[kind]
    url = base.format(v4=setup.server.ipv4) + path
    return setup.curl("--cacert", setup.ca, *options, *args, url)


def _status(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout.split("\n", 1)[0].split()[1] if done.stdout else ""


@pytest.mark.parametrize("kind", list(URLS))
def test_eicar_downloads_and_uploads_are_blocked_and_clean_ones_pass(
    scanning: Setup, kind: str, tmp_path: Path
) -> None:
    clean = _get(scanning, kind, "/bytes/3000000", "-o", "/dev/null", "-w", "%{size_download}")
    assert clean.stdout == "3000000", clean.stderr
    blocked = _get(scanning, kind, "/eicar", "-i")
    assert _status(blocked) == "403", blocked.stdout + blocked.stderr
    assert "EICAR-Test-File" in blocked.stdout
    assert "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" not in blocked.stdout
    upload = tmp_path / "eicar.com"
    upload.write_bytes(b"some text first\n" + EICAR)
    sent = _get(scanning, kind, "/upload", "-i", "--data-binary", f"@{upload}")
    assert _status(sent) == "403", sent.stdout + sent.stderr
    assert not any("EICAR" in body for body in scanning.received_uploads())
    fine = _get(scanning, kind, "/upload", "--data-binary", "harmless words")
    assert fine.stdout == "received 14 bytes\n", fine.stderr
    found = scanning.records("detection", 2)
    assert [(d["scanner"], d["direction"], d["path"], d["action"]) for d in found] == [
        ("eicar", "download", "/eicar", "blocked"),
        ("eicar", "upload", "/upload", "blocked"),
    ]
    assert {d["signature"] for d in found} == {"EICAR-Test-File"}


@pytest.mark.parametrize("kind", ["http", "https-h2"])
def test_a_card_number_in_a_post_is_blocked_and_logged_redacted(scanning: Setup, kind: str) -> None:
    sent = _get(scanning, kind, "/pay", "-i", "--data-binary", f"name=ann&card={CARD}&cvv=123")
    assert _status(sent) == "403", sent.stdout + sent.stderr
    assert "cards" in sent.stdout
    passed = _get(scanning, kind, "/pay", "--data-binary", f"name=ann&card={NOT_A_CARD}")
    assert passed.stdout.startswith("received"), passed.stderr
    assert scanning.received_uploads() == [f"name=ann&card={NOT_A_CARD}"]
    found = scanning.records("detection")
    assert [(d["scanner"], d["signature"], d["matched"]) for d in found] == [
        ("dlp", "cards", "************1111")
    ]
    scanning.proxy.terminate()
    out, err = scanning.proxy.communicate(timeout=20)
    assert "************1111" in err  # the log line says what was found, redacted
    assert CARD not in out + err
    assert CARD.replace(" ", "") not in out + err


def test_a_signature_past_the_hold_back_resets_the_download(scanning: Setup) -> None:
    """What went before the signature, less the hold-back, went; the client is reset and
    never gets the whole body."""
    done = _get(
        scanning, "http", "/eicar-after/2000000", "-o", "/dev/null", "-w", "%{size_download}"
    )
    assert done.returncode != 0  # curl saw the connection end in the middle
    assert 1_000_000 < int(done.stdout) <= 2_000_000 - 64 * 1024
    assert scanning.records("detection")[0]["action"] == "blocked"


CLAMD_POLICY = """\
[inspect]
intercept_tls = true
upstream_ca = "{upstream_ca}"

[inspect.scan]
scanners = ["clamd"]
clamd = "{socket}"
on_error = "{on_error}"
"""


def test_a_real_clamd_blocks_what_its_signatures_find_and_its_absence_fails_closed(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, _server = pair
    tmp_path.chmod(0o755)
    daemon, sock = clamd.start(tmp_path / "clamd", client)
    setup = start_inspecting(pair, tmp_path, trust_upstream=False, policy_text="")
    test_ca = tmp_path / "server" / "test-ca.pem"

    def policy(on_error: str) -> str:
        return CLAMD_POLICY.format(upstream_ca=test_ca, socket=sock, on_error=on_error)

    setup.restart(policy("block"))
    clean = _get(setup, "https-h2", "/bytes/100000", "-o", "/dev/null", "-w", "%{http_code}")
    assert clean.stdout == "200", clean.stderr
    blocked = _get(setup, "https-h2", "/marker", "-i")
    assert _status(blocked) == "403", blocked.stdout + blocked.stderr
    assert clamd.MARKER_SIGNATURE in blocked.stdout
    upload = tmp_path / "eicar.com"
    upload.write_bytes(EICAR)
    sent = _get(setup, "http", "/upload", "-i", "--data-binary", f"@{upload}")
    assert _status(sent) == "403"
    assert setup.received_uploads() == []
    found = setup.records("detection", 2)
    assert [(d["scanner"], d["signature"], d["direction"]) for d in found] == [
        ("clamd", clamd.MARKER_SIGNATURE, "download"),
        ("clamd", clamd.EICAR_SIGNATURE, "upload"),
    ]
    daemon.terminate()
    daemon.wait(timeout=20)
    refused = _get(setup, "http", "/fine", "-i")  # fails closed
    assert _status(refused) == "403"
    assert "clamd-unavailable" in refused.stdout
    [down] = setup.records("detection")
    assert (down["signature"], down["action"]) == ("clamd-unavailable", "blocked")
    assert str(sock) in down["matched"]
    setup.restart(policy("log"))
    passed = _get(setup, "http", "/fine")  # fails open, and says so
    assert passed.stdout == "hello from /fine\n"
    [logged] = setup.records("detection")
    assert (logged["signature"], logged["action"]) == ("clamd-unavailable", "logged")


UP_POLICY = """
[settings]
proxy_port = 15001

[[redirect]]
name = "scan-web"
port = 80
to = "proxy"

[inspect.scan]
scanners = ["eicar"]
"""


def test_up_records_each_detection_with_its_process_in_the_history(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    tmp_path.chmod(0o755)
    web.start(server, 80)
    policy = tmp_path / "policy.toml"
    policy.write_text(UP_POLICY)
    history = tmp_path / "history.sqlite"
    daemon, said = start_up(client, policy, "--history", str(history))
    assert "scanning with eicar" in said, said
    url = f"http://{server.ipv4}/eicar"
    got = client.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url], check=False)
    assert got.stdout == "403"
    client.run([PY, "-m", "netwarden", "down"])
    out, _err = daemon.communicate(timeout=20)
    [line] = [json.loads(x) for x in out.splitlines() if '"kind":"detection"' in x]
    assert line["process_name"] == "curl"
    history_of = [PY, "-m", "netwarden", "history", "--db", str(history), "--detections"]
    [row] = json.loads(client.run([*history_of, "--format", "json"]).stdout)
    assert (row["process_name"], row["host"], row["path"], row["signature"]) == (
        "curl",
        server.ipv4,
        "/eicar",
        "EICAR-Test-File",
    )
    assert row["exe"].endswith("curl")
    table = client.run(history_of).stdout
    assert "EICAR-Test-File" in table
    assert "curl" in table


ECHO = (
    "import socket, threading\n"
    "s = socket.create_server(('0.0.0.0', 7000))\n"
    "print('listening', flush=True)\n"
    "def echo(c):\n"
    "    with c:\n"
    "        while data := c.recv(65536):\n"
    "            c.sendall(data)\n"
    "while True:\n"
    "    threading.Thread(target=echo, args=(s.accept()[0],)).start()\n"
)


def test_raw_streams_are_scanned_when_the_policy_asks(scanning: Setup, tmp_path: Path) -> None:
    """A TCP stream that is not HTTP, through the SOCKS5 listener: passed on as it is,
    reset when it carries the signature."""
    echo = scanning.server.popen([PY, "-c", ECHO], stdout=subprocess.PIPE)
    assert echo.stdout is not None
    assert echo.stdout.readline() == "listening\n"
    scanning.restart(
        SCAN_POLICY.format(upstream_ca="").replace("scanners = [", "streams = true\nscanners = [")
    )
    clean, infected = tmp_path / "clean.txt", tmp_path / "infected.txt"
    clean.write_bytes(b"just words\n")
    infected.write_bytes(b"words, then " + EICAR + b"\n")
    url = f"telnet://{scanning.server.ipv4}:7000"

    def send(path: Path) -> subprocess.CompletedProcess[str]:
        return scanning.client.run(
            ["curl", "-sS", "--max-time", "3", "--socks5", "127.0.0.1:1080", url],
            check=False,
            input=path.read_text(),
        )

    echoed = send(clean)
    assert echoed.stdout == "just words\n", echoed.stderr
    refused = send(infected)
    assert "EICAR" not in refused.stdout
    assert refused.returncode not in (0, 28), refused  # reset, not a timeout
    [found] = scanning.records("detection")
    assert (found["scanner"], found["direction"], found["action"]) == ("eicar", "upload", "blocked")

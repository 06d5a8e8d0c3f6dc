"""The dashboard in a real browser (Debian's headless Chromium, driven by selenium)
inside the client's namespace: a connection appears with its program and bytes, the
filter finds it, and ask prompts are answered with the page's buttons."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netwarden.testing import web
from netwarden.testing.browser import BrowserClient
from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_up

pytestmark = pytest.mark.root

POLICY = """
[ask]
timeout = 20

[[rule]]
name = "ask-8080"
action = "ask"
direction = "out"
protocol = "tcp"
port = 8080
"""


@pytest.fixture
def browser(pair: tuple[Host, Host]) -> Iterator[BrowserClient]:
    for program in ("chromium", "chromedriver"):
        assert shutil.which(program), f"{program} is missing: scripts/setup.sh --dev installs it"
    opened = BrowserClient(pair[0])
    try:
        yield opened
    finally:
        opened.close()


def _curl(host: Host, url: str) -> subprocess.Popen[str]:
    argv = ["curl", "-sS", "--max-time", "15", "-o", "/dev/null", "-w", "%{http_code}", url]
    return host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_dashboard_shows_a_connection_filters_it_and_answers_prompts(
    pair: tuple[Host, Host], tmp_path: Path, own_state_dir: Path, browser: BrowserClient
) -> None:
    client, server = pair
    web.start(server, 80)
    web.start(server, 8080)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    daemon, _said = start_up(client, policy, "--no-history", "--web")
    token = (own_state_dir / "api-token").read_text().strip()
    assert browser("open", url=f"http://127.0.0.1:8470/login?token={token}")["title"] == (
        "netwarden"
    )
    assert browser("wait_prompt", text="never", timeout=0.1)["prompt"] == ""

    sizes = "%{local_port} %{size_request} %{size_header} %{size_download}"
    url = f"http://{server.ipv4}/bytes/200000"
    done = client.run(["curl", "-sS", "-o", "/dev/null", "-w", sizes, url])
    finished = time.monotonic()
    port, request, header, body = (int(x) for x in done.stdout.split())
    flow = f"tcp {client.ipv4}:{port} {server.ipv4}:80"
    shown = browser("wait_row", text=flow, timeout=2)
    assert shown["row"] is not None, "the connection did not appear within 2 s"
    assert time.monotonic() - finished < 2.5
    deadline = time.monotonic() + 5  # the bytes of its last moments may come a refresh later
    row = shown["row"]
    while row["exact"][8:10] != [str(request), str(header + body)] and time.monotonic() < deadline:
        row = browser("wait_row", text=flow)["row"]
    assert row["cells"][0] == "curl"
    assert row["exact"][8:10] == [str(request), str(header + body)]

    filtered = browser("filter", text=f"curl {port}")
    assert [r["id"] for r in filtered["rows"]] == [flow]
    assert browser("filter", text="no-such-program-anywhere")["rows"] == []
    browser("filter", text="")

    allowed = _curl(client, f"http://{server.ipv4}:8080/marker")
    prompt = browser("wait_prompt", text="curl", timeout=10)["prompt"]
    assert f"to {server.ipv4}:8080" in prompt
    assert allowed.poll() is None  # held while the question is open
    assert browser("answer", text="curl", button="Allow once")["clicked"]
    assert allowed.communicate(timeout=20)[0] == "200"

    denied = _curl(client, f"http://{server.ipv4}:8080/marker")
    assert browser("wait_prompt", text="curl", timeout=10)["prompt"]
    assert browser("answer", text="curl", button="Deny once")["clicked"]
    out, _err = denied.communicate(timeout=20)
    assert denied.returncode != 0
    assert out != "200"
    client.run([PY, "-m", "netwarden", "down"])
    daemon.communicate(timeout=20)

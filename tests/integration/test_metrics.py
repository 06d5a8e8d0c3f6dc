"""`netwarden up --metrics`: Prometheus metrics of a real transfer, read with
Prometheus' own parser."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netwarden.testing import web
from netwarden.testing.netlab import Host
from tests.integration.conftest import PY, start_up

pytestmark = pytest.mark.root

POLICY = """
[[rule]]
name = "count-web"
action = "log"
direction = "out"
port = 80
"""


SCRAPE = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode())"


def _bytes_of(host: Host, program: str) -> dict[str, float]:
    # Scraped by Python, not curl: the scrapes' own bytes count under their program.
    text = host.run([PY, "-c", SCRAPE]).stdout
    return {
        sample.labels["direction"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "netwarden_bytes_total" and sample.labels["program"] == program
    }


def test_a_known_transfer_shows_in_the_metrics_under_its_program(
    pair: tuple[Host, Host], tmp_path: Path
) -> None:
    client, server = pair
    web.start(server, 80)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    daemon, _said = start_up(client, policy, "--no-history", "--metrics", "127.0.0.1:9464")
    sizes = "%{size_request} %{size_header} %{size_download}"
    url = f"http://{server.ipv4}/bytes/3000000"
    done = client.run(["curl", "-sS", "-o", "/dev/null", "-w", sizes, url])
    request, header, body = (int(x) for x in done.stdout.split())
    wanted = {"sent": float(request), "received": float(header + body)}
    deadline = time.monotonic() + 10
    while (seen := _bytes_of(client, "curl")) != wanted and time.monotonic() < deadline:
        time.sleep(0.3)
    text = client.run([PY, "-c", SCRAPE]).stdout
    assert seen == wanted, [line for line in text.splitlines() if "bytes_total{" in line]
    other = "http://127.0.0.1:9464/other"
    missing = client.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", other])
    assert missing.stdout == "404"
    client.run([PY, "-m", "netwarden", "down"])
    daemon.communicate(timeout=20)
    refused = client.run(["curl", "-sS", "http://127.0.0.1:9464/metrics"], check=False)
    assert refused.returncode != 0  # gone with the daemon

"""netwarden's inspecting proxy in a netlab client, in front of the test web server on
its server (HTTPS with HTTP/2 on 443, HTTP on 80), with connections to 80 and 443
redirected into it; its NDJSON records read as they come."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netwarden.testing import web
from netwarden.testing.certs import make_server_files
from netwarden.testing.netlab import Host
from tests.integration.conftest import PY

REDIRECT = ["--dport", "80", "--dport", "443", "--to", "127.0.0.1:15001", "--to", "[::1]:15001"]


@dataclass
class Setup:
    client: Host
    server: Host
    proxy: subprocess.Popen[str]
    state: Path
    env: tuple[str, ...]
    uploads: Path  # what the web server received in POST bodies (JSON lines)
    unread: str = ""  # the proxy's output read, not yet a whole line
    log: list[dict[str, Any]] = field(default_factory=list)
    taken: dict[str, int] = field(default_factory=dict)  # records of each kind returned

    @property
    def ca(self) -> str:
        return str(self.state / "ca" / "ca.pem")

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.client.run(["curl", "-sS", "--max-time", "10", *args], check=False)

    def netwarden(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.client.run([*self.env, PY, "-m", "netwarden", *args], check=False)

    def received_uploads(self) -> list[str]:
        if not self.uploads.exists():
            return []
        return [json.loads(line)["body"] for line in self.uploads.read_text().splitlines()]

    def records(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The proxy's next NDJSON records of this kind (each kind read in order)."""
        assert self.proxy.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            mine = [r for r in self.log if r["kind"] == kind]
            taken = self.taken.get(kind, 0)
            if len(mine) >= taken + count or time.monotonic() >= deadline:
                self.taken[kind] = min(len(mine), taken + count)
                return mine[taken : taken + count]
            if select.select([self.proxy.stdout], [], [], 0.1)[0]:
                self.unread += os.read(self.proxy.stdout.fileno(), 65536).decode()
                *lines, self.unread = self.unread.split("\n")
                self.log += [json.loads(line) for line in lines]

    def restart(self, policy_text: str) -> None:
        """The proxy again, with another policy (the redirect stays)."""
        self.proxy.terminate()
        self.proxy.communicate(timeout=20)
        policy = self.state.parent / "policy.toml"
        policy.write_text(policy_text)
        self.proxy = start_proxy(self.client, self.env, policy)
        self.log, self.taken, self.unread = [], {}, ""


def start_proxy(client: Host, env: tuple[str, ...], policy: Path) -> subprocess.Popen[str]:
    proxy = client.popen(
        [
            *env,
            PY,
            "-m",
            "netwarden",
            "proxy",
            "--listen",
            "127.0.0.1:15001",
            "--listen",
            "[::1]:15001",
            "--socks5",
            "127.0.0.1:1080",
            "--http",
            "127.0.0.1:3128",
            "--processes",
            "--policy",
            str(policy),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proxy.stderr is not None
    assert "proxy listening" in proxy.stderr.readline()
    return proxy


def start_inspecting(
    pair: tuple[Host, Host], tmp_path: Path, trust_upstream: bool, policy_text: str
) -> Setup:
    """policy_text: the policy, with {upstream_ca} where the line trusting the test's CA
    goes (when trust_upstream)."""
    client, server = pair
    tmp_path.chmod(0o755)
    test_ca, cert, key = make_server_files(
        tmp_path / "server", [server.ipv4, server.ipv6, "web.test"]
    )
    uploads = tmp_path / "uploads.ndjson"
    web.start(server, 443, cert, key, h2=True, uploads=uploads)
    web.start(server, 80, uploads=uploads)
    state = tmp_path / "state"
    env = ("env", f"NETWARDEN_STATE_DIR={state}")
    client.run([*env, PY, "-m", "netwarden", "ca", "init"])
    policy = tmp_path / "policy.toml"
    upstream_ca = f'upstream_ca = "{test_ca}"' if trust_upstream else ""
    policy.write_text(policy_text.format(upstream_ca=upstream_ca))
    proxy = start_proxy(client, env, policy)
    client.run([PY, "-m", "netwarden", "redirect", *REDIRECT])
    return Setup(client, server, proxy, state, env, uploads)

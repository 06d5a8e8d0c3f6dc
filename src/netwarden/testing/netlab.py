"""netlab: isolated hosts in network namespaces, joined by veth pairs.

Each :class:`Lab` owns namespaces named ``nwlab-<token>-<host>``; commands run in
them through ``nsenter --net`` (so /sys and cgroups stay visible, unlike
``ip netns exec``). Closing the lab kills every process it started and deletes
its namespaces, which takes their veth links with them. :func:`cleanup_stale`
removes what a crashed run left behind.

    with Lab() as lab:
        client, server = lab.host("client"), lab.host("server")
        lab.link(client, server)
        server.popen(["python3", "-m", "http.server", "80"])
        client.run(["curl", f"http://{server.ipv4}/"])
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from netwarden.platform.linux import cgroup_marks, scopes

PREFIX = "nwlab-"
NETNS_DIR = Path("/run/netns")
RUN_DIR = Path("/run/netwarden")


class LabError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _mac(netns: str, ifname: str) -> str:
    result = subprocess.run(
        ["ip", "-n", netns, "-j", "link", "show", ifname], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return str(json.loads(result.stdout)[0]["address"])


def _kill_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _pids_in_netns(path: Path) -> list[int]:
    try:
        target = os.stat(path).st_ino
    except OSError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(f"/proc/{entry.name}/ns/net").st_ino == target:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def delete_netns(name: str) -> None:
    """Kill whatever still runs in the namespace, then delete it, and the records
    netwarden keeps of it in its run directory (an applied policy, a daemon)."""
    path = NETNS_DIR / name
    with contextlib.suppress(OSError):
        inode = os.stat(path).st_ino
        for record in RUN_DIR.glob(f"*-net{inode}*"):
            record.unlink(missing_ok=True)
    for pid in _pids_in_netns(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def cleanup_stale() -> list[str]:
    """Remove every netlab namespace left on this machine; return their names."""
    names = sorted(p.name for p in NETNS_DIR.glob(f"{PREFIX}*")) if NETNS_DIR.is_dir() else []
    for name in names:
        delete_netns(name)
    release_cgroup_marks()
    return names


@dataclass
class Host:
    lab: Lab
    name: str  # short name given by the test
    netns: str  # full namespace name
    ipv4: str = ""  # the address on its first link
    ipv6: str = ""
    links: dict[int, tuple[str, str]] = field(default_factory=dict)  # link -> (v4, v6)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self.netns}", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, check=False,
            input=input, errors="replace",  # a tool may print what the peer sent: any bytes
        )  # fmt: skip
        if check and result.returncode != 0:
            raise LabError(
                f"{self.name}: {' '.join(argv)} exited {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start a process in this host; the lab kills it (and its children) at close."""
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            self.command(argv), start_new_session=True, text=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def stop_all(self, grace: float = 3.0) -> None:
        for proc in self._procs:
            _kill_group(proc, grace)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._procs.clear()


class Lab:
    def __init__(self, token: str | None = None) -> None:
        if os.geteuid() != 0:
            raise LabError("netlab needs root (network namespaces)")
        self.token = token or secrets.token_hex(3)
        self.hosts: list[Host] = []
        self._links = 0

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def host(self, name: str) -> Host:
        netns = f"{PREFIX}{self.token}-{name}"
        _ip("netns", "add", netns)
        host = Host(self, name, netns)
        self.hosts.append(host)
        _ip("-n", netns, "link", "set", "lo", "up")
        # Addresses usable at once: no duplicate address detection delaying IPv6.
        for conf in ("all", "default"):
            host.run(["sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0"])
        return host

    def link(self, a: Host, b: Host) -> None:
        """Join two hosts with a veth pair: 10.200.N.1/24 and .2, fd00:200:N::1/64 and ::2."""
        self._links += 1
        n = self._links
        if n > 250:
            raise LabError("a lab has at most 250 links")
        if_a, if_b = f"nw{n}a", f"nw{n}b"
        _ip("link", "add", if_a, "netns", a.netns, "type", "veth", "peer", if_b, "netns", b.netns)
        ends = ((a, if_a, 1), (b, if_b, 2))
        for host, ifname, last in ends:
            ipv4, ipv6 = f"10.200.{n}.{last}", f"fd00:200:{n}::{last}"
            _ip("-n", host.netns, "addr", "add", f"{ipv4}/24", "dev", ifname)
            _ip("-n", host.netns, "addr", "add", f"{ipv6}/64", "dev", ifname, "nodad")
            _ip("-n", host.netns, "link", "set", ifname, "up")
            host.ipv4 = host.ipv4 or ipv4
            host.ipv6 = host.ipv6 or ipv6
            host.links[n] = (ipv4, ipv6)
        # Static neighbours: the first IPv6 packet on a new veth is otherwise often lost
        # to neighbour discovery, and a test's first connect waits for a SYN retransmit.
        for (host, ifname, _last), (peer, peer_if, peer_last) in (ends, ends[::-1]):
            mac = _mac(peer.netns, peer_if)
            for address in (f"10.200.{n}.{peer_last}", f"fd00:200:{n}::{peer_last}"):
                _ip("-n", host.netns, "neigh", "replace", address, "lladdr", mac, "dev", ifname,
                    "nud", "permanent")  # fmt: skip

    def route_through(self, host: Host, gateway: Host) -> None:
        """Make `gateway` a router (forwarding on) and send `host`'s traffic for every
        network of the gateway's other links through it."""
        shared = set(host.links) & set(gateway.links)
        if not shared:
            raise LabError(f"{host.name} and {gateway.name} share no link")
        via4, via6 = gateway.links[min(shared)]
        for conf in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            gateway.run(["sysctl", "-qw", conf])
        for link, (v4, v6) in gateway.links.items():
            if link in shared:
                continue
            network4 = v4.rsplit(".", 1)[0] + ".0/24"
            network6 = v6.rsplit("::", 1)[0] + "::/64"
            _ip("-n", host.netns, "route", "add", network4, "via", via4)
            _ip("-n", host.netns, "-6", "route", "add", network6, "via", via6)

    def close(self) -> None:
        for host in self.hosts:
            host.stop_all()
        for host in self.hosts:
            delete_netns(host.netns)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            (NETNS_DIR / h.netns).exists() for h in self.hosts
        ):
            time.sleep(0.05)
        self.hosts.clear()
        release_cgroup_marks()


def release_cgroup_marks() -> None:
    """cgroups are not per namespace: socket marks that policies of the deleted hosts
    attached to scopes and services would outlive them. Release those, and the scopes."""
    cgroup_marks.release_orphans()
    scopes.remove_idle_scopes()


if __name__ == "__main__":
    removed = cleanup_stale()
    print("removed: " + (", ".join(removed) if removed else "nothing"))

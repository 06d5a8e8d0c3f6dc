"""Probes for the kernel mechanisms netwarden uses, without changing anything.

nft probes run in check mode (`nft -c`): the kernel validates the batch and
discards it.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from netwarden.platform.base import Capability
from netwarden.platform.linux import netlink, nftables
from netwarden.platform.linux import netns as netns_api
from netwarden.platform.linux.conntrack import ACCT_SYSCTL, NETLINK_NETFILTER
from netwarden.platform.linux.procfs import (
    CAP_NET_ADMIN,
    bpf_pids_are_ours,
    cgroup2_mount,
    has_capability,
    may_load_bpf,
)
from netwarden.platform.linux.sockdiag import DESTROY_GROUPS, NETLINK_SOCK_DIAG

PROBE_TABLE = "netwarden_probe"


def _nft_check(statement: dict[str, object]) -> tuple[bool, str]:
    """Whether the kernel accepts a rule with this statement (checked, never applied)."""
    base = {"family": "inet", "table": PROBE_TABLE}
    try:
        ok, output = nftables.check([
            {"add": {"table": {"family": "inet", "name": PROBE_TABLE}}},
            {"add": {"chain": {**base, "name": "c", "type": "filter", "hook": "output",
                               "prio": 0, "policy": "accept"}}},
            {"add": {"rule": {**base, "chain": "c", "expr": [statement]}}},
        ])  # fmt: skip
    except nftables.NftError as exc:
        return False, str(exc)
    if ok:
        return True, "accepted by the kernel (checked, not applied)"
    return False, output.splitlines()[-1]


def _netlink_groups(protocol: int, groups: tuple[int, ...]) -> tuple[bool, str]:
    try:
        netlink.open_socket(protocol, groups).close()
    except OSError as exc:
        return False, exc.strerror or str(exc)
    return True, "subscribed"


def probe_privileges() -> Capability:
    root = os.geteuid() == 0
    admin = has_capability(CAP_NET_ADMIN)
    detail = f"euid {os.geteuid()}, CAP_NET_ADMIN {'yes' if admin else 'no'}"
    return Capability(
        "privileges", root and admin, detail,
        "root with CAP_NET_ADMIN: every process's sockets, conntrack, nftables, flow events",
    )  # fmt: skip


def probe_nftables() -> Capability:
    ok, detail = _nft_check({"accept": None})
    return Capability("nftables", ok, detail, "policy filters, redirection, connection tracking")


def probe_nft_queue() -> Capability:
    ok, detail = _nft_check({"queue": {"num": 65000, "flags": ["bypass"]}})
    if not ok:
        detail = f"this kernel has no nftables queue statement ({detail})"
    return Capability(
        "nft queue", ok, detail, "first-packet decisions in user space (NFQUEUE) through nftables"
    )


def probe_iptables_nfqueue() -> Capability:
    binary = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    readable = True
    try:
        targets = Path("/proc/net/ip_tables_targets").read_text().split()
    except PermissionError:
        targets, readable = [], False
    except OSError:
        targets = []
    ok = binary is not None and "NFQUEUE" in targets
    if binary is None:
        detail = "the iptables command is missing (install the 'iptables' package)"
    elif not readable:
        detail = "cannot tell without root (the kernel lists its targets to root only)"
    else:
        detail = "NFQUEUE target present" if ok else "the kernel has no NFQUEUE target"
    return Capability(
        "iptables NFQUEUE",
        ok,
        detail,
        "fallback for user-space decisions where nft queue is missing",
    )


def probe_conntrack() -> Capability:
    ok, detail = _netlink_groups(NETLINK_NETFILTER, (1, 2, 3))
    acct = ACCT_SYSCTL.exists()
    if ok:
        detail = "events available; byte accounting " + (
            "available" if acct else "missing (no nf_conntrack_acct)"
        )
    return Capability("conntrack events", ok and acct, detail, "UDP byte counts and UDP flow ends")


def probe_sock_diag_destroy() -> Capability:
    ok, detail = _netlink_groups(NETLINK_SOCK_DIAG, DESTROY_GROUPS)
    return Capability(
        "sock_diag destroy events", ok, detail,
        "final byte counts of connections that close between two refreshes",
    )  # fmt: skip


def probe_scope_marks() -> Capability:
    from netwarden.platform.linux.cgroup_marks import CgroupMarkError, load_mark_program

    try:
        os.close(load_mark_program(0))
        ok, detail = True, "a cgroup socket program loads"
    except CgroupMarkError as exc:
        ok, detail = False, str(exc)
    return Capability(
        "cgroup socket marks", ok, detail,
        "policy rules on application scopes (netwarden run --scope) and systemd services",
    )  # fmt: skip


def probe_cgroup2() -> Capability:
    mount = cgroup2_mount()
    return Capability(
        "cgroup v2", mount is not None,
        f"mounted at {mount}" if mount else "no cgroup2 mount found",
        "per-application scopes (netwarden run) and systemd-unit attribution",
    )  # fmt: skip


def probe_btf() -> Capability:
    ok = Path("/sys/kernel/btf/vmlinux").exists()
    return Capability(
        "BTF", ok, "/sys/kernel/btf/vmlinux present" if ok else "no kernel BTF",
        "eBPF programs that follow kernel structures",
    )  # fmt: skip


def probe_flow_events() -> Capability:
    enables = "process attribution for connections of processes that exit within milliseconds"
    if not may_load_bpf():
        return Capability("flow events", False, "needs root (CAP_BPF)", enables)
    from netwarden.platform.linux.flow_events import FlowEventsUnavailable, KernelFlowStamps

    try:
        KernelFlowStamps(lambda _pid: None, None).close()
        return Capability(
            "flow events", True,
            "netwarden's BPF programs on the socket send/receive tracepoints verified",
            enables,
        )  # fmt: skip
    except (OSError, FlowEventsUnavailable) as exc:
        own = f"netwarden's BPF programs unavailable ({exc})"
    try:
        import pydivert

        divert = pydivert.Divert(
            "true", layer=pydivert.Layer.FLOW, flags=pydivert.Flag.SNIFF | pydivert.Flag.RECV_ONLY
        )
        divert.open()
        divert.close()
        ok, detail = True, f"{own}; eBPF flow layer (pydivert {pydivert.__version__}) opened"
    except Exception as exc:  # any failure here only means the feature is unavailable
        ok, detail = False, f"{own}; pydivert: {type(exc).__name__}: {exc}"
    return Capability("flow events", ok, detail, enables)


SO_COOKIE = 57
PID_NAMESPACE = (
    "netwarden runs in a pid namespace of its own (BPF numbers processes as the host does)"
)


def probe_exec_records() -> Capability:
    enables = "exe and command line of processes that exit before /proc can be read"
    if not may_load_bpf():
        return Capability("exec records", False, "needs root (CAP_BPF)", enables)
    if not bpf_pids_are_ours():
        return Capability("exec records", False, PID_NAMESPACE, enables)
    from netwarden.platform.linux.exec_records import ExecRecords

    try:
        records = ExecRecords()
    except OSError as exc:
        return Capability("exec records", False, f"the BPF program did not load ({exc})", enables)
    try:
        child = subprocess.Popen(["true"])
        child.wait()
        found = records.lookup(child.pid)
    finally:
        records.close()
    if found is None or not found.exe:
        return Capability("exec records", False, "the program did not record a probe", enables)
    detail = f"netwarden's BPF program on sched_process_exec recorded {found.exe}"
    return Capability("exec records", True, detail, enables)


def probe_connect_owners() -> Capability:
    enables = (
        "the CONNECT layer names the process that connects, listens or sends UDP without a "
        "walk of open files"
    )
    if not may_load_bpf():
        return Capability("connect owners", False, "needs root (CAP_BPF)", enables)
    if not bpf_pids_are_ours():
        return Capability("connect owners", False, PID_NAMESPACE, enables)
    try:
        from netwarden.platform.linux import _native
    except ImportError:
        return Capability("connect owners", False, "netwarden's C module is not built", enables)
    reader = _native.ConnectReader(-1, 0, netns_api.inode_of(None))
    try:
        if reader.owners_error:
            why = os.strerror(reader.owners_error)
            return Capability(
                "connect owners", False, f"the BPF program did not load: {why}", enables
            )
        with (
            socket.create_server(("127.0.0.1", 0)) as listener,
            socket.create_connection(listener.getsockname(), timeout=2) as client,
        ):
            cookie = struct.unpack("=Q", client.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))
            named = reader.connector(cookie[0])
    finally:
        reader.close()
    if named is None or named[0] != os.getpid():
        return Capability("connect owners", False, "the program did not name a probe", enables)
    detail = "netwarden's BPF program on inet_sock_set_state named this process as it connected"
    return Capability("connect owners", True, detail, enables)


def probe_native_monitor() -> Capability:
    """The C module and the kernel's task_file iterator behind fast socket listings."""
    try:
        from netwarden.platform.linux import _native
    except ImportError as exc:
        return Capability(
            "native monitor", False,
            f"the C module is not built ({exc}); run scripts/setup.sh with gcc and "
            "python3-dev installed",
            "socket listings of thousands of connections in a fraction of the time",
        )  # fmt: skip
    found = ["C module built"]
    ok = True
    try:
        owners = len(_native.task_socket_owners())
        found.append(
            f"task_file iterator named the owners of {owners} socket" + ("" if owners == 1 else "s")
        )
    except OSError as exc:
        found.append(f"no task_file iterator ({exc.strerror}): /proc is scanned")
        ok = False
    try:
        changed, _vanished = _native.TcpTracker().refresh()
        found.append(
            f"tcp iterator read {len(changed)} socket" + ("" if len(changed) == 1 else "s")
        )
    except OSError as exc:
        found.append(f"no tcp iterator ({exc.strerror}): the live view dumps every socket")
        ok = False
    return Capability(
        "native monitor", ok, "; ".join(found),
        "socket owners in one kernel pass instead of a readlink per open file; live "
        "refreshes that read only what changed",
    )  # fmt: skip


def probe_shaping() -> Capability:
    """IFB devices, HTB and clsact, tried in a network namespace of the probe's own (the
    host's interfaces are not touched)."""
    enables = "rate limits ([[shape]], docs/limits.md)"
    if os.geteuid() != 0:
        return Capability("rate limits", False, "cannot tell without root", enables)
    script = (
        "ip link add nw-probe type ifb && ip link set nw-probe up && "
        "tc qdisc add dev nw-probe root handle 1: htb && tc qdisc add dev nw-probe clsact && "
        "tc filter add dev nw-probe ingress prio 40000 protocol ip u32 match ip dport 1 0xffff "
        "action mirred egress redirect dev nw-probe"
    )
    try:
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Capability("rate limits", False, f"could not probe: {exc}", enables)
    if done.returncode != 0:
        return Capability("rate limits", False, done.stderr.strip()[:200], enables)
    return Capability("rate limits", True, "IFB, HTB, clsact, u32 and mirred work", enables)


PROBES: tuple[Callable[[], Capability], ...] = (
    probe_privileges,
    probe_nftables,
    probe_nft_queue,
    probe_iptables_nfqueue,
    probe_conntrack,
    probe_sock_diag_destroy,
    probe_cgroup2,
    probe_scope_marks,
    probe_btf,
    probe_flow_events,
    probe_exec_records,
    probe_connect_owners,
    probe_native_monitor,
    probe_shaping,
)


def probe_all() -> list[Capability]:
    return [probe() for probe in PROBES]

"""The policy on nftables: apply atomically, show with counters, remove; and the
machine facts a policy refers to (users, groups, services, scopes)."""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netwarden.platform.base import PlatformError
from netwarden.platform.linux import nftables, tproxy
from netwarden.platform.linux.nft_policy import FAMILY, read_counters, render
from netwarden.platform.linux.procfs import cgroup2_mount
from netwarden.policy.compiler import compile_policy
from netwarden.policy.environment import Environment, scope_path
from netwarden.policy.model import Policy

CGROUP_FS = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class RuleCounters:
    counter: str
    comment: str
    packets: int
    bytes: int


def cgroup_prefix() -> str:
    """Where the cgroup v2 root sits below /sys/fs/cgroup ('unified' on hybrid hosts)."""
    mount = cgroup2_mount()
    if mount is None:
        return ""
    try:
        relative = mount.relative_to(CGROUP_FS)
    except ValueError:
        return ""
    return "" if str(relative) == "." else str(relative)


def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _service(unit: str) -> str | None:
    mount = cgroup2_mount()
    if mount is None or "/" in unit or not unit.endswith((".service", ".scope")):
        return None
    direct = mount / "system.slice" / unit
    if direct.is_dir():
        return f"system.slice/{unit}"
    for found in mount.glob(f"**/{unit}"):
        if found.is_dir():
            return str(found.relative_to(mount))
    return None


def environment() -> Environment:
    return Environment(_uid, _gid, _service, scope_path)


class CgroupSupportMissing(PlatformError):
    pass


def _check_cgroup_support() -> None:
    probe: list[dict[str, Any]] = [
        {"add": {"table": {"family": FAMILY, "name": "netwarden_probe"}}},
        {"add": {"chain": {"family": FAMILY, "table": "netwarden_probe", "name": "c",
                           "type": "filter", "hook": "output", "prio": 0}}},
        {"add": {"rule": {"family": FAMILY, "table": "netwarden_probe", "chain": "c", "expr": [
            {"match": {"op": "==", "left": {"socket": {"key": "cgroupv2", "level": 1}},
                       "right": cgroup_prefix() or "."}}]}}},
    ]  # fmt: skip
    ok, output = nftables.check(probe)
    if not ok:
        raise CgroupSupportMissing(
            "service rules need nftables with cgroupv2 in its JSON interface "
            f"(1.0.7 or later); this host's nft refused it: {output.splitlines()[-1]}"
        )


def apply(policy: Policy) -> int:
    """Replace netwarden's table with this policy in one atomic batch; return the number
    of nft rules. On any error nothing changes and the previous policy stays in force."""
    compiled = compile_policy(policy)
    if any(rule.cgroup is not None and not rule.cgroup.scope for rule in policy.rules):
        _check_cgroup_support()
    body = render(compiled, cgroup_prefix())
    uses_tproxy = any(r.target is not None and r.target.tproxy for r in policy.redirects)
    try:
        nftables.replace_table(FAMILY, compiled.table, body)
        if uses_tproxy:
            tproxy.setup_routing()
        else:
            tproxy.teardown_routing()
    except (nftables.NftError, RuntimeError) as exc:
        raise PlatformError(str(exc)) from exc
    return sum(1 for command in body if "rule" in command.get("add", {}))


def show(table: str) -> tuple[list[RuleCounters], bool]:
    """Counters of the live policy, in rule order; False when no policy is applied."""
    if not nftables.table_exists(FAMILY, table):
        return [], False
    listing = nftables.list_json("table", FAMILY, table)
    counters = read_counters(listing)
    comments: dict[str, str] = {}
    for item in listing:
        rule = item.get("rule")
        if not isinstance(rule, dict):
            continue
        for expression in rule.get("expr", []):
            name = expression.get("counter") if isinstance(expression, dict) else None
            if isinstance(name, str):
                comments.setdefault(name, str(rule.get("comment", "")))
    return [RuleCounters(name, comments.get(name, ""), *counts)
            for name, counts in sorted(counters.items())], True  # fmt: skip


def remove(table: str) -> bool:
    """Delete netwarden's table (nothing else); True when there was one."""
    try:
        removed = nftables.delete_table(FAMILY, table)
    except nftables.NftError as exc:
        raise PlatformError(str(exc)) from exc
    tproxy.teardown_routing()
    return removed

"""The policy on nftables: apply atomically, show with counters, remove; and the
machine facts a policy refers to (users, groups, services, scopes)."""

from __future__ import annotations

import errno
import grp
import pwd
from pathlib import Path

from netwarden.model import Endpoint
from netwarden.platform.base import PlatformError, QuickRedirect, RuleCounters
from netwarden.platform.linux import nftables, redirect, tproxy
from netwarden.platform.linux.cgroup_marks import sync as cgroup_marks_sync
from netwarden.platform.linux.nft_policy import FAMILY, read_counters, render
from netwarden.platform.linux.procfs import cgroup2_mount
from netwarden.platform.linux.scopes import remove_idle_scopes
from netwarden.policy.compiler import CompiledPolicy
from netwarden.policy.connect_layer import ConnectLayer
from netwarden.policy.environment import SCOPE_PARENT, Environment, scope_path


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


def wanted_marks(policy: CompiledPolicy) -> dict[Path, int]:
    """cgroup directory -> mark, for every scope and service the policy names."""
    mount = cgroup2_mount()
    if not policy.cgroup_marks:
        return {}
    if mount is None:
        raise PlatformError(
            "rules on scopes and services need the cgroup v2 hierarchy, and none is mounted "
            "here (`ip netns exec` mounts a /sys without it: use `nsenter --net=...`)"
        )
    return {mount / cgroup.path: mark for cgroup, mark in policy.cgroup_marks}


def apply(compiled: CompiledPolicy) -> int:
    """Replace netwarden's table with this policy in one atomic batch; return the number
    of nft rules. On any error nothing changes and the previous policy stays in force.

    Scopes and services get their socket marks first (so that no socket of theirs
    escapes the new rules) and lose them again if nft refuses the table."""
    body = render(compiled)
    wanted = wanted_marks(compiled)
    for cgroup in wanted:
        if cgroup.parent.name == SCOPE_PARENT:  # a scope may start after the policy
            try:
                cgroup.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PlatformError(_cgroup_problem(exc)) from exc
    changes = cgroup_marks_sync(wanted)
    try:
        nftables.replace_table(FAMILY, compiled.table, body)
        if compiled.tproxy:
            tproxy.setup_routing()
        else:
            tproxy.teardown_routing()
    except (nftables.NftError, RuntimeError) as exc:
        changes.undo()
        raise PlatformError(str(exc)) from exc
    return sum(1 for command in body if "rule" in command.get("add", {}))


def _cgroup_problem(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "rules on scopes and services need root (to manage their cgroups)"
    return f"cannot create a scope's cgroup: {exc}"


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
    cgroup_marks_sync({})
    remove_idle_scopes()
    return removed


class LinuxFirewall:
    """The Firewall of platform.base on nftables (see the functions above)."""

    def environment(self) -> Environment:
        return environment()

    def apply(self, policy: CompiledPolicy) -> int:
        return apply(policy)

    def show(self, table: str) -> tuple[list[RuleCounters], bool]:
        return show(table)

    def add_connect_target(self, table: str, layer: ConnectLayer, target: Endpoint) -> None:
        from netwarden.platform.linux.nft_policy import connect_target_commands

        try:
            nftables.run(connect_target_commands(table, layer, target))
        except nftables.NftError as exc:
            raise PlatformError(str(exc)) from exc

    def marked_owners(self) -> dict[str, int]:
        from netwarden.platform.linux.cgroup_marks import marked_cgroups

        return {str(cgroup): mark for cgroup, mark in marked_cgroups().items()}

    def remark(self, policy: CompiledPolicy) -> list[str]:
        from netwarden.platform.linux import cgroup_marks

        remarked = []
        for cgroup, mark in wanted_marks(policy).items():
            try:
                if cgroup.is_dir() and cgroup_marks.attached_mark(cgroup) != mark:
                    cgroup_marks.attach(cgroup, mark)
                    remarked.append(str(cgroup))
            except (OSError, PlatformError):  # gone again meanwhile: the next round
                continue
        return remarked

    def remove(self, table: str) -> bool:
        return remove(table)

    def apply_quick_redirects(self, redirects: list[QuickRedirect]) -> None:
        redirect.apply(redirects)

    def remove_quick_redirects(self) -> bool:
        return redirect.remove()

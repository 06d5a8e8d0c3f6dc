"""What policy is in force, from which file, since when: kept beside the table
(netwarden's run directory, per network namespace), for `policy show`."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from netwarden.platform.base import RuleCounters
from netwarden.policy.compiler import counter_name
from netwarden.policy.describe import matches
from netwarden.policy.model import Policy

RUN_DIR = Path("/run/netwarden")


def record_file(table: str) -> Path:
    namespace = os.stat("/proc/thread-self/ns/net").st_ino
    return RUN_DIR / f"policy-net{namespace}-{table}.json"


def record(policy: Policy, by: str) -> None:
    """Say which policy was just applied (a failure to say so is not the policy's)."""
    document: dict[str, Any] = {
        "source": policy.source,
        "applied": time.time(),
        "by": by,
        "rules": {
            counter_name(rule): {
                "name": rule.name,
                "action": str(rule.action),
                "direction": str(rule.direction),
                "matches": matches(rule),
                "line": rule.line,
            }
            for rule in (*policy.rules, *policy.redirects)
        },
    }
    with contextlib.suppress(OSError):
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        _forget_gone_namespaces()
        partial = record_file(policy.settings.table).with_suffix(".tmp")
        partial.write_text(json.dumps(document))
        partial.replace(record_file(policy.settings.table))


def _forget_gone_namespaces() -> None:
    """Records of namespaces that exist no more (deleted with their tables)."""
    live = set()
    for pattern in ("/run/netns/*", "/proc/[0-9]*/ns/net"):
        for path in Path("/").glob(pattern.lstrip("/")):
            with contextlib.suppress(OSError):
                live.add(os.stat(path).st_ino)
    for path in RUN_DIR.glob("policy-net*-*.json"):
        inode = path.name.removeprefix("policy-net").split("-", 1)[0]
        if inode.isdigit() and int(inode) not in live:
            path.unlink(missing_ok=True)


def read(table: str) -> dict[str, Any] | None:
    try:
        data = json.loads(record_file(table).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def rule_rows(counters: Iterable[RuleCounters], record: dict[str, Any]) -> list[dict[str, Any]]:
    """The live rules with their counters, named as the record of the applied policy
    knows them."""
    known = record.get("rules", {})
    rows = []
    for c in counters:
        rule = known.get(c.counter, {})
        rows.append(
            {
                "counter": c.counter,
                "rule": rule.get("name", c.comment),
                "action": rule.get("action", ""),
                "direction": rule.get("direction", ""),
                "matches": rule.get("matches", ""),
                "line": rule.get("line"),
                "packets": c.packets,
                "bytes": c.bytes,
            }
        )
    return rows


def forget(table: str) -> None:
    with contextlib.suppress(OSError):
        record_file(table).unlink()

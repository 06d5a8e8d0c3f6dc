"""The running daemon's policy as the control API reaches it: show it with its
counters, check and test a text, apply one (after a dry run showing the difference).
A live apply changes rules, defaults and sets; what the daemon built at start from the
other sections (proxies, inspection, limits, [ask], settings) needs a restart."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import logging
import threading
from pathlib import Path
from typing import Any

from netwarden.callout.program_rules import ProgramRules
from netwarden.daemon.answers import AnswerKeeper
from netwarden.engine import applied
from netwarden.engine.enforce import LiveConnectLayer
from netwarden.engine.host import PlatformError
from netwarden.policy.errors import PolicyError
from netwarden.policy.loader import parse, with_answers
from netwarden.policy.matcher import FlowSyntaxError, decide, parse_flow
from netwarden.policy.model import Policy
from netwarden.policy.schedule import now

log = logging.getLogger(__name__)

RESTART_SECTIONS = ("redirects", "inspect", "quotas", "shapes", "settings", "ask")


class PolicyRefused(Exception):
    """A policy the daemon does not take (its problems, or what needs a restart)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class PolicyControl:
    def __init__(
        self,
        policy: Policy,
        live: LiveConnectLayer,
        program_rules: ProgramRules | None,
        answers: AnswerKeeper | None,
    ) -> None:
        self.policy = policy
        self.firewall = live.firewall
        self.live = live
        self.program_rules = program_rules
        self.answers = answers
        self._applying = threading.Lock()

    @property
    def path(self) -> Path:
        return Path(self.policy.source)

    def text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return f"# cannot read {self.path}: {exc}\n"

    def show(self) -> dict[str, Any]:
        table = self.policy.settings.table
        try:
            counters, live = self.firewall.show(table)
        except PlatformError as exc:
            counters, live = [], False
            log.warning("reading the policy's counters failed: %s", exc)
        record = applied.read(table) or {}
        return {
            "source": self.policy.source,
            "table": table,
            "live": live,
            "applied": record.get("applied"),
            "by": record.get("by"),
            "text": self.text(),
            "rules": applied.rule_rows(counters, record),
            "connect_rules": [
                {"rule": r.name, "action": str(r.action), "line": r.line}
                for r in self.policy.program_rules
            ],
        }

    def check(self, text: str) -> Policy:
        """The policy a text makes (PolicyRefused with each problem as file:line)."""
        try:
            policy = parse(text, str(self.path), self.firewall.environment(), self.path.parent)
            return with_answers(policy, self.firewall.environment())
        except PolicyError as exc:
            raise PolicyRefused([str(p) for p in exc.problems]) from None

    def test(self, flow: str, at: str | None = None) -> dict[str, Any]:
        moment = now()
        if at:
            try:
                given = datetime.datetime.fromisoformat(at)
            except ValueError:
                raise PolicyRefused([f"at: {at!r} is not a time like 2026-12-01T08:30"]) from None
            moment = (given if given.tzinfo else given.astimezone()).timestamp()
        try:
            query = parse_flow(flow, self.firewall.environment())
        except FlowSyntaxError as exc:
            raise PolicyRefused([f"flow: {exc}"]) from None
        decision = decide(self.policy.in_force(moment), query)
        return {
            "action": str(decision.action),
            "reason": decision.reason,
            "rule": decision.rule.name if decision.rule is not None else None,
            "logged": [rule.name for rule in decision.logged],
            "redirect": str(decision.redirect.target) if decision.redirect is not None else None,
        }

    def apply(self, text: str, dry_run: bool) -> dict[str, Any]:
        new = self.check(text)
        old = self.policy
        names_old = [r.name for r in old.rules]
        names_new = [r.name for r in new.rules]
        result: dict[str, Any] = {
            "diff": "".join(
                difflib.unified_diff(
                    self.text().splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"{self.path} (in force)",
                    f"{self.path} (new)",
                )
            ),
            "added": [n for n in names_new if n not in names_old],
            "removed": [n for n in names_old if n not in names_new],
            "restart_needed": [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)],
            "applied": False,
        }
        if old.scheduled or new.scheduled:
            result["restart_needed"].append("rules with days or hours")
        if bool(old.program_rules) != bool(new.program_rules):
            result["restart_needed"].append("whether rules by program (or ask) exist")
        if dry_run:
            return result
        if result["restart_needed"]:
            raise PolicyRefused(
                [
                    "applied only by restarting netwarden up: "
                    + ", ".join(result["restart_needed"])
                    + " changed"
                ]
            )
        with self._applying:
            _compiled, rules = self.live.apply(new.in_force(now()), by="netwarden's control API")
            partial = self.path.with_name(self.path.name + ".new")
            partial.write_text(text, encoding="utf-8")
            partial.replace(self.path)
            self.policy = dataclasses.replace(new, source=old.source)
            if self.program_rules is not None:
                self.program_rules.policy = self.policy
            if self.answers is not None:
                self.answers.policy = self.policy
        result["applied"] = True
        result["kernel_rules"] = rules
        return result

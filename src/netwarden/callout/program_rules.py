"""The policy's rules that name a program (exe, process, sha256, parent_exe,
cmdline), as the callout that decides them when a connection starts."""

from __future__ import annotations

import ipaddress
import logging

from netwarden.callout.api import Connection
from netwarden.model.connect import ASK, BLOCK, PERMIT, ConnectDirection, Verdict
from netwarden.policy.matcher import FlowQuery, ProgramFacts, decide_by_program
from netwarden.policy.model import Action, Direction, Policy
from netwarden.policy.schedule import now

log = logging.getLogger(__name__)

ORIGIN = "the policy"


class ProgramRules:
    """Asked before any other callout. A rule that only logs is logged here. `policy`
    is replaced when an answer given "always" adds a rule."""

    name = "policy"
    weight = 1_000_000

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def classify(self, connection: Connection) -> Verdict | None:
        policy = self.policy.in_force(now()) if self.policy.scheduled else self.policy
        decision = decide_by_program(policy, query_of(connection))
        for rule in decision.logged:
            log.info("rule %r: %s", rule.name, connection)
        if decision.rule is None:
            return None
        if decision.action is Action.ASK:
            return ASK
        return PERMIT if decision.action is Action.ALLOW else BLOCK


def query_of(connection: Connection) -> FlowQuery:
    """A connection as the policy's matcher sees it."""
    request, process = connection.request, connection.process
    direction = Direction.OUT if request.direction is ConnectDirection.OUT else Direction.IN
    local, remote = request.local, request.remote
    if direction is Direction.OUT:
        source, destination = local, remote
    else:
        source, destination = remote, local
    program = None
    if process is not None:
        parent = connection.parent
        program = ProgramFacts(
            name=process.name,
            exe=process.exe,
            cmdline=" ".join(process.cmdline),
            parent_exe=parent.exe if parent is not None else "",
            sha256=connection.exe_sha256,
        )
    return FlowQuery(
        protocol=str(request.transport),
        direction=direction,
        source=ipaddress.ip_address(source.address),
        destination=ipaddress.ip_address(destination.address),
        source_port=source.port,
        destination_port=destination.port,
        interface=connection.interface,
        uid=connection.uid,
        cgroup=process.cgroup if process is not None else "",
        program=program,
    )

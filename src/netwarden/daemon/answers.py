"""Answers given "always" to ask prompts, kept as rules in the policy's answers file
(read before the policy's own rules by every later `netwarden up`) and put in force at
once in the running daemon."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from netwarden.callout.program_rules import ProgramRules
from netwarden.engine.prompts import Answer, Prompt
from netwarden.model.connect import ConnectDirection
from netwarden.policy.environment import Environment
from netwarden.policy.errors import PolicyError
from netwarden.policy.loader import answers_path, with_answers
from netwarden.policy.model import Policy

log = logging.getLogger(__name__)

HEADER = (
    '# Answers given "always" to netwarden\'s ask prompts: rules read before the\n'
    "# policy's own. Edit or remove them freely; `netwarden up` reads this file at start.\n"
)


def rule_text(name: str, prompt: Prompt, answer: Answer) -> str:
    """The [[rule]] table of an answer (TOML strings written as JSON ones, which TOML
    reads alike)."""
    request, process = prompt.request, prompt.process
    assert process is not None
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        f"\n[[rule]]  # {when}, by {answer.by}: {answer} for prompt {prompt.id} ({request})",
        f"name = {json.dumps(name)}",
        f'action = "{"allow" if answer.allow else "block"}"',
        f'direction = "{request.direction}"',
        f'protocol = "{request.transport}"',
        f"exe = {json.dumps(process.exe)}",
    ]
    if not answer.any_destination:
        if request.direction is ConnectDirection.OUT:
            lines += [f'to = ["{request.remote.address}"]', f"port = [{request.remote.port}]"]
        else:
            lines += [f'from = ["{request.remote.address}"]', f"port = [{request.local.port}]"]
    return "\n".join(lines) + "\n"


class AnswerKeeper:
    """remember() is the PromptBook's: it appends the rule, loads the file again and
    hands the policy with it to the program rules."""

    def __init__(
        self, policy: Policy, program_rules: ProgramRules | None, environment: Environment
    ) -> None:
        self.policy = policy
        self.program_rules = program_rules
        self.environment = environment

    @property
    def path(self) -> Path:
        return answers_path(self.policy)

    def remember(self, prompt: Prompt, answer: Answer) -> str:
        process = prompt.process
        if process is None or not process.exe:
            log.warning("prompt %d: no program known, so the answer holds once", prompt.id)
            return ""
        name = f"answer-{prompt.id}-{int(time.time())}"
        try:
            fresh = not self.path.exists()
            with self.path.open("a", encoding="utf-8") as rules:
                if fresh:
                    rules.write(HEADER)
                rules.write(rule_text(name, prompt, answer))
            policy = with_answers(self.policy, self.environment)
        except (OSError, PolicyError) as exc:
            log.error("could not remember the answer to prompt %d: %s", prompt.id, exc)
            return ""
        self.policy = policy
        if self.program_rules is not None:
            self.program_rules.policy = policy
        log.warning("%s: remembered in %s as rule %r", prompt.request, self.path, name)
        return name

"""Ask prompts: a new connection held at its first packet while a person decides
(OpenSnitch's question), answered from the dashboard or `netwarden prompts`, or by
the default when the time is up."""

from __future__ import annotations

import contextlib
import itertools
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from netwarden.engine.bus import EngineEvent, PromptChanged
from netwarden.model import FlowKey, ProcessInfo
from netwarden.model.connect import BLOCK, PERMIT, ConnectDirection, ConnectRequest, Verdict

DEFAULT_TIMEOUT = 30.0


class PromptError(Exception):
    """An answer that cannot be taken (an unknown or already settled prompt)."""


@dataclass(frozen=True, slots=True)
class Answer:
    allow: bool
    always: bool = False  # remembered as a rule in the answers file
    any_destination: bool = False  # the rule names the program only
    by: str = ""  # who answered: "dashboard", "terminal", "timeout"

    @property
    def verdict(self) -> Verdict:
        return PERMIT if self.allow else BLOCK

    def __str__(self) -> str:
        words = ["allow" if self.allow else "deny", "always" if self.always else "once"]
        if self.always:
            words.append("to any destination" if self.any_destination else "to this destination")
        return " ".join(words)


@dataclass(slots=True)
class Prompt:
    id: int
    request: ConnectRequest
    process: ProcessInfo | None
    rule: str  # what asked: a policy rule's callout, or a callout's name
    opened: float  # unix time
    deadline: float  # monotonic
    timeout: float
    answer: Answer | None = None
    remembered: str = ""  # the rule an "always" answer wrote ("" when none)
    # The first packets held: the request's, its retries', and those of the program's
    # other new connections to the same destination while the question is open.
    held: list[ConnectRequest] = field(default_factory=list)
    joined: list[ConnectRequest] = field(default_factory=list)  # those other connections

    @property
    def key(self) -> FlowKey:
        return flow_key(self.request)

    @property
    def keys(self) -> list[FlowKey]:
        return [self.key, *map(flow_key, self.joined)]

    def to_json(self) -> dict[str, object]:
        request, process = self.request, self.process
        state = "open" if self.answer is None else str(self.answer)
        return {
            "id": self.id,
            "state": state,
            "answered_by": self.answer.by if self.answer is not None else "",
            "remembered": self.remembered,
            "flow": str(request),
            "transport": str(request.transport),
            "direction": str(request.direction),
            "local": str(request.local),
            "remote": str(request.remote),
            "destination": str(
                request.remote if request.direction is ConnectDirection.OUT else request.local
            ),
            "port": (
                request.remote.port
                if request.direction is ConnectDirection.OUT
                else request.local.port
            ),
            "program": process.name if process is not None else "",
            "pid": process.pid if process is not None else None,
            "exe": process.exe if process is not None else "",
            "cmdline": " ".join(process.cmdline) if process is not None else "",
            "user": user_name(process.uid if process is not None else request.uid),
            "rule": self.rule,
            "opened": self.opened,
            "timeout": self.timeout,
            "connections": 1 + len(self.joined),
        }


def flow_key(request: ConnectRequest) -> FlowKey:
    return FlowKey(request.transport, request.local, request.remote)


Question = tuple[str, str, str, str, int]


def question(request: ConnectRequest, process: ProcessInfo | None) -> Question | None:
    """What a prompt asks: may this program open this kind of connection to this
    address and port (or take one from this address on this port). None when the
    program is not known: such connections are each asked about."""
    if process is None or not process.exe:
        return None
    outgoing = request.direction is ConnectDirection.OUT
    port = request.remote.port if outgoing else request.local.port
    return (
        process.exe,
        str(request.transport),
        str(request.direction),
        request.remote.address,
        port,
    )


def user_name(uid: int | None) -> str:
    if uid is None:
        return ""
    if sys.platform == "win32":
        return str(uid)
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class PromptBook:
    """The open prompts, shared by the CONNECT loop (which holds their connections and
    releases them once settled) and the faces that answer. remember: writes the rule
    of an "always" answer and returns its name ("" when it could not)."""

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        default: Answer | None = None,
        remember: Callable[[Prompt, Answer], str] | None = None,
        publish: Callable[[Sequence[EngineEvent]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.default = default or Answer(allow=False, by="timeout")
        self.remember = remember
        self.publish = publish or (lambda events: None)
        self.clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, Prompt] = {}
        self._by_key: dict[FlowKey, Prompt] = {}
        self._by_question: dict[Question, Prompt] = {}  # the open ones, by what they ask
        self._ids = itertools.count(1)
        # A socket pair, not a pipe: select() takes only sockets on Windows.
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)

    def fileno(self) -> int:
        """Readable when an answer came (for select)."""
        return self._wake_read.fileno()

    def close(self) -> None:
        self._wake_read.close()
        self._wake_write.close()

    def hold(self, request: ConnectRequest, process: ProcessInfo | None, rule: str) -> bool:
        """Hold a connection until its prompt is settled; False when it joined an open
        prompt: its own (a retransmitted first packet), or the unanswered one of the
        same program and destination (a browser opens several connections at once: one
        question, one answer for all)."""
        key = flow_key(request)
        asked = question(request, process)
        with self._lock:
            known = self._by_key.get(key)
            if known is not None:
                known.held.append(request)
                return False
            same = self._by_question.get(asked) if asked is not None else None
            if same is not None and same.answer is None:
                same.held.append(request)
                same.joined.append(request)
                self._by_key[key] = same
                changed, new = same.to_json(), False
            else:
                prompt = self._open_prompt(request, process, rule, asked)
                changed, new = prompt.to_json(), True
        self.publish([PromptChanged(changed)])
        return new

    def _open_prompt(
        self,
        request: ConnectRequest,
        process: ProcessInfo | None,
        rule: str,
        asked: Question | None,
    ) -> Prompt:
        prompt = Prompt(
            next(self._ids),
            request,
            process,
            rule,
            time.time(),
            self.clock() + self.timeout,
            self.timeout,
            held=[request],
        )
        self._open[prompt.id] = prompt
        self._by_key[prompt.key] = prompt
        if asked is not None:
            self._by_question[asked] = prompt
        return prompt

    def pending(self) -> list[Prompt]:
        with self._lock:
            return [p for p in self._open.values() if p.answer is None]

    def answer(self, prompt_id: int, answer: Answer) -> Prompt:
        with self._lock:
            prompt = self._open.get(prompt_id)
            if prompt is None:
                raise PromptError(f"no open prompt {prompt_id} (answered, timed out or unknown)")
            if prompt.answer is not None:
                raise PromptError(f"prompt {prompt_id} is answered already ({prompt.answer})")
            prompt.answer = answer
            if answer.always and answer.any_destination:
                self._settle_covered(prompt, answer)
        if answer.always and self.remember is not None:
            prompt.remembered = self.remember(prompt, answer)
        with contextlib.suppress(BlockingIOError):
            self._wake_write.send(b"!")
        return prompt

    def _settle_covered(self, prompt: Prompt, answer: Answer) -> None:
        """The program's other open prompts that the rule of an "always, any
        destination" answer decides get its answer (once: the rule is written once)."""
        asked = question(prompt.request, prompt.process)
        if asked is None:
            return
        covered = Answer(allow=answer.allow, by=f"{answer.by}, always for prompt {prompt.id}")
        for other in self._open.values():
            theirs = question(other.request, other.process)
            if other.answer is None and theirs is not None and theirs[:3] == asked[:3]:
                other.answer = covered

    def next_deadline(self) -> float | None:
        with self._lock:
            return min((p.deadline for p in self._open.values()), default=None)

    def settled(self) -> list[Prompt]:
        """The prompts answered, or whose time is up (given the default answer), taken
        out of the book: their connections are to be released now."""
        with contextlib.suppress(BlockingIOError):
            self._wake_read.recv(4096)
        now = self.clock()
        done = []
        with self._lock:
            for prompt in list(self._open.values()):
                if prompt.answer is None and now >= prompt.deadline:
                    prompt.answer = self.default
                if prompt.answer is not None:
                    done.append(prompt)
                    del self._open[prompt.id]
                    for key in prompt.keys:
                        self._by_key.pop(key, None)
                    asked = question(prompt.request, prompt.process)
                    if asked is not None and self._by_question.get(asked) is prompt:
                        del self._by_question[asked]
        if done:
            self.publish([PromptChanged(p.to_json()) for p in done])
        return done

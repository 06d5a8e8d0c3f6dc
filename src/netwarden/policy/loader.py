"""Policy file (TOML) -> validated Policy, or every problem with file:line.

[settings]              # optional
table = "netwarden"     # the one nftables table netwarden owns
priority = 0            # hook priority of its chains

[defaults]              # what happens when no rule decides
out = "allow"           # allow | block | reject
in = "allow"
forward = "allow"

[sets.blocklist]        # named address sets
addresses = ["192.0.2.0/24", "2001:db8::/32"]
file = "blocklist.txt"  # one address or network per line, relative to this file

[[rule]]                # first matching rule decides; log rules log and go on
name = "no-telnet"
action = "block"        # allow | block | reject | log
direction = "out"       # out | in | forward
protocol = "tcp"        # tcp | udp | icmp | any
from = ["10.0.0.0/8"]   # source addresses, networks or @sets
to = ["@blocklist"]     # destination
from_port = [1024]      # source ports or "low-high" ranges
port = [23, "6000-6010"]  # destination ports
interface = "eth0"      # outgoing interface for out, incoming for in and forward
user = "alice"          # out only: the sending socket's owner (name or uid)
group = "staff"         # out only
scope = "browser"       # out only: processes started by `netwarden run --scope browser`
service = "nginx.service"  # out only: a systemd service's processes
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from netwarden.model.flow import parse_host_port
from netwarden.policy.environment import Environment
from netwarden.policy.errors import PolicyError, Problem
from netwarden.policy.inspect_section import InspectSection
from netwarden.policy.limits_section import LimitsSection
from netwarden.policy.lines import LineFinder
from netwarden.policy.loops import redirect_loops
from netwarden.policy.model import (
    Action,
    Addresses,
    AddressSet,
    AskSettings,
    CgroupMatch,
    Direction,
    Policy,
    PortRange,
    ProgramMatch,
    Protocol,
    RedirectTarget,
    Rule,
    Settings,
)
from netwarden.policy.prefixes import Network, load_lines
from netwarden.policy.schedule import Schedule, parse_days, parse_hours, parse_zone

Where = Callable[[str], int]  # key -> line number
DEFAULT_SETTINGS = Settings()
TOP_KEYS = {
    "settings", "defaults", "sets", "rule", "redirect", "inspect", "quota", "shape", "ask",
}  # fmt: skip
SETTINGS_KEYS = {
    "table", "priority", "proxy_port", "proxy_mark", "mark_base", "socks5", "http_proxy",
    "connect_queue", "connect_mask", "fail_mode",
}  # fmt: skip
REDIRECT_KEYS = {
    "name", "to", "direction", "destination", "port", "interface", "user", "group", "scope",
    "service", "mark", "method", "target_mark",
}  # fmt: skip
SET_KEYS = {"addresses", "file"}
ASK_KEYS = {"timeout", "default", "answers"}
RULE_KEYS = {
    "name",
    "action",
    "direction",
    "protocol",
    "from",
    "to",
    "from_port",
    "port",
    "interface",
    "user",
    "group",
    "scope",
    "service",
    "exe",
    "process",
    "sha256",
    "parent_exe",
    "cmdline",
    "days",
    "hours",
    "timezone",
}
PROGRAM_KEYS = ("exe", "process", "sha256", "parent_exe", "cmdline")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
OWNER_KEYS = ("user", "group", "scope", "service")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
INTERFACE = re.compile(r"^[A-Za-z0-9_.\-:@]{1,15}$")


def load(path: Path, environment: Environment) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([Problem(str(path), 0, f"cannot read the policy: {exc}")]) from exc
    policy = parse(text, str(path), environment, base=path.parent)
    return with_answers(policy, environment)


def answers_path(policy: Policy) -> Path:
    """Where "always" answers to ask prompts are kept: [ask] answers, else the policy's
    name with .answers.toml."""
    source = Path(policy.source)
    if policy.ask.answers:
        return source.parent / policy.ask.answers
    return source.with_name(source.stem + ".answers.toml")


def with_answers(policy: Policy, environment: Environment) -> Policy:
    """The policy with the rules of its answers file first (when it has ask rules and
    the file exists): an answer given "always" is not asked again."""
    if not any(rule.action is Action.ASK for rule in policy.rules):
        return policy
    path = answers_path(policy)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return replace(policy, rules=policy.rules[policy.answers :], answers=0)
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([Problem(str(path), 0, f"cannot read the answers: {exc}")]) from exc
    answers = parse(text, str(path), environment, base=path.parent)
    problems = [
        Problem(str(path), rule.line, "answers are rules by program without days or hours")
        for rule in answers.rules
        if rule.program is None or rule.when is not None or rule.action is Action.ASK
    ]
    if problems or answers.redirects or answers.quotas or answers.shapes:
        raise PolicyError(problems or [Problem(str(path), 0, "answers hold [[rule]] tables only")])
    own = policy.rules[policy.answers :]
    first = tuple(replace(rule, index=ANSWER_INDEX + rule.index) for rule in answers.rules)
    return replace(policy, rules=first + own, answers=len(first))


ANSWER_INDEX = 1_000_000  # answers' rules are numbered apart from the policy's own


def parse(text: str, filename: str, environment: Environment, base: Path | None = None) -> Policy:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        message = re.sub(r"\s*\((at line \d+, column \d+|at end of document)\)", "", str(exc))
        opened = unclosed_bracket_line(text) if "Unclosed" in message else None
        if opened is not None:
            raise PolicyError(
                [
                    Problem(
                        filename,
                        opened,
                        "not valid TOML: the [ opened here is never closed (a ] is missing)",
                    )
                ]
            ) from exc
        raise PolicyError(
            [Problem(filename, int(line.group(1)) if line else 0, f"not valid TOML: {message}")]
        ) from exc
    return _Loader(filename, LineFinder(text), environment, base or Path(".")).load(document)


MAX_MARK = 2**32 - 1  # marks, user and group ids are 32-bit


def unclosed_bracket_line(text: str) -> int | None:
    """The line of the first [ or { that is never closed (strings and comments
    skipped); None when all are."""
    opened: list[tuple[str, int]] = []
    line, index, quote = 1, 0, ""
    pairs = {"]": "[", "}": "{"}
    while index < len(text):
        char = text[index]
        if char == "\n":
            line += 1
        elif quote:
            if text.startswith(quote, index):
                index += len(quote) - 1
                quote = ""
            elif char == "\\" and quote in ('"', '"""'):
                index += 1
        elif char == "#":
            while index + 1 < len(text) and text[index + 1] != "\n":
                index += 1
        elif char in "\"'":
            quote = text[index : index + 3] if text[index : index + 3] in ('"""', "'''") else char
            index += len(quote) - 1
        elif char in "[{":
            opened.append((char, line))
        elif char in "]}" and opened and opened[-1][0] == pairs[char]:
            opened.pop()
        index += 1
    return opened[0][1] if opened else None


def connect_mask_problems(settings: Settings) -> list[str]:
    """The CONNECT layer's verdict bits must not overlap netwarden's other marks."""
    from netwarden.policy.connect_layer import WATCH_BIT

    return [
        f"connect_mask {settings.connect_mask:#x} overlaps {name} {mark:#x}: "
        "set connect_mask to bits that no mark uses"
        for name, mark in (
            ("proxy_mark", settings.proxy_mark),
            ("mark_base", settings.mark_base),
            ("the PACKET layer's bit", WATCH_BIT),
        )
        if mark & settings.connect_mask
    ]


def _whole(value: Any, low: int, high: int) -> bool:
    """A TOML integer (not a boolean, which Python counts as one) from low to high."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _nearest(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Loader:
    def __init__(self, filename: str, lines: LineFinder, env: Environment, base: Path) -> None:
        self.filename = filename
        self.lines = lines
        self.env = env
        self.base = base
        self.problems: list[Problem] = []

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.filename, line, message))

    def load(self, document: dict[str, Any]) -> Policy:
        for key in document:
            if key not in TOP_KEYS:
                self.problem(
                    self.lines.key("", key) or self.lines.header(key),
                    f"unknown section {key!r}{_nearest(key, TOP_KEYS)}",
                )
        settings = self._settings(document.get("settings", {}))
        defaults = self._defaults(document.get("defaults", {}))
        sets = self._sets(document.get("sets", {}))
        raw_rules = document.get("rule", [])
        if not isinstance(raw_rules, list):
            self.problem(self.lines.key("", "rule"), "rules are written as [[rule]] tables")
            raw_rules = []
        rules = []
        for index, raw in enumerate(raw_rules):
            rule = self._rule(index, raw, sets)
            if rule is not None:
                rules.append(rule)
        raw_redirects = document.get("redirect", [])
        if not isinstance(raw_redirects, list):
            self.problem(self.lines.key("", "redirect"), "redirects are written as [[redirect]]")
            raw_redirects = []
        redirects = []
        for index, raw in enumerate(raw_redirects):
            redirect = self._redirect(len(raw_rules) + index, index, raw, sets, settings)
            if redirect is not None:
                redirects.append(redirect)
        self._check_marks((*rules, *redirects), settings)
        if any(rule.at_connect for rule in rules):
            for problem in connect_mask_problems(settings):
                self.problem(self.lines.key("settings", "connect_mask"), problem)
        for line, message in redirect_loops(tuple(redirects), settings.proxy_mark):
            self.problem(line, message)
        inspect = InspectSection(self.lines, self.problem, self.base).load(
            document.get("inspect", {})
        )
        limits = LimitsSection(self)
        quotas = limits.quotas(document.get("quota", []))
        shapes = limits.shapes(document.get("shape", []))
        ask = self._ask(document.get("ask", {}))
        if quotas and any(q.who.program is not None for q in quotas):
            for problem in connect_mask_problems(settings):
                self.problem(self.lines.key("settings", "connect_mask"), problem)
        if self.problems:
            raise PolicyError(
                sorted(self.problems, key=lambda p: (p.file != self.filename, p.line))
            )
        return Policy(
            tuple(rules),
            defaults,
            sets,
            settings,
            self.filename,
            tuple(redirects),
            inspect,
            quotas,
            shapes,
            ask,
        )

    def _ask(self, raw: Any) -> AskSettings:
        if not isinstance(raw, dict):
            self.problem(self.lines.key("", "ask"), "[ask] must be a table")
            return AskSettings()

        def at(key: str) -> int:
            return self.lines.key("ask", key)

        self._unknown_keys(raw, ASK_KEYS, "ask", at)
        settings = AskSettings()
        timeout = raw.get("timeout", settings.timeout)
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not (1 <= timeout <= 3600)
        ):
            self.problem(at("timeout"), "timeout is seconds an answer is waited for, 1 to 3600")
            timeout = settings.timeout
        default = raw.get("default", str(settings.default))
        if default not in ("allow", "block"):
            self.problem(at("default"), 'default (after the timeout) is "allow" or "block"')
            default = str(settings.default)
        answers = raw.get("answers", "")
        if not isinstance(answers, str):
            self.problem(at("answers"), "answers is the path of a rules file")
            answers = ""
        return AskSettings(float(timeout), Action(default), answers)

    def _check_marks(self, rules: tuple[Rule, ...], settings: Settings) -> None:
        """Scopes and services are told apart by a 15-bit hash of their names: refuse the
        rare policy where two of them collide rather than let one match the other."""
        owners: dict[int, str] = {}
        for rule in rules:
            if rule.cgroup is None:
                continue
            mark = rule.cgroup.mark(settings.mark_base)
            other = owners.setdefault(mark, rule.cgroup.label)
            if other != rule.cgroup.label:
                self.problem(rule.line, f"{other} and {rule.cgroup.label} would share the mark "
                             f"{mark:#x}: rename one of them")  # fmt: skip
        if settings.proxy_mark & 0xFFFF0000 == settings.mark_base:
            self.problem(self.lines.key("settings", "mark_base"),
                         "proxy_mark must lie outside the scope marks (mark_base)")  # fmt: skip

    # -- sections ----------------------------------------------------------------

    def _settings(self, raw: Any) -> Settings:
        if not isinstance(raw, dict):
            self.problem(self.lines.key("", "settings"), "[settings] must be a table")
            return Settings()

        def at(key: str) -> int:
            return self.lines.key("settings", key)

        self._unknown_keys(raw, SETTINGS_KEYS, "settings", at)
        table = raw.get("table", DEFAULT_SETTINGS.table)
        if not isinstance(table, str) or not TABLE_NAME.match(table):
            self.problem(
                self.lines.key("settings", "table"),
                "table must be a name of letters, digits and _ (at most 32)",
            )
            table = DEFAULT_SETTINGS.table
        priority = raw.get("priority", DEFAULT_SETTINGS.priority)
        if not _whole(priority, -1000, 1000):
            self.problem(
                self.lines.key("settings", "priority"),
                "priority must be a whole number from -1000 to 1000",
            )
            priority = DEFAULT_SETTINGS.priority
        proxy_port = raw.get("proxy_port", DEFAULT_SETTINGS.proxy_port)
        if not _whole(proxy_port, 1, 65535):
            self.problem(at("proxy_port"), "proxy_port must be a port from 1 to 65535")
            proxy_port = DEFAULT_SETTINGS.proxy_port
        proxy_mark = raw.get("proxy_mark", DEFAULT_SETTINGS.proxy_mark)
        if not _whole(proxy_mark, 1, MAX_MARK):
            self.problem(at("proxy_mark"), "proxy_mark must be a number from 1 to 2^32-1")
            proxy_mark = DEFAULT_SETTINGS.proxy_mark
        mark_base = raw.get("mark_base", DEFAULT_SETTINGS.mark_base)
        if not _whole(mark_base, 1, MAX_MARK) or mark_base & 0xFFFF:
            self.problem(at("mark_base"), "mark_base must be a number from 0x10000 to "
                         "0xFFFF0000 whose lower 16 bits are zero, such as 0x4E570000")  # fmt: skip
            mark_base = DEFAULT_SETTINGS.mark_base
        listeners = {key: self._endpoints(raw.get(key, []), at(key)) for key in
                     ("socks5", "http_proxy")}  # fmt: skip
        connect_queue = raw.get("connect_queue", DEFAULT_SETTINGS.connect_queue)
        if not _whole(connect_queue, 0, 65535):
            self.problem(at("connect_queue"), "connect_queue must be a queue number, 0 to 65535")
            connect_queue = DEFAULT_SETTINGS.connect_queue
        connect_mask = raw.get("connect_mask", DEFAULT_SETTINGS.connect_mask)
        if not _whole(connect_mask, 1, MAX_MARK) or bin(connect_mask).count("1") < 2:
            self.problem(
                at("connect_mask"),
                "connect_mask must be mark bits (at least two) "
                "that no other program's marks use, such as 0xB0000000",
            )
            connect_mask = DEFAULT_SETTINGS.connect_mask
        fail_mode = raw.get("fail_mode", DEFAULT_SETTINGS.fail_mode)
        if fail_mode not in ("open", "closed"):
            self.problem(at("fail_mode"), 'fail_mode must be "open" or "closed"')
            fail_mode = DEFAULT_SETTINGS.fail_mode
        return Settings(
            table=table,
            priority=priority,
            proxy_port=proxy_port,
            proxy_mark=proxy_mark,
            mark_base=mark_base,
            socks5=listeners["socks5"],
            http_proxy=listeners["http_proxy"],
            connect_queue=connect_queue,
            connect_mask=connect_mask,
            fail_mode=fail_mode,
        )

    def _endpoints(self, raw: Any, line: int) -> tuple[tuple[str, int], ...]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(line, 'listeners are a list of "ADDRESS:PORT"')
            return ()
        found = []
        for item in raw:
            try:
                address, port = parse_host_port(str(item))
            except ValueError as exc:
                self.problem(line, str(exc))
                continue
            if port is None:
                self.problem(line, f"{item!r} needs a port")
                continue
            found.append((str(address), port))
        return tuple(found)

    def _defaults(self, raw: Any) -> dict[Direction, Action]:
        defaults = dict.fromkeys(Direction, Action.ALLOW)
        if not isinstance(raw, dict):
            self.problem(self.lines.key("", "defaults"), "[defaults] must be a table")
            return defaults
        names = {d.value for d in Direction}
        for key, value in raw.items():
            line = self.lines.key("defaults", key)
            if key not in names:
                self.problem(
                    line, f"unknown direction {key!r}{_nearest(key, names)}: use out, in or forward"
                )
                continue
            if value not in ("allow", "block", "reject"):
                self.problem(
                    line, f"default for {key} must be allow, block or reject, not {value!r}"
                )
                continue
            defaults[Direction(key)] = Action(value)
        return defaults

    def _sets(self, raw: Any) -> dict[str, AddressSet]:
        sets: dict[str, AddressSet] = {}
        if not isinstance(raw, dict):
            self.problem(self.lines.key("", "sets"), "sets are written as [sets.NAME] tables")
            return sets
        for name, body in raw.items():
            header = self.lines.header(f"sets.{name}")
            if not NAME.match(name):
                self.problem(header, f"set name {name!r} must be letters, digits, _ . -")
                continue
            if not isinstance(body, dict):
                self.problem(header, f"set {name!r} must be a table with addresses or file")
                continue
            section = f"sets.{name}"

            def at(key: str, section: str = section) -> int:
                return self.lines.key(section, key)

            self._unknown_keys(body, SET_KEYS, section, at)
            address_set = AddressSet.of(
                name, self._networks(body.get("addresses", []), at("addresses"))
            )
            if "file" in body:
                self._networks_file(body["file"], at("file"), address_set)
            if not len(address_set):
                self.problem(header, f"set {name!r} is empty")
            sets[name] = address_set
        return sets

    def _redirect(self, index: int, occurrence: int, raw: Any, sets: dict[str, AddressSet],
                  settings: Settings) -> Rule | None:  # fmt: skip
        """A [[redirect]] table: `to` is the target, `destination` the address match."""
        header = self.lines.header("redirect", occurrence)

        def at(key: str) -> int:
            original = {"to": "destination", "redirect_to": "to"}.get(key, key)
            return self.lines.key("redirect", original, occurrence)

        if not isinstance(raw, dict):
            self.problem(header, "a redirect must be a table")
            return None
        before = len(self.problems)
        self._unknown_keys(raw, REDIRECT_KEYS, "redirect", at)
        target = self._target(raw.get("to"), at("redirect_to"), settings)
        direction = raw.get("direction", "out")
        if direction not in ("out", "forward"):
            self.problem(at("direction"), "a redirect's direction is out or forward")
        mark = raw.get("mark")
        if mark is not None and not _whole(mark, 0, MAX_MARK):
            self.problem(at("mark"), "mark must be a number from 0 to 2^32-1 (0: unmarked)")
        target_mark = raw.get("target_mark")
        if target_mark is not None:
            if not _whole(target_mark, 1, MAX_MARK):
                self.problem(at("target_mark"), "target_mark must be a number from 1 to 2^32-1")
            elif target is not None and target.address is None:
                self.problem(at("target_mark"), 'netwarden\'s proxy uses proxy_mark: no '
                             'target_mark with to = "proxy"')  # fmt: skip
            elif target is not None:
                target = replace(target, mark=target_mark)
        method = raw.get("method", "nat")
        if method not in ("nat", "tproxy"):
            self.problem(at("method"), 'method is "nat" (the default) or "tproxy"')
        elif method == "tproxy" and target is not None:
            target = replace(target, tproxy=True)
        known = {k: v for k, v in raw.items()
                 if k in REDIRECT_KEYS and k not in ("mark", "method", "target_mark")}  # fmt: skip
        as_rule = {**known, "action": "redirect", "direction": direction, "protocol": "tcp",
                   "to": raw.get("destination", [])}  # fmt: skip
        as_rule.pop("destination", None)
        rule = self._rule(index, as_rule, sets, block=("redirect", occurrence), where=at)
        if rule is None or target is None or len(self.problems) > before:
            return None
        return replace(rule, target=target, line=header, mark=mark)

    def _target(self, raw: Any, line: int, settings: Settings) -> RedirectTarget | None:
        if raw == "proxy":
            return RedirectTarget(settings.proxy_port, mark=settings.proxy_mark)
        if isinstance(raw, str):
            try:
                address, port = parse_host_port(raw)
            except ValueError as exc:
                self.problem(line, f"to: {exc}")
                return None
            if port is not None:
                return RedirectTarget(port, address)
        self.problem(line, 'a redirect needs to = "proxy" or to = "ADDRESS:PORT" (a listener)')
        return None

    def _rule(
        self,
        index: int,
        raw: Any,
        sets: dict[str, AddressSet],
        block: tuple[str, int] | None = None,
        where: Where | None = None,
    ) -> Rule | None:
        occurrence = index if block is None else block[1]
        header = self.lines.header("rule" if block is None else block[0], occurrence)

        def at(key: str) -> int:
            if where is not None:
                return where(key)
            return self.lines.key("rule", key, index)

        if not isinstance(raw, dict):
            self.problem(header, "a rule must be a table")
            return None
        before = len(self.problems)
        self._unknown_keys(raw, RULE_KEYS, "rule", at)
        name = raw.get("name", f"rule-{index + 1}")
        if not isinstance(name, str) or not NAME.match(name):
            self.problem(at("name"), "name must be letters, digits, _ . - (at most 64)")
        action = self._choice(raw, "action", Action, at, required=True)
        if action is Action.REDIRECT and block is None:
            self.problem(at("action"), "redirects are written as [[redirect]] tables")
        direction = self._choice(raw, "direction", Direction, at, required=True)
        protocol = self._choice(raw, "protocol", Protocol, at) or Protocol.ANY
        if action is Action.ASK and (
            direction is Direction.FORWARD or protocol is Protocol.ICMP or block is not None
        ):
            self.problem(at("action"), "ask holds tcp and udp connections in or out of this host")
        source = self._addresses(raw.get("from", []), at("from"), sets)
        destination = self._addresses(raw.get("to", []), at("to"), sets)
        source_ports = self._ports(raw.get("from_port", []), at("from_port"))
        destination_ports = self._ports(raw.get("port", []), at("port"))
        if (source_ports or destination_ports) and protocol is Protocol.ICMP:
            self.problem(
                at("port") if destination_ports else at("from_port"),
                "ports apply to tcp and udp, not icmp",
            )
        interface = raw.get("interface", "")
        if not isinstance(interface, str) or (interface and not INTERFACE.match(interface)):
            self.problem(at("interface"), f"{interface!r} is not an interface name")
            interface = ""
        uid, gid, cgroup = self._owner(raw, at, direction)
        program = self._program(raw, at, direction, protocol) if block is None else None
        when = self._schedule(raw, at) if block is None else None
        if len(self.problems) > before or action is None or direction is None:
            return None
        return Rule(
            index=index,
            name=str(name),
            action=action,
            direction=direction,
            protocol=protocol,
            source=source,
            destination=destination,
            source_ports=source_ports,
            destination_ports=destination_ports,
            interface=interface,
            uid=uid,
            gid=gid,
            cgroup=cgroup,
            line=header,
            program=program,
            when=when,
        )

    def _schedule(self, raw: dict[str, Any], at: Where) -> Schedule | None:
        """A rule's time window (days, hours, timezone), or None: always."""
        if not any(key in raw for key in ("days", "hours", "timezone")):
            return None
        schedule = Schedule()
        try:
            if "days" in raw:
                days = raw["days"]
                days = [days] if isinstance(days, str) else days
                if not isinstance(days, list) or not all(isinstance(d, str) for d in days):
                    raise ValueError('days is a list like ["mon-fri"]')
                schedule = dataclasses.replace(schedule, days=parse_days(days))
        except ValueError as exc:
            self.problem(at("days"), f"days: {exc}")
        try:
            if "hours" in raw:
                start, end = parse_hours(str(raw["hours"]))
                schedule = dataclasses.replace(schedule, start=start, end=end)
        except ValueError as exc:
            self.problem(at("hours"), f"hours: {exc}")
        try:
            if "timezone" in raw:
                parse_zone(str(raw["timezone"]))
                schedule = dataclasses.replace(schedule, zone=str(raw["timezone"]))
        except ValueError as exc:
            self.problem(at("timezone"), f"timezone: {exc}")
        return schedule

    def _program(
        self, raw: dict[str, Any], at: Where, direction: Direction | None, protocol: Protocol
    ) -> ProgramMatch | None:
        given = [key for key in PROGRAM_KEYS if key in raw]
        if not given:
            return None
        line = at(given[0])
        if direction not in (Direction.OUT, Direction.IN, None):
            self.problem(line, f"{given[0]} applies to connections in or out, not forwarded ones")
        if protocol is Protocol.ICMP:
            self.problem(line, f"{given[0]} applies to tcp and udp connections, not icmp")
        values = {}
        for key in ("exe", "process", "sha256", "parent_exe"):
            value = raw.get(key, [])
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                self.problem(at(key), f"{key} must be a string or a list of strings")
                items = []
            values[key] = tuple(items)
        for key in ("exe", "parent_exe"):
            for path in values[key]:
                if not path.startswith(("/", "*")):
                    message = f"{path!r} is not an absolute path (or a glob such as */curl)"
                    self.problem(at(key), message)
        for digest in values["sha256"]:
            if not SHA256.match(digest):
                self.problem(at("sha256"), f"{digest!r} is not a SHA-256 digest (64 hex digits)")
        cmdline = raw.get("cmdline", "")
        if not isinstance(cmdline, str):
            self.problem(at("cmdline"), "cmdline must be a regular expression (a string)")
            cmdline = ""
        try:
            re.compile(cmdline)
        except re.error as exc:
            self.problem(at("cmdline"), f"cmdline is not a valid regular expression: {exc}")
        return ProgramMatch(
            exe=values["exe"],
            process=values["process"],
            sha256=tuple(d.lower() for d in values["sha256"]),
            parent_exe=values["parent_exe"],
            cmdline=cmdline,
        )

    # -- values ------------------------------------------------------------------

    def _unknown_keys(self, raw: dict[str, Any], known: set[str], where: str, at: Where) -> None:
        for key in raw:
            if key not in known:
                self.problem(at(key), f"unknown key {key!r} in [{where}]{_nearest(key, known)}")

    def _choice(
        self, raw: dict[str, Any], key: str, kind: Any, at: Where, required: bool = False
    ) -> Any:
        if key not in raw:
            if required:
                self.problem(
                    at(key), f"the rule needs {key} = " + " | ".join(repr(k.value) for k in kind)
                )
            return None
        value = raw[key]
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(k.value for k in kind)
            self.problem(at(key), f"{key} must be one of {choices}, not {value!r}")
            return None

    def _network(self, text: Any, line: int) -> Network | None:
        if isinstance(text, str):
            try:
                return ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                pass
        self.problem(line, f"{text!r} is not an IP address or network (CIDR)")
        return None

    def _networks(self, raw: Any, line: int) -> list[Network]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(line, "addresses must be a list of strings")
            return []
        return [n for n in (self._network(item, line) for item in raw) if n is not None]

    def _networks_file(self, raw: Any, line: int, into: AddressSet) -> None:
        if not isinstance(raw, str):
            self.problem(line, "file must be a path")
            return
        path = (self.base / raw).resolve()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.problem(line, f"cannot read set file {raw!r}: {exc}")
            return
        bad = load_lines(text, into.v4, into.v6)
        for number, entry in bad[:5]:  # a whole file of garbage should not flood the screen
            self.problems.append(
                Problem(str(path), number, f"{entry!r} is not an IP address or network")
            )
        if len(bad) > 5:
            self.problems.append(Problem(str(path), 0, f"{len(bad) - 5} more bad entries"))

    def _addresses(self, raw: Any, line: int, sets: dict[str, AddressSet]) -> Addresses:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(line, "addresses must be a list of strings")
            return Addresses()
        networks: list[Network] = []
        names: list[str] = []
        for item in raw:
            if isinstance(item, str) and item.startswith("@"):
                if item[1:] in sets:
                    names.append(item[1:])
                else:
                    self.problem(line, f"unknown set {item!r}{_nearest(item[1:], set(sets))}")
                continue
            network = self._network(item, line)
            if network is not None:
                networks.append(network)
        return Addresses(tuple(networks), tuple(names))

    def _ports(self, raw: Any, line: int) -> tuple[PortRange, ...]:
        if isinstance(raw, int | str):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(line, 'ports must be a list of numbers or "low-high" ranges')
            return ()
        ranges = []
        for item in raw:
            low = high = None
            if isinstance(item, int) and not isinstance(item, bool):
                low = high = item
            elif isinstance(item, str) and re.fullmatch(r"\d{1,5}(-\d{1,5})?", item.strip()):
                first, _, last = item.strip().partition("-")
                low, high = int(first), int(last or first)
            if low is None or high is None or not 1 <= low <= high <= 65535:
                self.problem(line, f"{item!r} is not a port (1-65535) or a range low-high")
                continue
            ranges.append(PortRange(low, high))
        return tuple(ranges)

    def _owner(
        self, raw: dict[str, Any], at: Where, direction: Direction | None
    ) -> tuple[int | None, int | None, CgroupMatch | None]:
        given = [key for key in OWNER_KEYS if key in raw]
        if given and direction not in (None, Direction.OUT):
            self.problem(
                at(given[0]),
                f'{given[0]} matches only outgoing traffic (direction = "out"): '
                "only then does the kernel know the sending socket",
            )
        uid = self._id(raw, "user", at, self.env.uid_of)
        gid = self._id(raw, "group", at, self.env.gid_of)
        if "scope" in raw and "service" in raw:
            self.problem(at("service"), "a rule names either a scope or a service, not both")
            return uid, gid, None
        cgroup = None
        if "scope" in raw:
            scope = raw["scope"]
            if not isinstance(scope, str) or not NAME.match(scope):
                self.problem(at("scope"), f"{scope!r} is not a scope name (letters, digits, _ . -)")
            else:
                cgroup = CgroupMatch(f"scope {scope}", self.env.scope_cgroup(scope), scope)
        if "service" in raw:
            unit = raw["service"]
            path = self.env.service_cgroup(unit) if isinstance(unit, str) else None
            if path is None:
                self.problem(
                    at("service"),
                    f"service {unit!r} has no cgroup here: is it a systemd unit that is running?",
                )
            else:
                cgroup = CgroupMatch(str(unit), path)
        return uid, gid, cgroup

    def _id(
        self, raw: dict[str, Any], key: str, at: Where, lookup: Callable[[str], int | None]
    ) -> int | None:
        if key not in raw:
            return None
        value = raw[key]
        if _whole(value, 0, MAX_MARK):
            return int(value)
        if isinstance(value, str):
            found = lookup(value)
            if found is not None:
                return found
        self.problem(at(key), f"unknown {key} {value!r}")
        return None

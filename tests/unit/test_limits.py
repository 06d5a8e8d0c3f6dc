"""Quotas and rate limits as logic: the policy's [[quota]] and [[shape]], periods,
counting flow events into quotas (restarts, resets, a new period), the proxy's token
bucket, and what the kernel shaper asks tc to do."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from netwarden.engine.quotas import QuotaBook, request_reset
from netwarden.model import (
    FlowEvent,
    FlowEventKind,
    ProcessInfo,
)
from netwarden.platform.base import ShapeClass
from netwarden.platform.linux import shaper as tc
from netwarden.policy.environment import fake_environment
from netwarden.policy.errors import PolicyError
from netwarden.policy.limits_model import LimitAction, Period, Quota, Selector, Way
from netwarden.policy.loader import parse
from netwarden.policy.model import ProgramMatch
from netwarden.proxy import pacing
from netwarden.testing.fakes import flow_event

ENV = fake_environment()
CURL = ProcessInfo(pid=42, name="curl", exe="/usr/bin/curl", uid=1000)
WGET = ProcessInfo(pid=43, name="wget", exe="/usr/bin/wget", uid=1000)


def _at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def test_quotas_and_shapes_in_the_policy() -> None:
    policy = parse(
        """
[[quota]]
name = "curl-day"
process = ["curl"]
limit = "5 MB"
direction = "in"
timezone = "UTC"

[[shape]]
name = "backup"
exe = ["/usr/bin/rsync"]
host = ["10.0.0.0/8"]
upload = "2 MB/s"
""",
        "p.toml",
        ENV,
    )
    [quota] = policy.quotas
    assert (quota.limit, quota.period, quota.way, quota.action) == (
        5_000_000,
        Period.DAY,
        Way.IN,
        LimitAction.BLOCK,
    )
    [shape] = policy.shapes
    assert (shape.upload, shape.download) == (2_000_000, None)
    assert shape.who.matches("/usr/bin/rsync", "rsync", 0, "", "10.1.2.3")
    assert not shape.who.matches("/usr/bin/rsync", "rsync", 0, "", "192.0.2.1")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[[quota]]\nprocess = ["curl"]\nlimit = 0\n', 3, "0 bytes"),
        ('[[quota]]\nlimit = "1 MB"\n', 1, "whose traffic"),
        ('[[quota]]\nprocess = ["x"]\nlimit = "1 MB"\nperiod = "year"\n', 4, "period"),
        ('[[shape]]\nprocess = ["x"]\nupload = "0 MB/s"\n', 3, "rate of 0"),
        ('[[shape]]\nprocess = ["x"]\nupload = "2 MB"\n', 3, "not a rate"),
        ('[[shape]]\nprocess = ["x"]\n', 1, "upload, download or both"),
        ('[[shape]]\nprocess = ["x"]\nupload = "1 MB/s"\ncolour = 1\n', 4, "unknown key"),
    ],
)
def test_bad_limits_are_refused_with_their_line(text: str, line: int, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(text, "p.toml", ENV)
    problems = [(p.line, p.message) for p in caught.value.problems]
    assert any(at == line and message in said for at, said in problems), problems


def test_periods_start_at_midnight_monday_and_the_first_of_the_month() -> None:
    def quota(period: Period) -> Quota:
        return Quota("q", 1, Selector(uid=1), 10, period, zone="Europe/Berlin")

    wednesday = _at("2026-12-02T12:00+01:00")
    assert quota(Period.DAY).period_start(wednesday) == _at("2026-12-02T00:00+01:00")
    assert quota(Period.WEEK).period_start(wednesday) == _at("2026-11-30T00:00+01:00")
    assert quota(Period.MONTH).period_start(wednesday) == _at("2026-12-01T00:00+01:00")


class Clock:
    def __init__(self, at: str) -> None:
        self.now = _at(at)

    def __call__(self) -> float:
        return self.now


def _event(
    kind: FlowEventKind, port: int, process: ProcessInfo, sent: int, got: int, first_seen: float
) -> FlowEvent:
    local, remote = f"10.0.0.1:{port}", "192.0.2.7:80"
    return flow_event(kind, process, sent, got, local, remote, first_seen)


CURL_QUOTA = Quota("curl", 1, Selector(program=ProgramMatch(process=("curl",))), 1000, zone="UTC")


def test_a_book_counts_what_each_flow_moved_since_it_was_last_seen(tmp_path: Path) -> None:
    clock = Clock("2026-12-02T10:00+00:00")
    book = QuotaBook([CURL_QUOTA], tmp_path, clock, clock)
    later = clock.now + 1
    book.on_events([_event(FlowEventKind.OPENED, 1, CURL, 100, 200, later)])
    book.on_events([_event(FlowEventKind.UPDATED, 1, CURL, 300, 200, later)])
    book.on_events([_event(FlowEventKind.OPENED, 2, WGET, 5000, 0, later)])  # not curl
    assert book.report()[0]["used"] == 500
    assert book.exhausted("/usr/bin/curl", "curl", 1000, "") is None
    book.on_events([_event(FlowEventKind.CLOSED, 1, CURL, 900, 200, later)])
    assert book.report()[0]["used"] == 1100
    assert book.exhausted("/usr/bin/curl", "curl", 1000, "") == CURL_QUOTA
    assert book.exhausted("/usr/bin/wget", "wget", 1000, "") is None
    # A flow already going when the book started was counted before (by an earlier
    # daemon): only what it moves from now on counts.
    book.on_events([_event(FlowEventKind.OPENED, 3, CURL, 10_000, 0, clock.now - 60)])
    book.on_events([_event(FlowEventKind.UPDATED, 3, CURL, 10_050, 0, clock.now - 60)])
    assert book.report()[0]["used"] == 1150


def test_bytes_before_the_program_is_named_count_against_its_quota(tmp_path: Path) -> None:
    clock = Clock("2026-12-02T10:00+00:00")
    book = QuotaBook([CURL_QUOTA], tmp_path, clock, clock)
    later = clock.now + 1
    nobody = ProcessInfo(pid=0)
    book.on_events([_event(FlowEventKind.OPENED, 1, nobody, 600, 0, later)])
    assert book.report()[0]["used"] == 0  # not known to be curl's yet
    book.on_events([_event(FlowEventKind.UPDATED, 1, CURL, 600, 500, later)])
    assert book.report()[0]["used"] == 1100


def test_usage_survives_a_restart_ends_with_its_period_and_resets(tmp_path: Path) -> None:
    clock = Clock("2026-12-02T10:00+00:00")
    book = QuotaBook([CURL_QUOTA], tmp_path, clock, clock)
    book.on_events([_event(FlowEventKind.OPENED, 1, CURL, 700, 0, clock.now + 1)])
    book.keep()
    assert QuotaBook([CURL_QUOTA], tmp_path, clock, clock).report()[0]["used"] == 700
    clock.now = _at("2026-12-03T00:00:01+00:00")  # the next day
    assert QuotaBook([CURL_QUOTA], tmp_path, clock, clock).report()[0]["used"] == 0
    clock.now = _at("2026-12-02T11:00+00:00")
    request_reset(tmp_path, ["curl"])
    book.keep()
    assert book.report()[0]["used"] == 0
    assert QuotaBook([CURL_QUOTA], tmp_path, clock, clock).report()[0]["used"] == 0


def test_an_unreadable_usage_file_starts_at_zero(tmp_path: Path) -> None:
    (tmp_path / "quotas.json").write_text('{"curl": {"used": "lots"}}')
    assert QuotaBook([CURL_QUOTA], tmp_path).report()[0]["used"] == 0


def test_the_token_bucket_lets_through_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    moments = iter([0.0, 0.5, 0.5, 2.0])
    monkeypatch.setattr("netwarden.proxy.pacing.time.monotonic", lambda: next(moments))
    bucket = pacing.TokenBucket(rate=100_000, burst=50_000)
    bucket.spend(50_000)  # the burst is gone
    bucket._refill()  # half a second later: 50,000 bytes more
    assert bucket.tokens == pytest.approx(50_000)
    bucket.spend(50_000)
    bucket._refill()  # no time went by: nothing more
    assert bucket.tokens == pytest.approx(0)
    bucket._refill()  # 1.5 s: 150,000 bytes, but never more than the burst
    assert bucket.tokens == pytest.approx(50_000)


def test_the_kernel_shaper_sends_a_connection_to_its_class_by_local_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches: list[list[str]] = []
    monkeypatch.setattr(tc, "_batch", lambda commands, check=True: batches.append(commands))
    monkeypatch.setattr(tc, "_run", lambda argv: None)
    monkeypatch.setattr(tc, "_try", lambda argv: True)
    monkeypatch.setattr(tc, "clear_shaping", lambda: False)
    monkeypatch.setattr(tc, "_write_state", lambda interfaces, made: None)
    shaper = tc.TcShaper()
    shaper.start([ShapeClass("a", 2_000_000, None), ShapeClass("b", None, 1000)], ["eth0"])
    assert "class add dev nw-upload parent 1: classid 1:10 htb rate 16000000bit" in batches[0][1]
    assert any("dev nw-download parent 1: classid 1:11 htb rate 8000bit" in c for c in batches[0])
    batches.clear()
    shaper.assign("tcp", 4, 40001, 0)
    shaper.assign("tcp", 4, 40001, 0)  # the same port again: counted, nothing added
    [added] = batches
    assert added == [
        "filter add dev eth0 egress prio 40000 protocol ip u32 match ip protocol 6 0xff "
        "match ip sport 40001 0xffff action mirred egress redirect dev nw-upload",
        "filter add dev nw-upload parent 1: prio 40000 protocol ip u32 match ip protocol 6 "
        "0xff match ip sport 40001 0xffff flowid 1:10",
    ]
    batches.clear()
    shaper.assign("udp", 6, 5353, 1)
    assert "match ip6 protocol 17 0xff match ip6 dport 5353 0xffff" in batches[0][0]
    batches.clear()
    shaper.release("tcp", 4, 40001)
    assert batches == []  # still one user
    shaper.release("tcp", 4, 40001)
    assert all("prio 40000" in c and c.startswith("filter del") for c in batches[0])


def test_the_example_policy_of_purposes_is_valid_and_means_what_it_says() -> None:
    example = Path(__file__).parents[2] / "examples" / "policies" / "purposes.toml"
    policy = parse(example.read_text(), str(example), ENV, base=example.parent)
    assert policy.inspect.scan.scanners == ("eicar", "clamd")
    assert [rule.name for rule in policy.inspect.dlp] == ["cards", "keys", "cloud-keys"]
    [night] = policy.scheduled
    assert night.when is not None
    assert night.when.active(_at("2026-12-03T22:00"))  # a Thursday night, here
    assert not night.when.active(_at("2026-12-04T22:00"))  # Friday
    [video] = policy.quotas
    assert video.who.matches("/usr/bin/mpv", "mpv", 1000, "")
    [backups] = policy.shapes
    assert (backups.upload, backups.download) == (2_000_000, 10_000_000)


def test_where_the_kernel_cannot_shape_the_daemon_says_so_and_the_proxy_still_paces(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import contextlib

    from netwarden.daemon import up
    from netwarden.engine.host import PlatformError

    class Refusing:
        closed = False

        def start(self, classes: object, interfaces: object) -> None:
            raise PlatformError("shaping: ip link add nw-upload type ifb: Unknown device type")

        def close(self) -> None:
            self.closed = True

    refusing = Refusing()

    class Backend:
        def shaper(self) -> Refusing:
            return refusing

        def shaped_interfaces(self) -> list[str]:
            return ["eth0"]

    monkeypatch.setattr("netwarden.engine.host.backend", Backend)
    policy = parse('[[shape]]\nprocess = ["x"]\nupload = "1 MB/s"\n', "p.toml", ENV)
    with contextlib.ExitStack() as stack:
        guard = up._shaping(policy, stack)
        assert guard is not None
        assert isinstance(guard.shaper, up.NoShaper)
        assert refusing.closed  # what it had set up is gone
    assert "only for connections through netwarden's proxy" in caplog.text
    assert "Unknown device type" in caplog.text

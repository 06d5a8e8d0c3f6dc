"""Time windows of rules: days, hours (also across midnight), time zones, and when the
next change comes."""

from __future__ import annotations

import datetime

import pytest

from netwarden.policy.schedule import Schedule, parse_days, parse_hours, parse_zone


def _at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def test_days_and_ranges() -> None:
    assert parse_days(["mon-fri"]) == frozenset(range(5))
    assert parse_days(["fri-mon"]) == frozenset({4, 5, 6, 0})
    assert parse_days(["sat", "sun"]) == frozenset({5, 6})
    with pytest.raises(ValueError, match="not a day"):
        parse_days(["funday"])


def test_hours_and_zones() -> None:
    assert parse_hours("08:00-17:30") == (480, 1050)
    assert parse_hours("22:00-06:00") == (1320, 360)
    for bad in ("8-17", "25:00-26:00", "10:00-10:00"):
        with pytest.raises(ValueError, match=r"time of day|empty"):
            parse_hours(bad)
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_zone("Mars/Base")


def test_a_window_across_midnight_belongs_to_the_day_it_starts() -> None:
    night = Schedule(parse_days(["fri"]), *parse_hours("22:00-06:00"), zone="UTC")
    assert night.active(_at("2026-12-04T22:30+00:00"))  # Friday evening
    assert night.active(_at("2026-12-05T05:59+00:00"))  # Saturday morning
    assert not night.active(_at("2026-12-05T06:00+00:00"))
    assert not night.active(_at("2026-12-03T23:00+00:00"))  # Thursday
    assert not night.active(_at("2026-12-04T05:00+00:00"))  # Friday morning: Thursday's


def test_time_zones_are_followed_with_their_summer_time() -> None:
    office = Schedule(parse_days(["mon-fri"]), *parse_hours("09:00-17:00"), zone="Europe/Berlin")
    assert office.active(_at("2026-12-01T08:30+00:00"))  # 09:30 in Berlin (winter, +1)
    assert not office.active(_at("2026-07-01T15:30+00:00"))  # 17:30 in Berlin (summer, +2)
    assert office.active(_at("2026-07-01T14:30+00:00"))


def test_next_change_is_the_minute_the_window_opens_or_closes() -> None:
    office = Schedule(parse_days(["mon-fri"]), *parse_hours("09:00-17:00"), zone="UTC")
    friday_evening = _at("2026-12-04T18:00:10+00:00")
    assert office.next_change(friday_evening) == _at("2026-12-07T09:00+00:00")  # Monday
    assert office.next_change(_at("2026-12-07T09:00+00:00")) == _at("2026-12-07T17:00+00:00")
    assert Schedule().next_change(friday_evening) is None  # always in force

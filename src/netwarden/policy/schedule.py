"""When a rule is in force: days of the week and a time of day in a time zone.

    days = ["mon-fri"]            # or ["sat", "sun"]; all days when left out
    hours = "08:00-17:30"         # may wrap midnight: "22:00-06:00"; all day when left out
    timezone = "Europe/Berlin"    # the host's own zone when left out

A window that wraps midnight belongs to the day it starts on: "fri" with "22:00-06:00"
holds from Friday 22:00 to Saturday 06:00.
"""

from __future__ import annotations

import datetime
import os
import re
import time
import zoneinfo
from dataclasses import dataclass

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS = re.compile(r"^([01]?[0-9]|2[0-4]):([0-5][0-9])-([01]?[0-9]|2[0-4]):([0-5][0-9])$")
OFFSET_VARIABLE = "NETWARDEN_TIME_OFFSET"  # seconds added to the clock (tests)
MINUTE = 60.0
HORIZON = 8 * 24 * 60  # minutes looked ahead for the next change (a week and a day)


def now() -> float:
    """The time windows and quota periods go by: the wall clock, shifted by
    $NETWARDEN_TIME_OFFSET seconds when set (to test a window without waiting for it)."""
    return time.time() + float(os.environ.get(OFFSET_VARIABLE, "0") or 0)


def parse_days(values: list[str]) -> frozenset[int]:
    """Days (0 = Monday) from names and ranges like "mon-fri"; raises ValueError."""
    days: set[int] = set()
    for value in values:
        low, _, high = value.lower().partition("-")
        if low not in DAYS or (high and high not in DAYS):
            raise ValueError(f"{value!r} is not a day or days (mon, tue, ... or mon-fri)")
        first, last = DAYS.index(low), DAYS.index(high or low)
        day = first
        while True:
            days.add(day)
            if day == last:
                break
            day = (day + 1) % 7
    return frozenset(days)


def parse_hours(text: str) -> tuple[int, int]:
    """(start, end) in minutes of the day from "HH:MM-HH:MM"; raises ValueError."""
    match = HOURS.match(text.replace(" ", ""))
    if match is None:
        raise ValueError(f"{text!r} is not a time of day like 08:00-17:30")
    hour1, minute1, hour2, minute2 = (int(g) for g in match.groups())
    start, end = hour1 * 60 + minute1, hour2 * 60 + minute2
    if start > 24 * 60 or end > 24 * 60:
        raise ValueError(f"{text!r}: a time of day goes up to 24:00")
    if start == end:
        raise ValueError(f"{text!r} is empty (start and end are the same)")
    return start, end


def parse_zone(name: str) -> datetime.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (like UTC or Europe/Berlin)") from None


@dataclass(frozen=True, slots=True)
class Schedule:
    days: frozenset[int] = frozenset(range(7))
    start: int = 0  # minutes of the day
    end: int = 24 * 60
    zone: str = ""  # "" : the host's zone

    def tz(self) -> datetime.tzinfo | None:
        return zoneinfo.ZoneInfo(self.zone) if self.zone else None

    def active(self, at: float) -> bool:
        moment = datetime.datetime.fromtimestamp(at, self.tz() or None)
        if self.tz() is None:
            moment = moment.astimezone()
        minute = moment.hour * 60 + moment.minute
        weekday = moment.weekday()
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # Wraps midnight: the evening of a listed day, or the morning after one.
        return (weekday in self.days and minute >= self.start) or (
            (weekday - 1) % 7 in self.days and minute < self.end
        )

    def next_change(self, after: float) -> float | None:
        """The first minute boundary after `after` when active() changes (None: never
        within the next week and a day)."""
        state = self.active(after)
        boundary = (after // MINUTE + 1) * MINUTE
        for step in range(HORIZON):
            moment = boundary + step * MINUTE
            if self.active(moment) != state:
                return moment
        return None

    def describe(self) -> str:
        days = "every day" if len(self.days) == 7 else ",".join(DAYS[d] for d in sorted(self.days))
        hours = (
            f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        )
        return f"{days} {hours}" + (f" {self.zone}" if self.zone else "")

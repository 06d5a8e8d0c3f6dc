"""The `netwarden` console script.

`netwarden monitor --once --format json [--netns NAME]`, which scripts run in loops,
starts without loading the option parser (a third of its time on a busy host); every
other command line, --help included, goes through cli/app.py.
"""

from __future__ import annotations

import sys


def plain_json_listing(argv: list[str]) -> tuple[str | None] | None:
    """(netns,) when argv asks for exactly the JSON listing, else None."""
    if argv[:1] != ["monitor"]:
        return None
    words = [part for word in argv[1:] for part in word.split("=", 1)]
    netns: str | None = None
    seen: set[str] = set()
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--once" and word not in seen:
            index += 1
        elif word == "--format" and word not in seen and words[index + 1 : index + 2] == ["json"]:
            index += 2
        elif word == "--netns" and word not in seen and index + 1 < len(words):
            netns = words[index + 1]
            if not netns or netns.startswith("-"):
                return None
            index += 2
        else:
            return None
        seen.add(word)
    return (netns,) if {"--once", "--format"} <= seen else None


def main() -> None:
    listing = plain_json_listing(sys.argv[1:])
    if listing is None:
        from netwarden.cli.app import main as full_main

        full_main()
        return
    from netwarden.cli.once import CommandError, monitor_once

    try:
        monitor_once(listing[0], True, None)
    except CommandError as exc:
        print(f"netwarden: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(0)

"""What a running daemon set up, written where `netwarden down` (or the next `up`
after a crash) finds it: one file per network namespace, since each has its own rules."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from netwarden.engine import host

RUN_DIR = Path("/run/netwarden")


@dataclass(frozen=True, slots=True)
class DaemonState:
    pid: int
    table: str
    policy: str
    monitor_table: str = ""


def state_file() -> Path:
    namespace = os.stat("/proc/thread-self/ns/net").st_ino
    return RUN_DIR / f"up-net{namespace}.json"


def api_socket() -> Path:
    """Where `netwarden up` serves its control API (mode 0600)."""
    namespace = os.stat("/proc/thread-self/ns/net").st_ino
    return RUN_DIR / f"api-net{namespace}.sock"


def read() -> DaemonState | None:
    try:
        data = json.loads(state_file().read_text())
        return DaemonState(int(data["pid"]), str(data["table"]), str(data["policy"]),
                           str(data.get("monitor_table", "")))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(state: DaemonState) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = state_file()
    path.write_text(json.dumps(asdict(state)))


def callouts_file() -> Path:
    """What the daemon's callouts did so far (for `netwarden callouts list`)."""
    return state_file().with_suffix(".callouts.json")


def write_callouts(document: dict[str, object]) -> None:
    path = callouts_file()
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(document))
    partial.replace(path)


def read_callouts() -> dict[str, Any] | None:
    try:
        data = json.loads(callouts_file().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clear() -> None:
    from netwarden.engine.app_notes import notes_path

    for path in (state_file(), callouts_file(), notes_path()):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):  # other namespaces' daemons may still use it
        RUN_DIR.rmdir()


def alive(pid: int) -> bool:
    return host.process_alive(pid)

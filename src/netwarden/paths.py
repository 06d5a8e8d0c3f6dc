"""Where netwarden keeps state that outlives a run: /var/lib/netwarden for root, the
user's XDG state directory otherwise."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir(privileged: bool | None = None) -> Path:
    if privileged is None:
        privileged = os.geteuid() == 0 if hasattr(os, "geteuid") else False
    override = os.environ.get("NETWARDEN_STATE_DIR")
    if override:
        return Path(override)
    if privileged:
        return Path("/var/lib/netwarden")
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "netwarden"


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (never readable by others, not
    even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(partial, path)

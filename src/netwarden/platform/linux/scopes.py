"""Application scopes: `netwarden run --scope NAME -- CMD` runs CMD in a cgroup of its
own (netwarden.slice/NAME), which policy rules can name with `scope = "NAME"`.

The policy gives the scope's sockets their mark (see cgroup_marks) when it is applied,
whether the scope runs already or starts later; a scope no policy names needs no mark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from netwarden.platform.base import PlatformError
from netwarden.platform.linux.cgroup_marks import any_attached
from netwarden.platform.linux.procfs import cgroup2_mount
from netwarden.policy.environment import SCOPE_PARENT


class ScopeError(PlatformError):
    pass


def scope_dir(name: str) -> Path:
    mount = cgroup2_mount()
    if mount is None:
        raise ScopeError("scopes need the cgroup v2 hierarchy, and none is mounted")
    return mount / SCOPE_PARENT / name


def run(name: str, argv: Sequence[str]) -> int:
    """Run argv in the scope's cgroup; remove the cgroup when the last process leaves
    and no policy names it."""
    if not argv:
        raise ScopeError("give the command to run after --")
    directory = scope_dir(name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise ScopeError(
            f"netwarden run --scope needs root (it makes the scope's cgroup {directory})"
        ) from None
    except OSError as exc:
        raise ScopeError(f"cannot set up scope {name!r} at {directory}: {exc.strerror}") from exc
    procs = directory / "cgroup.procs"

    def enter_scope() -> None:  # in the child, before exec: all its sockets are the scope's
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))

    try:
        child = subprocess.Popen(list(argv), preexec_fn=enter_scope)  # noqa: PLW1509
    except OSError as exc:
        remove_idle_scopes()
        raise ScopeError(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
    previous = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s))
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}  # fmt: skip
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        remove_idle_scopes()


def remove_idle_scopes() -> None:
    """Remove scope cgroups that nothing runs in and no policy marks (and the slice)."""
    mount = cgroup2_mount()
    if mount is None:
        return
    parent = mount / SCOPE_PARENT
    with contextlib.suppress(OSError):
        for directory in parent.iterdir():
            if directory.is_dir() and not any_attached(directory):
                with contextlib.suppress(OSError):  # still in use
                    directory.rmdir()
        parent.rmdir()

"""Each process's exe, command line and uid as recorded when it execs (the C module's
ExecRecords: a BPF program on sched_process_exec, running in the exec'ing process),
for processes that exit before the monitor reads /proc: a program that connects,
sends and exits within a millisecond still has its flows carry what it was."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from netwarden.model import ProcessInfo
from netwarden.platform.linux.procfs import bpf_pids_are_ours, user_name

try:
    from netwarden.platform.linux import _native
except ImportError:  # built without a compiler
    _native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class ExecRecords:
    def __init__(self) -> None:
        if _native is None or not hasattr(_native, "ExecRecords"):
            raise OSError("netwarden's C module is not built")
        self._records = _native.ExecRecords()

    def lookup(self, pid: int) -> ProcessInfo | None:
        found = self._records.lookup(pid)
        if found is None:
            return None
        path, cmdline, uid = found
        # The path as executed ("/bin/true"); /proc names the file it led to.
        exe = os.path.realpath(path) if path.startswith("/") else path
        return ProcessInfo(
            pid=pid,
            name=os.path.basename(path)[:15],  # as the kernel's comm has it
            exe=exe,
            cmdline=tuple(p.decode(errors="replace") for p in cmdline.split(b"\0") if p),
            uid=uid,
            user=user_name(uid),
        )

    def close(self) -> None:
        self._records.close()


def open_exec_records() -> ExecRecords | None:
    if not bpf_pids_are_ours():
        log.info("exec records unavailable: netwarden runs in a pid namespace of its own")
        return None
    try:
        return ExecRecords()
    except OSError as exc:
        log.info("exec records unavailable (%s): a process that exits at once keeps no exe", exc)
        return None


def completed_by(
    read_process: Callable[[int], ProcessInfo | None], records: ExecRecords
) -> Callable[[int], ProcessInfo | None]:
    """read_process, with what the process's exec recorded where /proc no longer says
    (the process exited, or is exiting: its command line goes first, then its exe)."""

    def read(pid: int) -> ProcessInfo | None:
        info = read_process(pid)
        if info is not None and info.exe and info.cmdline:
            return info
        recorded = records.lookup(pid)
        if recorded is None:
            return info
        if info is None:
            return recorded
        return ProcessInfo(
            pid=pid,
            name=info.name or recorded.name,
            exe=info.exe or recorded.exe,
            cmdline=info.cmdline or recorded.cmdline,
            uid=info.uid if info.uid is not None else recorded.uid,
            user=info.user or recorded.user,
            cgroup=info.cgroup,
            unit=info.unit,
        )

    return read

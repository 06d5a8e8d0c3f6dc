"""Processes behind sockets: /proc/*/fd inode map (cached), process details, cgroups."""

from __future__ import annotations

import functools
import logging
import os
import pwd
import time
from collections.abc import Callable
from pathlib import Path

from netwarden.model import ProcessInfo

try:
    from netwarden.platform.linux import _native
except ImportError:  # not compiled: the Python code does the same, slower
    _native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PROC = "/proc"
# Threads that read /proc/PID/fd links (one readlink per open file) at the same time.
SCAN_THREADS = min(4, os.cpu_count() or 1)
# An inode the map does not know triggers a rescan at most this often.
RESCAN_INTERVAL = 1.0


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup/unified on hybrid hosts)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return Path(fields[1])
    except OSError:
        return None
    return None


def scan_socket_inodes() -> tuple[dict[int, int], int]:
    """Map every socket inode to the pid holding it (the lowest pid when shared);
    also count the processes whose open files could not be read."""
    global _iterator_usable
    if _native is None:
        return scan_socket_inodes_python()
    if _iterator_usable is None:
        _iterator_usable = os.geteuid() == 0 and PROC == "/proc" and _in_initial_pid_namespace()
        if _iterator_usable:
            _iterator_usable = _iterator_names_this_process()
    if _iterator_usable:
        try:
            return _native.task_socket_owners(), 0
        except OSError as exc:
            log.debug("task_file iterator failed (%s); scanning /proc", exc)
            _iterator_usable = False
    return _native.scan_socket_inodes(PROC, threads=SCAN_THREADS)


def _iterator_names_this_process() -> bool:
    """Whether the iterator works here and reads the kernel's structures right: it must
    name this process as the holder of a socket made for the purpose. (Its program is
    assembled from offsets found in the kernel's BTF, so a kernel whose structures the
    lookup misreads must fall back to /proc rather than name wrong processes.)"""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        inode = os.fstat(probe.fileno()).st_ino
        try:
            owners = _native.task_socket_owners()
        except OSError as exc:  # no BTF, BPF not allowed, an old kernel
            log.debug("task_file iterator unavailable (%s); scanning /proc", exc)
            return False
    if owners.get(inode) != os.getpid():
        log.warning("task_file iterator misreads this kernel; scanning /proc instead")
        return False
    return True


# Whether the kernel's task_file iterator may replace the /proc scan: None until tried.
_iterator_usable: bool | None = None


def _in_initial_pid_namespace() -> bool:
    """The iterator names processes by their pids in the initial pid namespace: only
    there are they the pids that /proc shows."""
    try:
        with open(f"{PROC}/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        pass
    return False


def scan_socket_inodes_python() -> tuple[dict[int, int], int]:
    """scan_socket_inodes without the native module (the reference it is tested against)."""
    owners: dict[int, int] = {}
    denied = 0
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fd_dir = f"{PROC}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue  # exited
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except PermissionError:
                denied += 1
                break
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode not in owners or pid < owners[inode]:
                    owners[inode] = pid
    return owners, denied


CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF = 21, 12, 39


def has_capability(bit: int) -> bool:
    """Whether this process holds the capability (CAP_* number) in its effective set."""
    try:
        with open(f"{PROC}/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def may_load_bpf() -> bool:
    """Whether loading BPF programs can work at all (asking without it makes libbpf
    print its complaint on stderr)."""
    return has_capability(CAP_BPF) or has_capability(CAP_SYS_ADMIN)


INITIAL_PID_NAMESPACE = 0xEFFFFFFC  # the inode the kernel gives the initial pid namespace


def bpf_pids_are_ours() -> bool:
    """Whether pids from BPF programs (which number processes as the initial pid
    namespace does) are the pids this process sees in /proc."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == INITIAL_PID_NAMESPACE
    except OSError:
        return False


def unit_of(cgroup: str) -> str:
    """The systemd unit a cgroup path belongs to, e.g. nginx.service, or ''."""
    for part in reversed(cgroup.split("/")):
        if part.endswith((".service", ".scope")):
            return part
    return ""


def read_process(pid: int) -> ProcessInfo | None:
    """As few syscalls as possible, most perishable first: for a process that may
    exit within a millisecond of its flow event (exe and cmdline vanish at exit,
    the name stays readable while the process is a zombie)."""
    base = f"{PROC}/{pid}"
    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        exe = ""
    try:
        with open(f"{base}/cmdline", "rb") as f:
            cmdline = tuple(p.decode(errors="replace") for p in f.read().split(b"\0") if p)
        with open(f"{base}/comm", "rb") as f:
            name = f.read().decode(errors="replace").strip()
        with open(f"{base}/status", "rb") as f:
            uid = next(int(line.split()[1]) for line in f if line.startswith(b"Uid:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    cgroup = _cgroup_of(pid)
    return ProcessInfo(
        pid=pid, name=name, exe=exe, cmdline=cmdline, uid=uid, user=user_name(uid),
        cgroup=cgroup, unit=unit_of(cgroup),
    )  # fmt: skip


@functools.lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _cgroup_of(pid: int) -> str:
    try:
        with open(f"{PROC}/{pid}/cgroup", encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return ""


def pid_alive(pid: int) -> bool:
    """Whether the process runs (an exited one waiting to be reaped does not)."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def start_time(pid: int) -> int | None:
    """Clock ticks since boot at which pid started: tells a reused pid apart."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[19])


class ProcResolver:
    """Caches for socket owners, process details and cgroup names."""

    def __init__(self) -> None:
        self._owners: dict[int, int] = {}
        self.denied = 0
        self._last_scan = 0.0
        # pid -> (start time, details, when the start time was last checked)
        self._infos: dict[int, tuple[int | None, ProcessInfo | None, float]] = {}
        self._cgroups: dict[int, str] = {}
        self._cgroups_scanned = 0.0
        self._cgroup_root = cgroup2_mount()
        # How a process is read (the backend adds what its exec recorded).
        self.read: Callable[[int], ProcessInfo | None] = read_process

    def _rescan(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_scan >= RESCAN_INTERVAL:
            self._owners, self.denied = scan_socket_inodes()
            self._last_scan = now

    def owner_of(self, inode: int) -> int | None:
        return self.owners_of({inode}).get(inode)

    def owners_of(self, inodes: set[int]) -> dict[int, int]:
        inodes = {inode for inode in inodes if inode}
        if not inodes <= self._owners.keys():
            self._rescan()
        return {inode: self._owners[inode] for inode in inodes if inode in self._owners}

    def all_owners(self) -> dict[int, int]:
        self._rescan(force=True)
        return self._owners

    def info(self, pid: int) -> ProcessInfo | None:
        cached = self._infos.get(pid)
        now = time.monotonic()
        if cached is not None and now - cached[2] < RESCAN_INTERVAL:
            return cached[1]
        started = start_time(pid)
        if cached is not None and cached[0] == started and started is not None:
            self._infos[pid] = (started, cached[1], now)
            return cached[1]
        info = self.read(pid)
        self._infos[pid] = (started, info, now)
        if len(self._infos) > 65536:
            self._infos.clear()
        return info

    def cgroup_path(self, cgroup_id: int) -> str:
        if not cgroup_id or self._cgroup_root is None:
            return ""
        if cgroup_id not in self._cgroups:
            now = time.monotonic()
            if now - self._cgroups_scanned < RESCAN_INTERVAL:
                return ""
            self._cgroups_scanned = now
            self._cgroups = self._scan_cgroups(self._cgroup_root)
        return self._cgroups.get(cgroup_id, "")

    @staticmethod
    def _scan_cgroups(root: Path) -> dict[int, str]:
        found = {root.stat().st_ino: "/"}
        for dirpath, _dirs, _files in os.walk(root):
            try:
                found[os.stat(dirpath).st_ino] = "/" + os.path.relpath(dirpath, root).lstrip(".")
            except OSError:
                continue
        return found

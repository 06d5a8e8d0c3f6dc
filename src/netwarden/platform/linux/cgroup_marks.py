"""Marks on the sockets of a cgroup (a netwarden scope or a systemd service), which
policy rules match with `meta mark`.

A four-instruction eBPF program, attached to the cgroup at socket creation
(BPF_CGROUP_INET_SOCK_CREATE, alongside other programs: BPF_F_ALLOW_MULTI), gives every
new socket there the cgroup's mark; sockets that already exist are marked through a
duplicate of their descriptor (pidfd_getfd). Matching a mark works with every nftables
version: nft < 1.0.7 cannot express `socket cgroupv2` in JSON.

Nothing is recorded on the side: a program's name carries its mark and the network
namespace whose policy attached it ("nw" + 8 + 5 hex digits), so what is attached is
always read back from the kernel, also after a crash. cgroups are shared by every
network namespace; each namespace's policy only ever changes its own programs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netwarden.platform.base import PlatformError
from netwarden.platform.linux.procfs import cgroup2_mount

BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}
PIDFD_GETFD_SYSCALL = 438  # the same number on every architecture
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH = 5, 8, 9
BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_QUERY = 13, 15, 16
BPF_PROG_TYPE_CGROUP_SOCK = 9
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_F_ALLOW_MULTI = 2
BPF_SOCK_MARK_OFFSET = 16  # struct bpf_sock: bound_dev_if, family, type, protocol, mark
PROG_INFO_SIZE, PROG_INFO_NAME = 80, 64  # struct bpf_prog_info: name at byte 64
NAME_PREFIX = "nw"
MAX_QUERY = 64

_libc = ctypes.CDLL(None, use_errno=True)


class CgroupMarkError(PlatformError):
    pass


def _bpf(command: int, attr: bytearray) -> int:
    number = BPF_SYSCALL.get(platform.machine())
    if number is None:
        raise CgroupMarkError(f"cgroup socket marks are not supported on {platform.machine()}")
    buffer = (ctypes.c_char * len(attr)).from_buffer(attr)
    result = int(_libc.syscall(number, command, buffer, len(attr)))
    if result < 0:
        error = ctypes.get_errno()
        if error == errno.EPERM:
            raise CgroupMarkError("marking the sockets of a scope or service needs root")
        raise CgroupMarkError(f"bpf() failed: {os.strerror(error)}")
    return result


def _mark_program(mark: int) -> bytes:
    def insn(code: int, dst: int, src: int, off: int, imm: int) -> bytes:
        return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)

    return b"".join((
        insn(0xB7, 2, 0, 0, mark - (1 << 32) if mark >= 1 << 31 else mark),  # r2 = mark
        insn(0x63, 1, 2, BPF_SOCK_MARK_OFFSET, 0),  # ctx->mark = r2
        insn(0xB7, 0, 0, 0, 1),  # r0 = 1: allow the socket
        insn(0x95, 0, 0, 0, 0),  # exit
    ))  # fmt: skip


def _namespace_tag() -> int:
    return os.stat("/proc/self/ns/net").st_ino & 0xFFFFF


def load_mark_program(mark: int) -> int:
    """Load (not attach) the program that marks new sockets; return its fd."""
    program = ctypes.create_string_buffer(_mark_program(mark))
    license_text = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_CGROUP_SOCK, 4,
                     ctypes.addressof(program), ctypes.addressof(license_text))  # fmt: skip
    name = f"{NAME_PREFIX}{mark:08x}{_namespace_tag():05x}"
    struct.pack_into("<16s", attr, 48, name.encode())
    struct.pack_into("<I", attr, 68, BPF_CGROUP_INET_SOCK_CREATE)
    return _bpf(BPF_PROG_LOAD, attr)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _program_ids(cgroup_fd: int) -> list[int]:
    ids = (ctypes.c_uint32 * MAX_QUERY)()
    attr = bytearray(struct.pack("<IIIIQI", cgroup_fd, BPF_CGROUP_INET_SOCK_CREATE, 0, 0,
                                 ctypes.addressof(ids), MAX_QUERY))  # fmt: skip
    attr += bytes(8)
    _bpf(BPF_PROG_QUERY, attr)
    (count,) = struct.unpack_from("<I", attr, 24)
    return list(ids[: min(count, MAX_QUERY)])


def _program_name(program_fd: int) -> str:
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    request = struct.pack("<IIQ", program_fd, PROG_INFO_SIZE, ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, bytearray(request))
    name = info.raw[PROG_INFO_NAME : PROG_INFO_NAME + 16].split(b"\0", 1)[0]
    return name.decode("ascii", "replace")


def _mark_of(name: str) -> tuple[int, int] | None:
    """(mark, namespace tag) of one of netwarden's programs; None for others'."""
    digits = name.removeprefix(NAME_PREFIX)
    if digits == name or len(digits) != 13:
        return None
    try:
        return int(digits[:8], 16), int(digits[8:], 16)
    except ValueError:
        return None


def _programs(cgroup_fd: int) -> list[tuple[int, int, int]]:
    """(program id, mark, namespace tag) of netwarden's programs on a cgroup."""
    found = []
    for program_id in _program_ids(cgroup_fd):
        with _program(program_id) as program_fd:
            owned = _mark_of(_program_name(program_fd))
        if owned is not None:
            found.append((program_id, *owned))
    return found


def attached_mark(cgroup: Path) -> int | None:
    """The mark this namespace's program gives sockets created in `cgroup`, if any."""
    tag = _namespace_tag()
    with _opened(cgroup) as cgroup_fd:
        return next((mark for _id, mark, owner in _programs(cgroup_fd) if owner == tag), None)


def any_attached(cgroup: Path) -> bool:
    """Whether any namespace's policy has netwarden's program on `cgroup`."""
    try:
        with _opened(cgroup) as cgroup_fd:
            return bool(_programs(cgroup_fd))
    except (OSError, CgroupMarkError):
        return False


@contextlib.contextmanager
def _program(program_id: int) -> Iterator[int]:
    fd = _bpf(BPF_PROG_GET_FD_BY_ID, bytearray(struct.pack("<III", program_id, 0, 0)))
    try:
        yield fd
    finally:
        os.close(fd)


def attach(cgroup: Path, mark: int) -> None:
    """Mark sockets created in `cgroup` from now on, and those its processes hold now."""
    program_fd = load_mark_program(mark)
    try:
        with _opened(cgroup) as cgroup_fd:
            _bpf(BPF_PROG_ATTACH, bytearray(struct.pack(
                "<IIIII", cgroup_fd, program_fd, BPF_CGROUP_INET_SOCK_CREATE,
                BPF_F_ALLOW_MULTI, 0)))  # fmt: skip
    finally:
        os.close(program_fd)
    relabel_sockets(cgroup, 0, mark)


def detach(cgroup: Path) -> int | None:
    """Remove this namespace's program from `cgroup`; its mark, or None if none was
    there."""
    tag = _namespace_tag()
    with _opened(cgroup) as cgroup_fd:
        for program_id, mark, owner in _programs(cgroup_fd):
            if owner == tag:
                _detach_program(cgroup, cgroup_fd, program_id, mark)
                return mark
    return None


def _detach_program(cgroup: Path, cgroup_fd: int, program_id: int, mark: int) -> None:
    """Sockets lose the mark unless another namespace's program still sets it."""
    with _program(program_id) as program_fd:
        request = struct.pack("<IIIII", cgroup_fd, program_fd, BPF_CGROUP_INET_SOCK_CREATE,
                              0, 0)  # detach takes no flags  # fmt: skip
        _bpf(BPF_PROG_DETACH, bytearray(request))
    if all(other != mark for _id, other, _owner in _programs(cgroup_fd)):
        relabel_sockets(cgroup, mark, 0)


def release_orphans() -> int:
    """Detach the programs of namespaces that no longer exist (their policy went with
    them: deleted without `policy off`, or a crash); return how many."""
    living = _living_namespace_tags()
    released = 0
    for cgroup in _cgroups():
        try:
            with _opened(cgroup) as cgroup_fd:
                for program_id, mark, owner in _programs(cgroup_fd):
                    if owner not in living:
                        _detach_program(cgroup, cgroup_fd, program_id, mark)
                        released += 1
        except (OSError, CgroupMarkError):
            continue
    return released


def _living_namespace_tags() -> set[int]:
    tags = set()
    for path in (*Path("/proc").glob("[0-9]*/ns/net"), *Path("/run/netns").glob("*")):
        with contextlib.suppress(OSError):
            tags.add(path.stat().st_ino & 0xFFFFF)
    return tags


def _cgroups() -> Iterator[Path]:
    mount = cgroup2_mount()
    if mount is not None:
        for directory, _dirs, _files in os.walk(mount):
            yield Path(directory)


def relabel_sockets(cgroup: Path, old: int, new: int) -> int:
    """Give the internet sockets of the processes in `cgroup` (and below) whose mark is
    `old` the mark `new`; return how many. Processes that exit meanwhile are skipped."""
    changed = 0
    for pid in _pids(cgroup):
        with contextlib.suppress(OSError):
            changed += _relabel_process(pid, old, new)
    return changed


def _pids(cgroup: Path) -> Iterator[int]:
    for directory, _dirs, _files in os.walk(cgroup):
        with contextlib.suppress(OSError):
            for line in (Path(directory) / "cgroup.procs").read_text().split():
                yield int(line)


def _relabel_process(pid: int, old: int, new: int) -> int:
    if pid == os.getpid():
        return 0
    fds = [int(name) for name in os.listdir(f"/proc/{pid}/fd")]
    pidfd = os.pidfd_open(pid)
    changed = 0
    try:
        for target in fds:
            try:
                if not os.readlink(f"/proc/{pid}/fd/{target}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = int(_libc.syscall(PIDFD_GETFD_SYSCALL, pidfd, target, 0))
            if fd < 0:
                continue
            with socket.socket(fileno=fd) as duplicate:
                if duplicate.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                if duplicate.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == old:
                    duplicate.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, new)
                    changed += 1
    finally:
        os.close(pidfd)
    return changed


@dataclass
class MarkChanges:
    """What `sync` did, so that a failed policy apply can put it back."""

    attached: list[Path] = field(default_factory=list)
    detached: list[tuple[Path, int]] = field(default_factory=list)

    def undo(self) -> None:
        for cgroup in reversed(self.attached):
            with contextlib.suppress(OSError, CgroupMarkError):
                detach(cgroup)
        for cgroup, mark in reversed(self.detached):
            with contextlib.suppress(OSError, CgroupMarkError):
                attach(cgroup, mark)


def marked_cgroups() -> dict[Path, int]:
    """Every cgroup where netwarden's program is attached now, with its mark."""
    found: dict[Path, int] = {}
    for cgroup in _cgroups():
        try:
            mark = attached_mark(cgroup)
        except (OSError, CgroupMarkError):
            continue
        if mark is not None:
            found[cgroup] = mark
    return found


def sync(wanted: dict[Path, int]) -> MarkChanges:
    """Make the attached programs exactly `wanted` (cgroup -> mark)."""
    changes = MarkChanges()
    release_orphans()
    try:
        for cgroup, mark in marked_cgroups().items():
            if wanted.get(cgroup) != mark:
                detach(cgroup)
                changes.detached.append((cgroup, mark))
        for cgroup, mark in wanted.items():
            if attached_mark(cgroup) != mark:
                attach(cgroup, mark)
                changes.attached.append(cgroup)
    except (OSError, CgroupMarkError) as exc:
        changes.undo()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CgroupMarkError(f"cannot mark the sockets of a cgroup: {reason}") from exc
    return changes

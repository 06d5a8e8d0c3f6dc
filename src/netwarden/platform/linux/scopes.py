"""Application scopes: `netwarden run --scope NAME -- CMD` runs CMD in a cgroup of its
own, and every socket created there carries the scope's mark, which policy rules match.

The mark is set by a four-instruction eBPF program attached to the scope's cgroup at
socket creation (BPF_CGROUP_INET_SOCK_CREATE). Matching the mark rather than the cgroup
works with every nftables version (nft < 1.0.7 cannot express cgroupv2 in JSON), and
the scope's cgroup only needs to exist while something runs in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import struct
import subprocess
import zlib
from collections.abc import Sequence
from pathlib import Path

from netwarden.platform.base import PlatformError
from netwarden.platform.linux.procfs import cgroup2_mount
from netwarden.policy.environment import SCOPE_PARENT

SCOPE_MARK_BASE = 0x4E570000  # "NW" in the upper half; the lower half names the scope
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_PROG_TYPE_CGROUP_SOCK = 9
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_SOCK_MARK_OFFSET = 16  # struct bpf_sock: bound_dev_if, family, type, protocol, mark

_libc = ctypes.CDLL(None, use_errno=True)


class ScopeError(PlatformError):
    pass


def scope_mark(name: str) -> int:
    return SCOPE_MARK_BASE | (zlib.crc32(name.encode()) & 0xFFFF)


def scope_dir(name: str) -> Path:
    mount = cgroup2_mount()
    if mount is None:
        raise ScopeError("scopes need the cgroup v2 hierarchy, and none is mounted")
    return mount / SCOPE_PARENT / name


def _mark_program(mark: int) -> bytes:
    def insn(code: int, dst: int, src: int, off: int, imm: int) -> bytes:
        return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)

    return b"".join((
        insn(0xB7, 2, 0, 0, mark),  # r2 = mark
        insn(0x63, 1, 2, BPF_SOCK_MARK_OFFSET, 0),  # ctx->mark = r2
        insn(0xB7, 0, 0, 0, 1),  # r0 = 1: allow the socket
        insn(0x95, 0, 0, 0, 0),  # exit
    ))  # fmt: skip


def _bpf(command: int, attr: bytearray) -> int:
    number = BPF_SYSCALL.get(platform.machine())
    if number is None:
        raise ScopeError(f"scopes are not supported on {platform.machine()} yet")
    buffer = (ctypes.c_char * len(attr)).from_buffer(attr)
    result = int(_libc.syscall(number, command, buffer, len(attr)))
    if result < 0:
        error = ctypes.get_errno()
        raise ScopeError(f"bpf() failed: {os.strerror(error)}")
    return result


def load_mark_program(mark: int) -> int:
    """Load (not attach) the program that marks new sockets; return its fd."""
    program = ctypes.create_string_buffer(_mark_program(mark))
    license_text = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_CGROUP_SOCK, 4,
                     ctypes.addressof(program), ctypes.addressof(license_text))  # fmt: skip
    struct.pack_into("<16s", attr, 48, b"netwarden_scope")
    struct.pack_into("<I", attr, 68, BPF_CGROUP_INET_SOCK_CREATE)
    return _bpf(BPF_PROG_LOAD, attr)


def attach_mark(cgroup: Path, mark: int) -> None:
    """Mark every socket created in `cgroup` from now on (once per cgroup)."""
    program_fd = load_mark_program(mark)
    cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attach = bytearray(struct.pack("<IIII", cgroup_fd, program_fd,
                                       BPF_CGROUP_INET_SOCK_CREATE, 0))  # fmt: skip
        try:
            _bpf(BPF_PROG_ATTACH, attach)
        except ScopeError as exc:
            if "exists" not in str(exc).lower():  # another run of this scope attached it
                raise
    finally:
        os.close(cgroup_fd)
        os.close(program_fd)


def run(name: str, argv: Sequence[str]) -> int:
    """Run argv in the scope's cgroup; remove the cgroup when the last process leaves."""
    if not argv:
        raise ScopeError("give the command to run after --")
    directory = scope_dir(name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        attach_mark(directory, scope_mark(name))
    except OSError as exc:
        raise ScopeError(f"cannot set up scope {name!r} at {directory}: {exc.strerror}") from exc
    procs = directory / "cgroup.procs"

    def enter_scope() -> None:  # in the child, before exec: its sockets are marked
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))

    try:
        child = subprocess.Popen(list(argv), preexec_fn=enter_scope)  # noqa: PLW1509
    except OSError as exc:
        _remove_if_empty(directory)
        raise ScopeError(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
    previous = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s))
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}  # fmt: skip
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _remove_if_empty(directory)


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # still in use by another process of the scope
        directory.rmdir()
        directory.parent.rmdir()

"""The C module against the Python code it speeds up: same records, same owners,
clear errors for bad input. Runs on this host's own loopback sockets (no root)."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Iterator

import pytest

from netwarden.model import ProcessInfo
from netwarden.monitor.oneshot import TemplateError, _stand_in_flow, _template
from netwarden.platform.base import NO_FILE, NO_OWNER
from netwarden.testing.fakes import FakeResolver

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the native module is Linux's")


@pytest.fixture
def connected() -> Iterator[list[socket.socket]]:
    """A listener and a connection with 3,000 bytes one way and 1,000 the other."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.sendall(b"x" * 3000)
    server.sendall(b"y" * 1000)
    server.recv(3000, socket.MSG_WAITALL)
    client.recv(1000, socket.MSG_WAITALL)
    yield [listener, client, server]
    for sock in (listener, client, server):
        sock.close()


def test_the_native_module_is_built() -> None:
    """setup.sh installs a compiler: without it the monitor is 5x slower."""
    from netwarden.platform.linux import _native

    assert hasattr(_native, "dump_tcp")


def test_native_dump_reads_what_the_python_parser_reads(connected: list[socket.socket]) -> None:
    from netwarden.platform.linux import _native, sockdiag

    port = connected[0].getsockname()[1]
    table = sockdiag.SockDiagTable()
    try:
        batch = _native.dump_tcp(table._sock.fileno())
        python = [r for r in table.snapshot() if port in (r.local.port, r.remote.port)]
    finally:
        table.close()
    native = [r for r in batch.records() if port in (r[3], r[5])]
    assert len(native) == len(python) == 3
    expected = {
        (r.local.address, r.local.port, r.remote.address, r.remote.port, r.uid, r.inode,
         r.cookie, r.cgroup_id, r.bytes_sent, r.bytes_received)
        for r in python
    }  # fmt: skip
    assert {n[2:] for n in native} == expected
    assert {n[10:] for n in native} == {(0, 0), (3000, 1000), (1000, 3000)}


def test_native_scan_finds_the_owners_the_python_scan_finds(
    connected: list[socket.socket],
) -> None:
    from netwarden.platform.linux import _native, procfs

    inodes = {os.fstat(s.fileno()).st_ino for s in connected}
    for threads in (1, 3):
        owners, _denied = _native.scan_socket_inodes(threads=threads)
        assert {i: owners.get(i) for i in inodes} == dict.fromkeys(inodes, os.getpid())
    python, _denied = procfs.scan_socket_inodes_python()
    assert {i: python.get(i) for i in inodes} == dict.fromkeys(inodes, os.getpid())


def test_native_scan_of_a_missing_proc_is_an_os_error() -> None:
    from netwarden.platform.linux import _native

    with pytest.raises(FileNotFoundError):
        _native.scan_socket_inodes("/nonexistent/proc")


def test_bad_templates_are_refused_with_clear_errors(connected: list[socket.socket]) -> None:
    from netwarden.platform.linux import _native, sockdiag

    table = sockdiag.SockDiagTable()
    try:
        batch = _native.dump_tcp(table._sock.fileno())
    finally:
        table.close()
    names = sockdiag._STATE_JSON
    with tempfile.TemporaryFile() as out:
        with pytest.raises(RuntimeError, match="groups"):
            batch.write(out.fileno(), {}, names)
        groups = batch.groups({})
        assert groups
        assert all(owner in (NO_OWNER, NO_FILE) for owner, _cgroup in groups)
        with pytest.raises(KeyError):
            batch.write(out.fileno(), {}, names)
        one_piece_short = {g: ((b"{",), (0,)) for g in groups}
        with pytest.raises(ValueError, match="one piece more"):
            batch.write(out.fileno(), one_piece_short, names)
        unknown_hole = {g: ((b"{", b"}"), (99,)) for g in groups}
        with pytest.raises(ValueError, match="unknown template field"):
            batch.write(out.fileno(), unknown_hole, names)
        with pytest.raises(ValueError, match="256"):
            batch.write(out.fileno(), unknown_hole, names[:3])
        good = {g: ((b"[", b"]"), (1,)) for g in groups}
        written = batch.write(out.fileno(), good, names)
        out.seek(0)
        text = out.read().decode()
    assert written == len(text)
    assert f"[{connected[0].getsockname()[1]}]" in text.split(",")


def test_a_template_refuses_a_process_that_contains_a_stand_in() -> None:
    sly = ProcessInfo(pid=42, name="sly", cmdline=("sly", "@@netwarden-hole-0@@"))
    resolver = FakeResolver(processes={42: sly})
    with pytest.raises(TemplateError):
        _template(_stand_in_flow((42, 0), resolver, True, 0.0, ""))
    pieces, holes = _template(_stand_in_flow((NO_OWNER, 0), resolver, True, 0.0, ""))
    assert len(pieces) == len(holes) + 1 == 9
    assert b'"process":null' in b"".join(pieces)


def test_the_kernel_iterator_finds_the_owners_the_proc_scan_finds(
    connected: list[socket.socket],
) -> None:
    """The BPF task_file iterator (root only) against the readlink scan."""
    from netwarden.platform.linux import _native

    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the iterator must be tested as root in CI")
        pytest.skip("loading a BPF iterator needs root")
    inodes = {os.fstat(s.fileno()).st_ino for s in connected}
    owners = _native.task_socket_owners()
    assert {i: owners.get(i) for i in inodes} == dict.fromkeys(inodes, os.getpid())
    scanned, _denied = _native.scan_socket_inodes()
    mine = {i for i, pid in scanned.items() if pid == os.getpid()}
    assert {i for i, pid in owners.items() if pid == os.getpid()} == mine

"""A clamd of its own for tests and benchmarks: Debian's clamav-daemon binary with a
signature database written here (nothing is downloaded), listening on a unix socket.

Its signatures: the EICAR test file and the web server's MARKER (netwarden.testing.web),
which netwarden's built-in scanner does not know, so a finding of it is clamd's.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from netwarden.inspect.scanning import EICAR
from netwarden.testing.web import MARKER

if TYPE_CHECKING:
    from netwarden.testing.netlab import Host

EICAR_SIGNATURE = "Netwarden.Test.Eicar.UNOFFICIAL"
MARKER_SIGNATURE = "Netwarden.Test.Marker.UNOFFICIAL"
START_TIMEOUT = 60.0


class ClamdMissing(RuntimeError):
    pass


def write_config(directory: Path) -> tuple[Path, Path]:
    """(clamd.conf, its socket) in directory, with the test signature database."""
    database = directory / "db"
    database.mkdir(parents=True, exist_ok=True)
    (database / "netwarden-test.ndb").write_text(
        f"Netwarden.Test.Eicar:0:*:{EICAR.hex()}\nNetwarden.Test.Marker:0:*:{MARKER.hex()}\n"
    )
    sock = directory / "clamd.sock"
    config = directory / "clamd.conf"
    config.write_text(
        f"LocalSocket {sock}\nDatabaseDirectory {database}\nForeground yes\n"
        f"LogFile {directory / 'clamd.log'}\nStreamMaxLength 100M\nMaxThreads 4\n"
    )
    return config, sock


def start(directory: Path, host: Host | None = None) -> tuple[subprocess.Popen[str], Path]:
    """clamd (in a netlab host when given; the lab stops it), once it answers."""
    binary = shutil.which("clamd") or "/usr/sbin/clamd"
    if not Path(binary).exists():
        raise ClamdMissing("clamd is not installed (Debian: apt install clamav-daemon)")
    config, sock = write_config(directory)
    argv = [binary, "-c", str(config)]
    process = (
        host.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if host is not None
        else subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClamdMissing(f"clamd stopped: {process.stderr.read() if process.stderr else ''}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(sock))
                probe.sendall(b"zPING\0")
                if probe.recv(16).startswith(b"PONG"):
                    return process, sock
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise ClamdMissing(f"clamd did not answer on {sock} within {START_TIMEOUT:.0f} s")

"""What netwarden's proxy identified, shared with other netwarden processes: `netwarden
up` appends one line per identified connection to a file in /run/netwarden (one per
network namespace), and a monitor started apart reads the lines as they come, so its
flows show the protocol too."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import IO

from netwarden.model import Endpoint
from netwarden.model.flow import AppNote

RUN_DIR = Path("/run/netwarden")
MAX_BYTES = 1 << 20  # the file starts again beyond this
MAX_AGE = 600.0  # seconds: older notes name connections long gone


def notes_path(netns: str | None = None) -> Path:
    """The file of this network namespace (or of /run/netns/NETNS)."""
    where = f"/run/netns/{netns}" if netns else "/proc/thread-self/ns/net"
    return RUN_DIR / f"apps-net{os.stat(where).st_ino}.ndjson"


class AppNoteWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def append(self, note: AppNote) -> None:
        line = json.dumps(
            [
                note.client.address,
                note.client.port,
                note.destination.address,
                note.destination.port,
                note.app,
                round(time.time(), 3),
            ]
        )
        with self._lock, contextlib.suppress(OSError):  # a full disk must not stop the proxy
            if self._file is None or self._file.tell() > MAX_BYTES:
                self._reopen()
            assert self._file is not None
            self._file.write(line + "\n")
            self._file.flush()

    def _reopen(self) -> None:
        if self._file is not None:
            self._file.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text("")
        os.replace(partial, self.path)  # a reader sees a new file and reads it from the start
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self.path.unlink(missing_ok=True)


class AppNoteReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._inode = 0
        self._offset = 0
        self._partial = ""

    def poll(self) -> list[AppNote]:
        """The notes written since the last poll (none when nobody writes)."""
        try:
            stat = self.path.stat()
        except OSError:
            return []
        if stat.st_ino != self._inode:
            self._inode, self._offset, self._partial = stat.st_ino, 0, ""
        if stat.st_size <= self._offset:
            return []
        try:
            with open(self.path, encoding="utf-8", errors="replace") as file:
                file.seek(self._offset)
                text = file.read(MAX_BYTES)
                self._offset = file.tell()
        except OSError:
            return []
        *lines, self._partial = (self._partial + text).split("\n")
        oldest = time.time() - MAX_AGE
        notes = []
        for line in lines:
            try:
                client, client_port, target, target_port, app, at = json.loads(line)
                if float(at) >= oldest:
                    notes.append(
                        AppNote(
                            Endpoint(str(client), int(client_port)),
                            Endpoint(str(target), int(target_port)),
                            str(app),
                        )
                    )
            except (ValueError, TypeError):
                continue  # a line cut short or garbled: the others still count
        return notes

"""What `netwarden up` identified, shared through a file with monitors run apart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from netwarden.engine import app_notes
from netwarden.engine.app_notes import AppNoteReader, AppNoteWriter
from netwarden.model import Endpoint
from netwarden.model.flow import AppNote


def note(port: int, app: str = "tls example.com h2") -> AppNote:
    return AppNote(Endpoint("10.0.0.1", port), Endpoint("192.0.2.7", 443), app)


def test_a_reader_gets_each_note_once_and_skips_garbage(tmp_path: Path) -> None:
    path = tmp_path / "apps.ndjson"
    writer, reader = AppNoteWriter(path), AppNoteReader(path)
    assert reader.poll() == []  # nobody writes yet
    writer.append(note(1))
    writer.append(note(2, "ssh"))
    assert reader.poll() == [note(1), note(2, "ssh")]
    assert reader.poll() == []
    with open(path, "a") as file:  # garbled, old, and a line still being written
        file.write("not json\n")
        file.write(json.dumps(["10.0.0.1", 3, "192.0.2.7", 443, "old", time.time() - 3600]))
        file.write('\n["10.0.0.1", 4, "192.0.2.7"')
    assert reader.poll() == []
    with open(path, "a") as file:
        file.write(f', 443, "http GET h", {time.time()}]\n')
    assert reader.poll() == [note(4, "http GET h")]
    writer.close()
    assert not path.exists()


def test_the_file_starts_again_when_full_and_readers_follow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_notes, "MAX_BYTES", 200)
    path = tmp_path / "apps.ndjson"
    writer, reader = AppNoteWriter(path), AppNoteReader(path)
    seen = []
    for port in range(10):  # the file starts again every few notes
        writer.append(note(port))
        seen += reader.poll()
        assert path.stat().st_size <= 400
    assert [n.client.port for n in seen] == list(range(10))
    writer.close()

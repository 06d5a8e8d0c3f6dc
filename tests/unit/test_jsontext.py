from __future__ import annotations

import json
import sys

import pytest

from netwarden import jsontext

DOCUMENTS = [{"event": "opened", "exe": "/usr/bin/ünïcode", "n": 1}, {"rate": 0.5, "x": None}]


def test_ndjson_lines_are_one_parsable_document_each() -> None:
    text = jsontext.dumps_lines(DOCUMENTS).decode()
    assert text.endswith("\n")
    assert [json.loads(line) for line in text.splitlines()] == DOCUMENTS


def test_without_orjson_the_standard_library_writes_the_same_documents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson now fails
    lines = jsontext._pick_lines()(DOCUMENTS)
    assert [json.loads(line) for line in lines.decode().splitlines()] == DOCUMENTS
    assert json.loads(jsontext._pick()(DOCUMENTS[0])) == DOCUMENTS[0]

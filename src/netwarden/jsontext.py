"""JSON text for output: orjson when installed (several times faster), else json."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def _stdlib_dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))


def _pick() -> Callable[[Any], str]:
    try:
        import orjson
    except ImportError:  # orjson is a dependency, but the stdlib will do without it
        return _stdlib_dumps
    return lambda document: orjson.dumps(document).decode()


def _pick_lines() -> Callable[[list[Any]], bytes]:
    try:
        import orjson
    except ImportError:
        return lambda documents: "".join(_stdlib_dumps(d) + "\n" for d in documents).encode()
    return lambda documents: b"\n".join(map(orjson.dumps, documents)) + b"\n"


dumps = _pick()
# NDJSON: one line per document, as UTF-8 bytes.
dumps_lines = _pick_lines()

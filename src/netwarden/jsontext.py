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


dumps = _pick()

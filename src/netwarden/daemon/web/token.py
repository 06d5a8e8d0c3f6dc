"""The control API's token: made at the first start, kept in netwarden's state
directory readable by its owner only; every request must carry it."""

from __future__ import annotations

import secrets
from pathlib import Path

from netwarden.paths import state_dir, write_private

TOKEN_FILE = "api-token"


def token_path(directory: Path | None = None) -> Path:
    return (directory or state_dir()) / TOKEN_FILE


def api_token(directory: Path | None = None) -> str:
    """The token, made (mode 0600) when there is none yet."""
    path = token_path(directory)
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    if len(token) < 32:
        token = secrets.token_urlsafe(32)
        write_private(path, token.encode() + b"\n")
    return token

"""nftables through `nft -j -f -`: JSON in, never command text built from data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from netwarden.jsontext import dumps
from netwarden.platform.base import PlatformError

NFT_TIMEOUT = 30.0


class NftError(PlatformError):
    pass


def nft_binary() -> str:
    path = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None
    )
    if path is None:
        raise NftError("the nft command is missing: install the 'nftables' package")
    return path


def _nft(args: list[str], commands: list[dict[str, Any]] | None = None) -> tuple[bool, str]:
    """Run nft -j with ARGS (and a JSON batch on stdin); (succeeded, output or error)."""
    document = None if commands is None else dumps({"nftables": commands})
    try:
        result = subprocess.run(
            [nft_binary(), "-j", *args], input=document, capture_output=True, text=True,
            timeout=NFT_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if result.returncode != 0:
        message = result.stderr.strip() or result.stdout.strip() or "refused"
        if "Operation not permitted" in message:
            return False, "changing or reading nftables needs root (CAP_NET_ADMIN)"
        return False, message
    return True, result.stdout


def run(commands: list[dict[str, Any]]) -> None:
    """Apply a batch atomically: all of it or, on any error, none of it."""
    ok, output = _nft(["-f", "-"], commands)
    if not ok:
        raise NftError(f"nft refused the change: {output}")


def check(commands: list[dict[str, Any]]) -> tuple[bool, str]:
    """Have the kernel validate a batch without applying it (nft -c)."""
    return _nft(["-c", "-f", "-"], commands)


def list_json(*what: str) -> list[dict[str, Any]]:
    ok, output = _nft(["list", *what])
    if not ok:
        raise NftError(f"nft list {' '.join(what)} failed: {output}")
    items: list[dict[str, Any]] = json.loads(output or '{"nftables": []}')["nftables"]
    return items


def table_exists(family: str, name: str) -> bool:
    return any(
        item.get("table", {}).get("name") == name and item["table"].get("family") == family
        for item in list_json("tables")
    )


def delete_table(family: str, name: str) -> bool:
    """Remove one table if it exists; True when it did."""
    if not table_exists(family, name):
        return False
    run([{"delete": {"table": {"family": family, "name": name}}}])
    return True


def replace_table(family: str, name: str, body: list[dict[str, Any]]) -> None:
    """Create or atomically replace one table with the given chains, rules and sets."""
    commands: list[dict[str, Any]] = [{"add": {"table": {"family": family, "name": name}}}]
    if table_exists(family, name):
        commands.append({"delete": {"table": {"family": family, "name": name}}})
        commands.append({"add": {"table": {"family": family, "name": name}}})
    commands.extend(body)
    run(commands)

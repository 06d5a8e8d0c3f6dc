"""nftables through `nft -j -f -`: JSON in, never command text built from data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

NFT_TIMEOUT = 30.0


class NftError(RuntimeError):
    pass


def nft_binary() -> str:
    path = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None
    )
    if path is None:
        raise NftError("the nft command is missing: install the 'nftables' package")
    return path


def run(commands: list[dict[str, Any]]) -> None:
    """Apply a batch atomically: all of it or, on any error, none of it."""
    document = json.dumps({"nftables": commands})
    result = subprocess.run(
        [nft_binary(), "-j", "-f", "-"],
        input=document,
        capture_output=True,
        text=True,
        timeout=NFT_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise NftError(f"nft refused the change: {result.stderr.strip() or result.stdout.strip()}")


def list_json(*what: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [nft_binary(), "-j", "list", *what],
        capture_output=True,
        text=True,
        timeout=NFT_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise NftError(f"nft list {' '.join(what)} failed: {result.stderr.strip()}")
    items: list[dict[str, Any]] = json.loads(result.stdout or '{"nftables": []}')["nftables"]
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

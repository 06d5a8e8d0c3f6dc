"""nftables through `nft -j -f -`: JSON in, never command text built from data."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
from typing import Any

from netwarden.jsontext import dumps
from netwarden.platform.base import PlatformError
from netwarden.platform.linux import netlink

NFT_TIMEOUT = 30.0
NETLINK_NETFILTER = 12
NFT_MSG_GETTABLE = 10 << 8 | 1  # subsystem nftables, get table
NFTA_TABLE_NAME = 1
FAMILY_NAMES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


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


def list_tables() -> list[tuple[str, str]]:
    """(family, name) of every table in this namespace, straight from netlink: `nft list
    tables` fetches every set element too (0.4 s with a 100k-network blocklist)."""
    request = netlink.pack_message(
        NFT_MSG_GETTABLE, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP,
        struct.pack("=BBH", socket.AF_UNSPEC, 0, 0),
    )  # fmt: skip
    tables = []
    try:
        with netlink.open_socket(NETLINK_NETFILTER, rcvbuf=1 << 20) as sock:
            for _type, _flags, payload in netlink.dump(sock, request):
                attrs = netlink.parse_attributes(payload, 4)
                name = bytes(attrs.get(NFTA_TABLE_NAME, b"")).rstrip(b"\0").decode()
                tables.append((FAMILY_NAMES.get(payload[0], str(payload[0])), name))
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise NftError("changing or reading nftables needs root (CAP_NET_ADMIN)") from exc
        raise NftError(f"cannot list nftables tables: {exc.strerror or exc}") from exc
    return tables


def table_exists(family: str, name: str) -> bool:
    return (family, name) in list_tables()


def delete_table(family: str, name: str) -> bool:
    """Remove one table if it exists; True when it did."""
    if not table_exists(family, name):
        return False
    run([{"delete": {"table": {"family": family, "name": name}}}])
    return True


def replace_table(family: str, name: str, body: list[dict[str, Any]]) -> None:
    """Create or atomically replace one table with the given chains, rules and sets."""
    table = {"table": {"family": family, "name": name}}
    # Adding first makes the delete valid whether or not the table existed.
    commands: list[dict[str, Any]] = [{"add": table}, {"delete": table}, {"add": table}]
    commands.extend(body)
    run(commands)

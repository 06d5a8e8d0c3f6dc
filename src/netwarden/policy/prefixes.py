"""Networks of one address family, kept as integers grouped by prefix length.

A blocklist of 100k networks loads, looks up and compiles much faster this way than as
ipaddress objects: membership is one hash lookup per prefix length present, which is
also how the kernel matches large sets (one hash set per length, see nft_policy).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BITS = {4: 32, 6: 128}


def mask(version: int, length: int) -> int:
    bits = BITS[version]
    return ((1 << length) - 1) << (bits - length)


def load_lines(text: str, v4: PrefixTable, v6: PrefixTable) -> list[tuple[int, str]]:
    """Add every network of a blocklist text (one per line, # comments) to the tables;
    return the (line number, entry) of those that are not networks. IPv4 lines take an
    inlined fast path: this loop is most of the time a 100k-line blocklist takes."""
    bad: list[tuple[int, str]] = []
    pton, inet, from_bytes = socket.inet_pton, socket.AF_INET, int.from_bytes
    by_length: dict[int, set[int]] = {}
    comments = "#" in text
    for number, line in enumerate(text.splitlines(), start=1):
        entry = (line.split("#", 1)[0] if comments else line).strip()
        if not entry:
            continue
        address, slash, length_text = entry.partition("/")
        try:
            value = from_bytes(pton(inet, address), "big")
            if not slash:
                length = 32
            elif length_text.isascii() and length_text.isdigit() and int(length_text) <= 32:
                length = int(length_text)
                value &= ~((1 << (32 - length)) - 1)
            else:
                raise ValueError(entry)
        except (OSError, ValueError):
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                bad.append((number, entry))
                continue
            (v4 if network.version == 4 else v6).add(int(network.network_address),
                                                     network.prefixlen)  # fmt: skip
            continue
        networks = by_length.get(length)
        if networks is None:
            networks = by_length[length] = v4.by_length.setdefault(length, set())
        networks.add(value)
    return bad


class PrefixTable:
    """A set of networks of one family: prefix length -> network addresses."""

    __slots__ = ("by_length", "version")

    def __init__(self, version: int) -> None:
        self.version = version
        self.by_length: dict[int, set[int]] = {}

    @classmethod
    def of(cls, version: int, networks: Iterable[Network]) -> PrefixTable:
        table = cls(version)
        for network in networks:
            if network.version == version:
                table.add(int(network.network_address), network.prefixlen)
        return table

    def add(self, network: int, length: int) -> None:
        self.by_length.setdefault(length, set()).add(network)

    def update(self, other: PrefixTable) -> None:
        for length, networks in other.by_length.items():
            self.by_length.setdefault(length, set()).update(networks)

    def __len__(self) -> int:
        return sum(len(networks) for networks in self.by_length.values())

    def __bool__(self) -> bool:
        return any(self.by_length.values())

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        if address.version != self.version:
            return False
        value = int(address)
        return any(
            value & mask(self.version, length) in networks
            for length, networks in self.by_length.items()
        )

    def without_covered(self) -> PrefixTable:
        """The same addresses with every network inside a shorter one dropped, so each
        address belongs to exactly one network (no overlaps for the kernel)."""
        result = PrefixTable(self.version)
        for length in sorted(self.by_length):
            shorter = [(mask(self.version, s), outer) for s, outer in result.by_length.items()]
            kept = {
                network
                for network in self.by_length[length]
                if not any(network & m in outer for m, outer in shorter)
            }
            if kept:
                result.by_length[length] = kept
        return result

    def intervals(self) -> list[tuple[int, int]]:
        """Sorted, disjoint (first, last) address ranges; adjacent ones merged."""
        bits = BITS[self.version]
        spans = sorted(
            (network, network | ((1 << (bits - length)) - 1))
            for length, networks in self.by_length.items()
            for network in networks
        )
        merged: list[tuple[int, int]] = []
        for first, last in spans:
            if merged and first <= merged[-1][1] + 1:
                if last > merged[-1][1]:
                    merged[-1] = (merged[-1][0], last)
            else:
                merged.append((first, last))
        return merged

    def networks(self) -> Iterator[Network]:
        network_type = ipaddress.IPv4Network if self.version == 4 else ipaddress.IPv6Network
        for length in sorted(self.by_length):
            for network in sorted(self.by_length[length]):
                yield network_type((network, length))


def address_text(version: int, value: int) -> str:
    if version == 4:
        return socket.inet_ntoa(value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))

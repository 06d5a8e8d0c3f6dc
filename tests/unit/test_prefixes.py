"""Networks by prefix length: membership as ipaddress has it, overlaps removed, and the
kernel form of large sets (a hash set per prefix length)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from netwarden.platform.linux.nft_policy import render
from netwarden.policy.compiler import HASHED_SET_MIN, compile_policy
from netwarden.policy.environment import fake_environment
from netwarden.policy.loader import load
from netwarden.policy.prefixes import PrefixTable

networks_v4 = st.builds(
    lambda value, length: ipaddress.IPv4Network((value, length), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)


@given(st.lists(networks_v4, max_size=20), st.integers(0, 2**32 - 1))
def test_membership_agrees_with_ipaddress(
    networks: list[ipaddress.IPv4Network], value: int
) -> None:
    table = PrefixTable.of(4, networks)
    for address in [ipaddress.IPv4Address(value), *(n.network_address for n in networks)]:
        expected = any(address in n for n in networks)
        assert (address in table) is expected
        assert (address in table.without_covered()) is expected


@given(st.lists(networks_v4, max_size=20))
def test_without_covered_leaves_disjoint_networks(networks: list[ipaddress.IPv4Network]) -> None:
    kept = [n for n in PrefixTable.of(4, networks).without_covered().networks()
            if isinstance(n, ipaddress.IPv4Network)]  # fmt: skip
    for index, first in enumerate(kept):
        assert not any(first.overlaps(other) for other in kept[index + 1 :])
    assert list(ipaddress.collapse_addresses(kept)) == list(ipaddress.collapse_addresses(networks))


def test_intervals_merge_adjacent_networks() -> None:
    table = PrefixTable.of(4, [ipaddress.IPv4Network(n) for n in
                               ("10.0.0.0/25", "10.0.0.128/25", "10.0.2.0/24")])  # fmt: skip
    assert table.intervals() == [(0x0A000000, 0x0A0000FF), (0x0A000200, 0x0A0002FF)]


def test_large_set_becomes_a_hash_set_per_prefix_length(tmp_path: Path) -> None:
    lines = [f"198.{i >> 8 & 255}.{i & 255}.0/24" for i in range(HASHED_SET_MIN + 256)]
    lines += ["192.0.2.7", "203.0.113.0/26", "198.0.0.0/16", "198.0.1.0/24"]  # last: covered
    (tmp_path / "big.txt").write_text("\n".join(lines))
    (tmp_path / "p.toml").write_text(
        '[sets.big]\nfile = "big.txt"\n\n[[rule]]\nname = "big"\naction = "log"\n'
        'direction = "out"\nto = ["@big"]\n'
    )
    commands = render(compile_policy(load(tmp_path / "p.toml", fake_environment())))
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in commands if "set" in c["add"]}
    assert sorted(sets) == ["big_v4_16", "big_v4_24", "big_v4_26", "big_v4_32"]
    assert all("flags" not in s for s in sets.values())
    elements = {c["add"]["element"]["name"]: c["add"]["element"]["elem"]
                for c in commands if "element" in c["add"]}  # fmt: skip
    assert elements["big_v4_16"] == ["198.0.0.0"]
    assert "198.0.1.0" not in elements["big_v4_24"]  # inside 198.0.0.0/16: one match only
    assert len(elements["big_v4_24"]) == HASHED_SET_MIN
    rules = [c["add"]["rule"] for c in commands
             if "rule" in c["add"] and c["add"]["rule"].get("comment") == "big"]  # fmt: skip
    lookups = [rule["expr"][0]["match"] for rule in rules]
    assert [m["right"] for m in lookups] == ["@big_v4_16", "@big_v4_24", "@big_v4_26",
                                             "@big_v4_32"]  # fmt: skip
    assert lookups[1]["left"] == {"&": [{"payload": {"protocol": "ip", "field": "daddr"}},
                                        "255.255.255.0"]}  # fmt: skip
    assert lookups[3]["left"] == {"payload": {"protocol": "ip", "field": "daddr"}}
    assert {rule["expr"][-2]["counter"] for rule in rules} == {"rule_0000"}

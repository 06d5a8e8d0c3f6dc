"""Golden files for the compiler: each policy_golden/NAME.toml compiles to NAME.json.

After an intended change to the output, rewrite the expectations with
NETWARDEN_UPDATE_GOLDEN=1 pytest tests/unit/test_policy_golden.py and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from netwarden.platform.linux.nft_policy import render
from netwarden.policy.compiler import compile_policy
from netwarden.policy.environment import fake_environment
from netwarden.policy.loader import load

CASES = Path(__file__).parent / "policy_golden"
ENVIRONMENT = fake_environment(
    users={"alice": 1001}, groups={"staff": 100},
    services={"nginx.service": "system.slice/nginx.service"},
)  # fmt: skip


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.toml")))
def test_compiles_to_golden_nft_json(case: str) -> None:
    policy = load(CASES / f"{case}.toml", ENVIRONMENT)
    produced = render(compile_policy(policy))
    expected_path = CASES / f"{case}.json"
    if os.environ.get("NETWARDEN_UPDATE_GOLDEN"):
        # Rewriting and then comparing would always pass: an update run fails on purpose.
        expected_path.write_text(json.dumps(produced, indent=1) + "\n")
        pytest.fail(
            f"rewrote {expected_path.name}: review the diff, then run the tests "
            "again without NETWARDEN_UPDATE_GOLDEN"
        )
    assert expected_path.exists(), f"no golden file {expected_path.name}; see this module's doc"
    assert produced == json.loads(expected_path.read_text())

"""pytest fixtures on top of netlab: `lab` gives a fresh Lab that is always closed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from netwarden.testing.netlab import Lab, cleanup_stale


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("integration tests must run as root in CI")
        pytest.skip("needs root for network namespaces")
    cleanup_stale()
    with Lab() as the_lab:
        yield the_lab

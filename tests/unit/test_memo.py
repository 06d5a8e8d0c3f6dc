from __future__ import annotations

from netwarden.memo import IdentityMemo
from netwarden.model import ProcessInfo


def test_a_value_is_made_once_per_object_and_never_for_a_lookalike() -> None:
    made: list[ProcessInfo] = []

    def make(process: ProcessInfo) -> str:
        made.append(process)
        return process.name

    memo = IdentityMemo(make, limit=2)
    first, twin = ProcessInfo(pid=1, name="a"), ProcessInfo(pid=1, name="a")
    assert memo(first) == memo(first) == "a"
    assert made == [first]
    memo(twin)  # equal, but another object: made anew
    assert made[-1] is twin
    memo(ProcessInfo(pid=2, name="b"))  # over the limit: the memo starts afresh
    memo(first)
    assert sum(1 for m in made if m is first) == 2

"""Values computed once per object, by identity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")


class IdentityMemo(Generic[T, V]):
    """make(obj), computed once per object and kept with the object (so that its id
    stays its own) for the last `limit` objects. For objects never changed once made,
    hashing whose fields would cost more than the value saves."""

    def __init__(self, make: Callable[[T], V], limit: int = 4096) -> None:
        self._make = make
        self._limit = limit
        self._values: dict[int, tuple[T, V]] = {}

    def __call__(self, obj: T) -> V:
        cached = self._values.get(id(obj))
        if cached is not None and cached[0] is obj:
            return cached[1]
        if len(self._values) >= self._limit:
            self._values.clear()
        value = self._make(obj)
        self._values[id(obj)] = (obj, value)
        return value

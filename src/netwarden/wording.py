"""Small helpers for what netwarden says to people."""

from __future__ import annotations


def count(number: int, noun: str) -> str:
    """'1 rule', '2 rules'."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"

"""Counts in words for the lines a command prints: ``count_of(1, "optimizer step")`` is
"1 optimizer step", ``count_of(2, "optimizer step")`` "2 optimizer steps"."""

from __future__ import annotations


def count_of(count: int, noun: str, plural: str | None = None) -> str:
    """``"<count> <noun>"``, the noun singular for a count of exactly 1 and otherwise
    ``plural`` (by default ``noun + "s"``; give it for irregular nouns, e.g. "batches")."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"

"""A test-only metric, added through the public `register` and removed after: one entry must be
scored, accepted as a sweep objective and shown by compare, with nothing else changed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from toolkit.evaluate.metrics import METRICS, Metric, register


def length_ratio(suite, candidates: list[str], references: list[str]) -> list[float]:
    """Shorter over longer word count of each pair: 1 for equal lengths, 0 for an empty side."""
    return [min(len(c.split()), len(r.split())) / max(len(c.split()), len(r.split()), 1) for c, r in zip(candidates, references)]


LENGTH_RATIO = Metric("length_ratio", "Length ratio", length_ratio)


@contextlib.contextmanager
def registered(*entries: Metric) -> Iterator[None]:
    """The table with `entries` added, restored afterwards (another test sees the shipped table)."""
    before = dict(METRICS)
    try:
        for entry in entries:
            register(entry)
        yield
    finally:
        METRICS.clear()
        METRICS.update(before)

"""The streaming core of `toolkit data build`: split assignment, filters, token limits and spooled rows.

Memory stays flat in the corpus size: records are read, judged and written to spool files in
chunks, in file order. What the build keeps for every record is small and fixed: a byte for its
split (`assign_splits`, an exact replay of `random.Random(seed).shuffle` on the record indices, 4
bytes a record while it runs) and, for deduplication, a 128-bit hash of each distinct text with
where it was first seen, never the text itself.

A `Judge` decides each record in order: categories, emptiness, `--max-chars`, duplicates (the
first copy in file order wins, wherever its split), sentence count, then per chunk the token
limits. Kept rows go to one spool per split and skipped ones (all but the category filter) to a
spool of skip records; the build copies the spools into its outputs once everything was read.
"""

from __future__ import annotations

import array
import hashlib
import marshal
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from toolkit.data.records import squash
from toolkit.data.textsplit import split_sentences
from toolkit.data.tokens import TokenCounter

__all__ = ["REASONS", "Item", "Judge", "Spool", "assign_splits", "largest_remainder"]

# skip reasons, in table order
REASONS = ("problem_too_long", "approach_too_short", "too_few_sentences", "duplicate", "category", "empty", "too_long")
CHUNK = 2048  # records judged (and token-counted) together


def largest_remainder(n: int, percents: list[int]) -> list[int]:
    """Split sizes for `n` records at these percentages, rounding by largest remainder."""
    counts = [n * p // 100 for p in percents]
    left = n - sum(counts)
    order = sorted(range(len(percents)), key=lambda i: (-(n * percents[i] % 100), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def assign_splits(n: int, percents: list[int], seed: int) -> bytearray:
    """The split index of each of `n` records: a seeded shuffle of the indices, cut by largest-remainder counts.

    `random.shuffle` works on any mutable sequence, so shuffling a compact array gives exactly the
    order a list would (same seed, same splits) at 4 bytes a record.
    """
    order = array.array("I" if n < 2**32 else "Q", range(n))
    random.Random(seed).shuffle(order)
    split_of = bytearray(n)
    start = 0
    for s, count in enumerate(largest_remainder(n, percents)):
        for idx in order[start : start + count]:
            split_of[idx] = s
        start += count
    return split_of


@dataclass(slots=True)
class Item:
    """One raw record on its way through the build."""

    kind: str  # "problem-approach" | "qa"
    id: str
    source: str  # file name:line
    split: int
    origin: int  # input index * 2**40 + line: where it came from, in a small int
    title: str = ""
    categories: list[str] = field(default_factory=list)
    text: str = ""  # the abstract, or the question
    answer: str = ""
    sentences: list[str] | None = None
    prompt: str = ""
    response: str = ""
    reason: str | None = None
    detail: str = ""


class Spool:
    """Rows written now and read back once, in order (marshal: much faster than JSON both ways)."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._file: BinaryIO | None = open(path, "wb")

    def write(self, row: dict) -> None:
        marshal.dump(row, self._file)
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def rows(self) -> Iterator[dict]:
        self.close()
        with open(self.path, "rb") as f:
            for _ in range(self.count):
                yield marshal.load(f)


@dataclass
class Limits:
    """Token limits per kind: (max prompt tokens, min response tokens); 0 = none."""

    per_kind: dict[str, tuple[int, int]]
    labels: dict[str, tuple[str, str]]  # option names, for skip details

    def any(self) -> bool:
        return any(v for pair in self.per_kind.values() for v in pair)


class Judge:
    """Decides every record in file order and sends it to its split's spool or the skip spool."""

    def __init__(self, match: Callable[[list[str]], bool] | None, min_sentences: int, max_chars: int,
                 limits: Limits, counter: Callable[[], TokenCounter], splits: list[Spool], skipped: Spool, names: list[str],
                 inputs: list[str]):
        self.match, self.min_sentences, self.max_chars, self.limits = match, min_sentences, max_chars, limits
        self._counter_factory, self._counter = counter, None
        self.splits, self.skipped, self.names, self.inputs = splits, skipped, names, inputs
        self.seen: dict[int, int] = {}  # hash of a normalised text -> the origin of its first copy
        self.category_counts: Counter = Counter()
        self.tally = {name: {"records": 0, "kept": 0, "skipped": dict.fromkeys(REASONS, 0)} for name in names}
        self._chunk: list[Item] = []

    def add(self, item: Item) -> None:
        self._filter(item)
        self._chunk.append(item)
        if len(self._chunk) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        chunk, self._chunk = self._chunk, []
        if self.limits.any():
            self._apply_token_limits(chunk)
        for it in chunk:
            self._emit(it)

    # --------------------------------------------------------------------------------- filters

    def _filter(self, it: Item) -> None:
        if self.match is not None and not self.match(it.categories):
            it.reason = "category"
            self.category_counts.update(it.categories)
            it.text = it.answer = ""
            it.sentences = None
            return
        normal = squash(it.text).lower()
        if not normal or (it.kind == "qa" and not it.answer):
            it.reason = "empty"
            return
        size = len(it.text) + len(it.answer)
        if self.max_chars and size > self.max_chars:
            it.reason, it.detail = "too_long", f"{size} characters > --max-chars {self.max_chars}"
            it.text = it.answer = ""
            return
        key = int.from_bytes(hashlib.blake2b(f"{it.kind}\0{normal}".encode(), digest_size=16).digest(), "big")
        first = self.seen.get(key)
        if first is not None:
            it.reason, it.detail = "duplicate", f"same text as {self.inputs[first >> 40]}:{first & (2**40 - 1)}"
            return
        self.seen[key] = it.origin
        if it.kind == "qa":
            it.prompt, it.response = it.text, it.answer
            return
        sentences = it.sentences if it.sentences is not None else split_sentences(it.text)
        if len(sentences) < max(2, self.min_sentences):
            it.reason, it.detail = "too_few_sentences", f"{len(sentences)} sentence{'s' * (len(sentences) != 1)}"
            return
        it.prompt, it.response = sentences[0], " ".join(sentences[1:])

    def _apply_token_limits(self, chunk: list[Item]) -> None:
        """Skip items over `(max prompt, min response)` tokens, counting only what a bound cannot decide."""
        for kind, (max_prompt, min_response) in self.limits.per_kind.items():
            todo = [it for it in chunk if it.reason is None and it.kind == kind]
            if not todo:
                continue
            counter = self._get_counter()
            prompt_opt, response_opt = self.limits.labels[kind]
            if max_prompt:
                for it, n in zip(todo, counter([it.prompt for it in todo])):
                    if n > max_prompt:
                        it.reason, it.detail = "problem_too_long", f"{n} tokens > {prompt_opt} {max_prompt}"
                todo = [it for it in todo if it.reason is None]
            if min_response:
                unsure = [it for it in todo if counter.lower_bound(it.response) < min_response]
                for it, n in zip(unsure, counter([it.response for it in unsure]) if unsure else []):
                    if n < min_response:
                        it.reason, it.detail = "approach_too_short", f"{n} tokens < {response_opt} {min_response}"

    def _get_counter(self) -> TokenCounter:
        if self._counter is None:
            self._counter = self._counter_factory()
        return self._counter

    # ---------------------------------------------------------------------------------- output

    def _emit(self, it: Item) -> None:
        name = self.names[it.split]
        entry = self.tally[name]
        entry["records"] += 1
        if it.reason is not None:
            entry["skipped"][it.reason] += 1
            if it.reason != "category":  # filtering by category is asked for, not a problem with the data
                row: dict[str, Any] = {"id": it.id, "source": it.source, "split": name, "reason": it.reason}
                if it.detail:
                    row["detail"] = it.detail
                self.skipped.write(row)
            return
        entry["kept"] += 1
        self.splits[it.split].write({"id": it.id, "prompt": it.prompt, "response": it.response, "kind": it.kind,
                                     "title": it.title, "categories": it.categories, "source": it.source})

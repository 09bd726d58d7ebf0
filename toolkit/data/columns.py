"""Which column (or JSON field) holds which field of a record, and telling a file's kind from its columns.

`Columns` carries the `--*-col` options. An option left at its default (the canonical name, e.g.
`abstract`) also recognises the names public datasets use for the same field (`summaries`,
`summary`; `terms`, `category`; `titles`; `date`, ...), first exactly, then ignoring case; an
option the user set names exactly one column. `kind_of` judges a file's kind (arxiv, papers, qa,
chat, preference, built) from its column names, `parse_categories` reads categories however
they are written: `cs.LG stat.ML`, `cs.LG, stat.ML`, a list, or a list's text `"['cs.LG', 'stat.ML']"`.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Columns", "ALIASES", "OPTION", "kind_of", "parse_categories", "CategoryError"]

# names recognised for a field whose option is left at its default, in order of preference
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "arxiv_id", "paper_id", "article_id", "ids"),
    "title": ("title", "titles"),
    "abstract": ("abstract", "summaries", "summary", "abstracts"),
    "categories": ("categories", "terms", "category"),
    "date": ("update_date", "date", "published", "updated", "update_dates"),
    "question": ("question",),
    "answer": ("answer",),
    "prompt": ("prompt", "conversations"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
}
# the option that names each field's column
OPTION = {name: f"--{name}-col" for name in ALIASES}
_PAPERS = {"article", "article_text", "abstract_text", "section_names"}


@dataclass(frozen=True)
class Columns:
    """The column options of `data build` / `data check`; each default is the field's canonical name."""

    id: str = "id"
    title: str = "title"
    abstract: str = "abstract"
    categories: str = "categories"
    date: str = "update_date"
    question: str = "question"
    answer: str = "answer"
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"

    def given(self, name: str) -> bool:
        """Whether the option for `name` was set to something other than its default."""
        return getattr(self, name) != _DEFAULTS[name]

    def candidates(self, name: str) -> tuple[str, ...]:
        """The column names that may hold `name`: the option's value, then (at the default) the aliases."""
        value = getattr(self, name)
        return (value,) if self.given(name) else tuple(dict.fromkeys((value, *ALIASES[name])))

    def find(self, name: str, keys: Iterable[str]) -> str | None:
        """The column among `keys` holding `name` (exact names first, then ignoring case), or None."""
        keys = list(keys)
        present = set(keys)
        wanted = self.candidates(name)
        for c in wanted:
            if c in present:
                return c
        folded = {k.lower().strip(): k for k in reversed(keys) if isinstance(k, str)}
        for c in wanted:
            if c.lower() in folded:
                return folded[c.lower()]
        return None

    def options(self) -> dict[str, str]:
        """`{field}_col: value` for stats.json."""
        return {f"{f.name}_col": getattr(self, f.name) for f in fields(self)}


_DEFAULTS = {f.name: f.default for f in fields(Columns)}


def kind_of(keys: Iterable[str], columns: Columns) -> str | None:
    """The kind of data whose records have these columns, or None when nothing fits."""
    keys = list(keys)
    present = set(keys)
    if "messages" in present:
        return "chat"
    if columns.find("chosen", keys) or columns.find("rejected", keys):
        return "preference"
    if "conversations" in present:
        return "chat"
    if columns.prompt in present:  # a built split's own field name, exactly
        return "built"
    if present & _PAPERS:
        return "papers"
    if columns.find("abstract", keys):
        return "arxiv"
    if columns.find("question", keys) or columns.find("answer", keys):
        return "qa"
    return None


class CategoryError(ValueError):
    """Categories written in a form that cannot be read (the reader names the file and line)."""


_SPLIT = re.compile(r"[,;\s]+")


def parse_categories(value: Any) -> list[str]:
    """Categories as a list of names from any of the forms files use; None/empty gives []."""
    if value is None:
        return []
    if isinstance(value, float) and value != value:  # NaN: an empty cell from pandas
        return []
    if isinstance(value, (list, tuple)):
        if all(isinstance(c, str) for c in value):
            return [c.strip() for c in value if c.strip()]
        raise CategoryError("array")
    if not isinstance(value, str):
        raise CategoryError(type(value).__name__ if not isinstance(value, (int, float)) or isinstance(value, bool) else "number")
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        return parse_categories(_list_of(text))
    return [c.strip("'\"") for c in _SPLIT.split(text) if c.strip("'\"")]


def _list_of(text: str) -> list:
    """`["a", "b"]` or `['a', 'b']` (a Python list written to CSV) as a list."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise CategoryError("unreadable list") from None
    if not isinstance(value, list):
        raise CategoryError("unreadable list")
    return value

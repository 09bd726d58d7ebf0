"""The papers `toolkit gaps` works on: abstracts from any abstract reader, with a year each.

A paper's year is the year of the date the readers give it (`toolkit.data.dates.dated`, the one
rule `data check` uses too): the first version's date (the submission), else the month its arXiv
id encodes (`0704.0001`, `hep-th/9901001`), else its date column (`update_date`: the last update,
not the submission). The corpus counts how many papers got a date from which source, for the
report. Duplicate texts are dropped (the first one kept).
Every way a corpus can be unusable is one `DataError` line raised before anything is written.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data.dates import date_of_arxiv_id, date_sources
from toolkit.data.readers import read_records
from toolkit.data.records import AbstractRecord
from toolkit.errors import DataError

_DATE = re.compile(r"^\s*(\d{4})(?:[-/.]\d{1,2})?")


@dataclass(frozen=True)
class Paper:
    """One abstract: `text` (title + abstract) is what gets embedded; `year` is None when unknown."""

    id: str
    title: str
    abstract: str
    year: int | None

    @property
    def text(self) -> str:
        return f"{self.title}. {self.abstract}" if self.title else self.abstract

    @property
    def key(self) -> str:
        """Content hash of the embedded text (the embedding cache key)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def year_of_arxiv_id(paper_id: str) -> int | None:
    """The submission year an arXiv id encodes (`0704.0001` -> 2007, `hep-th/9901001` -> 1999), else None."""
    date = date_of_arxiv_id(paper_id)
    return date.date.year if date is not None else None


def year_of_date(date: str) -> int | None:
    """The year of a date string such as `2019-05-14` (1900..2199), else None."""
    m = _DATE.match(date or "")
    if not m:
        return None
    year = int(m.group(1))
    return year if 1900 <= year <= 2199 else None


def paper_year(paper_id: str, date: str) -> int | None:
    """The arXiv id's year when it is one, else the date's year."""
    return year_of_arxiv_id(paper_id) or year_of_date(date)


@dataclass
class Corpus:
    """The usable papers plus what was dropped, for the report."""

    path: Path
    papers: list[Paper]
    read: int
    duplicates: int
    empty: int
    sources: Counter = field(default_factory=Counter)  # dated papers by where the date came from (dates.SOURCES)

    @property
    def years(self) -> list[int]:
        return sorted({p.year for p in self.papers if p.year is not None})

    @property
    def dated(self) -> int:
        return sum(p.year is not None for p in self.papers)

    @property
    def dates_from(self) -> str:
        """How many papers got their date from which source: "first version 1800, arXiv id 12"."""
        return date_sources(self.sources)


def load_corpus(path: Path, format: str = "auto", categories: str = "", abstract_col: str = "abstract") -> Corpus:
    """Read a corpus of abstracts through the toolkit's readers; drop empty and duplicate texts.

    Raises `DataError` when the file holds no abstracts (another format, or every abstract empty)
    or only duplicates of one text.
    """
    path = Path(path)
    papers: list[Paper] = []
    seen: set[str] = set()
    read = duplicates = empty = 0
    sources: Counter = Counter()
    for rec in read_records(path, format=format, categories=categories, abstract_col=abstract_col):
        if not isinstance(rec, AbstractRecord):
            kind = type(rec).__name__.removesuffix("Record").lower() or "other"
            raise DataError(f"this file holds {kind} records, not abstracts", path=path,
                            fix="pass arXiv metadata (id, title, abstract, update_date) or --format arxiv/papers with --abstract-col")
        read += 1
        abstract = " ".join(rec.abstract.split())
        if not abstract:
            empty += 1
            continue
        year = rec.date.date.year if rec.date is not None else None
        paper = Paper(rec.id, " ".join(rec.title.split()), abstract, year)
        if paper.key in seen:
            duplicates += 1
            continue
        seen.add(paper.key)
        papers.append(paper)
        if year is not None:
            sources[rec.date_source] += 1
    if not papers:
        raise DataError(f"no abstracts: all {read} records have an empty {abstract_col!r} field", path=path,
                        fix="pass --abstract-col if the abstracts are under another field name")
    if len(papers) == 1 and duplicates:
        raise DataError(f"all {read} records are duplicates of one abstract", path=path,
                        fix="pass a corpus of distinct abstracts")
    return Corpus(path, papers, read, duplicates, empty, sources)


def check_size(corpus: Corpus, clusters: int, min_per_cluster: int = 5, hdbscan: bool = False) -> None:
    """Enough distinct papers to form `clusters` clusters (or the smallest automatic choice); for
    HDBSCAN, 2 clusters of `min_per_cluster` (its smallest cluster size)."""
    need = max(clusters, 2) * min_per_cluster
    if len(corpus.papers) >= need:
        return
    if hdbscan:
        what, fix = f"2 HDBSCAN clusters of {min_per_cluster}", "pass a larger corpus, or a lower --min-cluster-size"
    else:
        what = f"{clusters} clusters" if clusters else "the smallest automatic choice of 2 clusters"
        what, fix = f"{what} ({min_per_cluster} a cluster)", "pass a larger corpus, or fewer --clusters"
    raise DataError(f"only {len(corpus.papers)} distinct abstracts, fewer than the {need} needed for {what}", path=corpus.path, fix=fix)

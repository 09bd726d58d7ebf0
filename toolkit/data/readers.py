"""Readers for abstracts, QA and built splits in any container, kind detection, and `load_examples`.

Each `read_*` turns one file's raw rows (`toolkit.data.sources`: JSON, CSV/TSV, Parquet, Arrow, a
saved dataset) into typed records (`toolkit.data.records`), checking every field as it goes, with
column names from `toolkit.data.columns.Columns`. A bad record does not stop the reading: the
file's bad records are collected and raised together at its end. Chat and preference records are
read in `toolkit.data.messages`. `read_records` picks the reader for a kind, and `load_examples`
turns prompt/response data (built, QA, chat, preference) into `Example`s for the later stages.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.data.columns import OPTION, CategoryError, Columns, kind_of, parse_categories
from toolkit.data.dates import dated, restore_arxiv_id, versions_date
from toolkit.data.messages import read_chat, read_preference, text_of
from toolkit.data.records import (
    FORMATS,
    AbstractRecord,
    Example,
    QARecord,
    clean_text,
    found_fields,
    json_type,
    one_line,
    record_id,
    squash,
    string_field,
)
from toolkit.data.sources import detect_container, first_keys, parse_format, parse_rows
from toolkit.data.textsplit import split_sentences
from toolkit.errors import ConfigError, DataError

__all__ = [
    "category_matcher", "detect_format", "resolve_format", "read_arxiv", "read_papers", "read_qa", "read_chat",
    "read_preference", "read_built", "read_records", "no_categories", "text_of", "load_examples",
]

_CATEGORY = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z0-9-]*)?$", re.I)


def category_matcher(categories: str) -> Callable[[list[str]], bool] | None:
    """A predicate for `--categories`, or None when it is empty.

    `categories` is a comma- (or space-) separated list. A pattern matches a record's category
    exactly (case-insensitive: `cs.LG`), or as a prefix when it ends with '.' (`cs.` matches every
    cs.* category, `math.` every math.*). A record is kept when ANY of its categories matches.
    """
    patterns = [p for p in re.split(r"[,\s]+", categories or "") if p]
    if not patterns:
        return None
    for p in patterns:
        if not _CATEGORY.match(p):
            raise ConfigError(f"--categories: {p!r} is not an arXiv category",
                              fix="use names like cs.LG,cs.CL, or a prefix ending in '.' like cs.")
    exact = {p.lower() for p in patterns if not p.endswith(".")}
    prefixes = tuple(p.lower() for p in patterns if p.endswith("."))

    def match(cats: list[str]) -> bool:
        for c in cats:
            c = c.lower()
            if c in exact or (prefixes and c.startswith(prefixes)):
                return True
        return False

    return match


def no_categories(path: Path, fmt: str) -> DataError:
    """The error for `--categories` given with a format that has no categories."""
    name = {"papers": "scientific_papers"}.get(fmt, fmt)
    return DataError(f"--categories was given but {name} data has no categories", path=path,
                     fix="drop --categories for this file (only arXiv metadata has categories), or build it separately")


# ------------------------------------------------------------------------------------ detection


def detect_format(path: Path, question_col: str = "question", answer_col: str = "answer", *,
                  columns: Columns | None = None, container: str = "auto", option: str = "--format") -> str:
    """The kind of a file (arxiv, papers, qa, chat, preference, built), judged from its columns
    (a table's header, or the fields of the first JSON record)."""
    columns = columns or Columns(question=question_col, answer=answer_col)
    container = detect_container(path) if container == "auto" else container
    line, keys, per_record = first_keys(path, container)
    kind = kind_of(keys, columns)
    if kind is None:
        what = "the first record" if per_record else "the columns"
        shown = found_fields(dict.fromkeys(keys))
        raise DataError(
            f"cannot tell the format from {what} ({shown})", path=path, line=line,
            fix=f"pass {option} ({', '.join(FORMATS)}) and name the fields: --abstract-col/--title-col for abstracts, "
                "--question-col/--answer-col for QA",
        )
    return kind


def resolve_format(path: Path, format: str, columns: Columns, option: str = "--format") -> tuple[str, str]:
    """`(kind, container)` of a file: what `format` names, the rest detected."""
    kind, container = parse_format(format, option=option)
    if container == "auto":
        container = detect_container(path)
    if kind == "auto":
        kind = detect_format(path, columns=columns, container=container, option=option)
    return kind, container


# ------------------------------------------------------------------------------------ abstracts


@dataclass(frozen=True)
class _ArxivNames:
    """The column of each arXiv field in one file."""

    id: str
    title: str
    abstract: str
    categories: str
    date: str


def _arxiv_names(path: Path, container: str, columns: Columns, need_categories: bool) -> _ArxivNames:
    line, keys, per_record = first_keys(path, container)
    found = {name: columns.find(name, keys) for name in ("id", "title", "abstract", "categories", "date")}
    if found["abstract"] is None and not per_record:
        raise DataError(f"missing column {columns.abstract!r} ({found_fields(dict.fromkeys(keys))})", path=path, line=line,
                        fix=f"if the abstract is under another column, pass it with {OPTION['abstract']}")
    if need_categories and found["categories"] is None:
        raise DataError(f"--categories was given but the records have no categories field ({found_fields(dict.fromkeys(keys))})",
                        path=path, line=line, fix=f"name the field holding the categories with {OPTION['categories']}")
    return _ArxivNames(**{name: value or getattr(columns, name) for name, value in found.items()})


def _categories_of(obj: dict, col: str, path: Path, line: int) -> list[str]:
    try:
        return parse_categories(obj.get(col))
    except CategoryError as exc:
        what = "holds an unreadable list" if str(exc) == "unreadable list" else f"must be a space-separated string, got {exc}"
        raise DataError(f"field {col!r} {what}", path=path, line=line, fix='write categories like "cs.LG cs.CL"') from None


def _date_text(obj: dict, col: str, path: Path, line: int, fix: str) -> str:
    value = obj.get(col)
    if isinstance(value, (dt.date, dt.datetime)):  # a date column of a Parquet/Arrow table
        return value.isoformat()[:10]
    return string_field(obj, col, path, line, fix, required=False)


_ARXIV_FIX = ("if the abstract is under another field name, pass it with --abstract-col "
              "(Kaggle arXiv fields: id, title, abstract, categories)")


def _arxiv_record(obj: dict, names: _ArxivNames, path: Path, line: int, need_categories: bool) -> AbstractRecord:
    abstract = string_field(obj, names.abstract, path, line, _ARXIV_FIX)
    if need_categories and names.categories not in obj:
        raise DataError(f"missing field {names.categories!r} ({found_fields(obj)})", path=path, line=line,
                        fix=f"--categories needs a categories field; name it with {OPTION['categories']}")
    update_date = _date_text(obj, names.date, path, line, _ARXIV_FIX)
    # a spreadsheet's 704.0001 is 0704.0001 when the first version's date says so
    ident = restore_arxiv_id(record_id(obj, path, line, names.id), versions_date(obj.get("versions")))
    date, source = dated(update_date, ident, obj.get("versions"), names.date)
    return AbstractRecord(
        id=ident,
        title=squash(string_field(obj, names.title, path, line, _ARXIV_FIX, required=False)),
        abstract=clean_text(abstract),
        categories=_categories_of(obj, names.categories, path, line),
        line=line,
        update_date=update_date,
        date=date,
        date_source=source,
    )


def read_arxiv(path: Path, categories: str = "", abstract_col: str = "abstract", *, columns: Columns | None = None,
               container: str = "auto", require_categories: bool = False) -> Iterator[AbstractRecord]:
    """Abstracts from arXiv metadata in any container (Kaggle JSON Lines, a JSON array, CSV, Parquet, ...).

    With `categories` (see `category_matcher`) only matching records are yielded, and a file where
    nothing matches is an error that shows the most common categories it does hold; a file with no
    categories field at all is an error naming `--categories-col` (also with `require_categories`,
    for a caller that filters by category itself).
    """
    path = Path(path)
    columns = columns or Columns(abstract=abstract_col)
    container = detect_container(path) if container == "auto" else container
    match = category_matcher(categories)
    need_categories = require_categories or match is not None
    names = _arxiv_names(path, container, columns, need_categories)
    seen = skipped = 0
    found: Counter = Counter()
    for record in parse_rows(path, container, lambda line, obj: _arxiv_record(obj, names, path, line, need_categories)):
        seen += 1
        if match is not None and not match(record.categories):
            skipped += 1
            found.update(record.categories)
            continue
        yield record
    if match is not None and skipped == seen:
        common = ", ".join(c for c, _ in found.most_common(8)) or "none"
        raise DataError(
            f"all {seen} records filtered away by --categories {categories} (skipped {skipped}; most common categories here: {common})",
            path=path, fix="match exact names like cs.LG, or a prefix ending in '.' like cs.",
        )


_TAGS = re.compile(r"</?S>")
_SENT_TAG = re.compile(r"<S>(.*?)</S>", re.S)
_SPACE_BEFORE = re.compile(r"\s+([.,;:!?%)\]}]|'s\b|n't\b)")
_SPACE_AFTER = re.compile(r"([(\[{])\s+")


def _detokenize(text: str) -> str:
    text = squash(_TAGS.sub(" ", text))
    return _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", text))


def _sentence_pieces(value: Any, col: str, path: Path, line: int, fix: str) -> list[str]:
    """A scientific_papers abstract as raw sentences: `<S>` tags, else lines, else the splitter."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, str):
        if "<S>" in value:
            return _SENT_TAG.findall(value) or [value]
        if "\n" in value.strip():
            return value.splitlines()
        return split_sentences(value)
    if value is None:
        return []
    raise DataError(f"field {col!r} must be a string or a list of strings, got {json_type(value)}",
                    path=path, line=line, fix=fix)


def _papers_record(obj: dict, abstract_col: str, path: Path, line: int, fix: str) -> AbstractRecord:
    col = abstract_col if abstract_col in obj or "abstract_text" not in obj else "abstract_text"
    if col not in obj:
        raise DataError(f"missing field {abstract_col!r} ({found_fields(obj)})", path=path, line=line, fix=fix)
    pieces = _sentence_pieces(obj[col], col, path, line, fix)
    sentences = [s for s in (_detokenize(p) for p in pieces) if s]
    ident = record_id(obj, path, line, "article_id") if "article_id" in obj else record_id(obj, path, line)
    date, source = dated(None, ident)  # this format has no date field: an arXiv id's month at most
    return AbstractRecord(id=ident, title="", abstract=" ".join(sentences), categories=[], line=line, sentences=sentences,
                          date=date, date_source=source)


def read_papers(path: Path, abstract_col: str = "abstract", *, container: str = "auto") -> Iterator[AbstractRecord]:
    """Abstracts from the `scientific_papers`/arxiv data (`article`, `abstract`, `section_names`),
    in any container (the Hugging Face dataset saved to disk included).

    Sentences come from the file: `<S>...</S>` tags, else one sentence per line of the abstract (a
    one-line abstract goes through the sentence splitter). Tags, newlines and tokenised spacing
    ("word ." -> "word.") are normalised. This format has no categories.
    """
    path = Path(path)
    container = detect_container(path) if container == "auto" else container
    fix = "if the abstract is under another field name, pass it with --abstract-col (scientific_papers fields: article, abstract, section_names)"
    yield from parse_rows(path, container, lambda line, obj: _papers_record(obj, abstract_col, path, line, fix))


# ------------------------------------------------------------------------------------------- QA


def read_qa(path: Path, question_col: str = "question", answer_col: str = "answer", *, columns: Columns | None = None,
            container: str = "auto") -> Iterator[QARecord]:
    """Question/answer pairs from CSV/TSV (header row), JSON Lines, Parquet, ...; empty cells give empty strings."""
    path = Path(path)
    columns = columns or Columns(question=question_col, answer=answer_col)
    container = detect_container(path) if container == "auto" else container
    fix = "name the columns with --question-col and --answer-col"
    line0, keys, per_record = first_keys(path, container)
    q_col, a_col, id_col = (columns.find(n, keys) for n in ("question", "answer", "id"))
    if not per_record:
        for found, wanted in ((q_col, columns.question), (a_col, columns.answer)):
            if found is None:
                shown = ", ".join(one_line(h) for h in keys if h) or "no column names"
                raise DataError(f"missing column {wanted!r} (found: {shown})", path=path, line=line0, fix=fix)
    q_col, a_col, id_col = q_col or columns.question, a_col or columns.answer, id_col or columns.id
    def qa(line: int, obj: dict) -> QARecord:
        q = clean_text(string_field(obj, q_col, path, line, fix)).strip()
        a = clean_text(string_field(obj, a_col, path, line, fix)).strip()
        return QARecord(record_id(obj, path, line, id_col), q, a, line)

    yield from parse_rows(path, container, qa)


# ---------------------------------------------------------------------------------------- built

_BUILT_KEYS = ("id", "prompt", "response", "kind")


def read_built(path: Path, require_response: bool = True, *, container: str = "auto", option: str = "--format") -> Iterator[Example]:
    """Examples from a built split (`{id, prompt, response, kind, ...}` a line); other keys go to meta."""
    path = Path(path)
    container = detect_container(path) if container == "auto" else container
    fix = f"built rows are {{id, prompt, response, kind, ...}}; rebuild with `toolkit data build` or pass {option}"
    def built(line: int, obj: dict) -> Example:
        prompt = string_field(obj, "prompt", path, line, fix)
        response = string_field(obj, "response", path, line, fix, required=require_response)
        kind = string_field(obj, "kind", path, line, fix, required=False, default="qa" if "response" in obj else "prompt")
        if not prompt.strip():
            raise DataError("field 'prompt' is empty", path=path, line=line, fix=fix)
        meta = {k: v for k, v in obj.items() if k not in _BUILT_KEYS}
        return Example(record_id(obj, path, line), prompt, response, kind, meta)

    yield from parse_rows(path, container, built)


# ------------------------------------------------------------------------------- any format


def read_records(path: Path, format: str = "auto", question_col: str = "question", answer_col: str = "answer",
                 categories: str = "", abstract_col: str = "abstract", *, columns: Columns | None = None,
                 option: str = "--format") -> Iterator[Any]:
    """Records of any kind and container (detected from the extension and columns unless `format` says)."""
    columns = columns or Columns(question=question_col, answer=answer_col, abstract=abstract_col)
    kind, container = resolve_format(path, format, columns, option)
    if categories and kind != "arxiv":
        raise no_categories(path, kind)
    if kind == "arxiv":
        return read_arxiv(path, categories, columns=columns, container=container)
    if kind == "papers":
        return read_papers(path, columns.abstract, container=container)
    if kind == "qa":
        return read_qa(path, columns=columns, container=container)
    if kind == "chat":
        return read_chat(path, container=container, option=option)
    if kind == "preference":
        return read_preference(path, columns=columns, container=container)
    return read_built(path, container=container, option=option)


def _qa_examples(path: Path, columns: Columns, container: str) -> Iterator[Example]:
    for r in read_qa(path, columns=columns, container=container):
        for name, value in (("question", r.question), ("answer", r.answer)):
            if not value:
                raise DataError(f"empty {name}", path=path, line=r.line, fix="fill it in or drop the row")
        yield Example(r.id, r.question, r.answer, "qa", {"source": f"{path.name}:{r.line}"})


def _chat_examples(path: Path, container: str) -> Iterator[Example]:
    for r in read_chat(path, container=container):
        users = [m for m in r.messages if m["role"] == "user"]
        system = next((m.get("content") or "" for m in r.messages if m["role"] == "system"), "")
        meta: dict = {"messages": r.messages, "source": f"{path.name}:{r.line}"}
        if system:
            meta["system"] = system
        yield Example(r.id, users[-1].get("content") or "", r.messages[-1]["content"], "chat", meta)


def _preference_examples(path: Path, columns: Columns, container: str) -> Iterator[Example]:
    for r in read_preference(path, columns=columns, container=container):
        meta = {"rejected": text_of(r.rejected, "assistant"), "source": f"{path.name}:{r.line}"}
        if not isinstance(r.prompt, str):
            meta["messages"] = r.prompt
        yield Example(r.id, text_of(r.prompt, "user"), text_of(r.chosen, "assistant"), "preference", meta)


def load_examples(path: Path, format: str = "auto", question_col: str = "question", answer_col: str = "answer", *,
                  columns: Columns | None = None) -> list[Example]:
    """Examples from a built split, a QA file (CSV/JSONL/Parquet), chat or preference data.

    Chat: prompt = last user turn, response = final assistant turn; the system prompt and the full
    conversation are kept in `meta["system"]` / `meta["messages"]`. Preference: response = chosen,
    `meta["rejected"]`. A JSONL of `{"prompt": ...}` rows alone gives examples with empty responses.
    Raw arXiv/scientific_papers metadata must be built first.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path, fix="check the path")
    columns = columns or Columns(question=question_col, answer=answer_col)
    fmt, container = resolve_format(path, format, columns)
    if fmt in ("arxiv", "papers"):
        raise DataError(f"this is raw {fmt} metadata, not prompt/response examples", path=path,
                        fix=f"build it first: toolkit data build {path}")
    if fmt == "built":
        return list(read_built(path, require_response=False, container=container))
    if fmt == "qa":
        return list(_qa_examples(path, columns, container))
    if fmt == "chat":
        return list(_chat_examples(path, container))
    return list(_preference_examples(path, columns, container))

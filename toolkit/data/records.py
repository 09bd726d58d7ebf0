"""Reading, checking and building datasets.

Inputs the toolkit reads (format names as used by `--format` / `--kind`):

* `arxiv`: arXiv metadata as in the Kaggle snapshot, JSON Lines or one JSON array, with fields
  `id`, `title`, `abstract`, `categories` (space-separated) and `update_date`.
* `papers`: the `scientific_papers`/arxiv JSONL (`article`, `abstract`, `section_names`); the
  abstract's `<S>`/`</S>` tags, newlines and tokenised spacing (`word .`) are normalised.
* `qa`: question/answer pairs in CSV (or TSV) or JSON Lines; column names are configurable.
* `chat`: JSON Lines with `messages`: a list of `{role, content}` (system/user/assistant/tool).
* `preference`: JSON Lines with `prompt`, `chosen`, `rejected`, each a string or a message list.
* `built`: the splits `toolkit data build` writes: one `{id, prompt, response, kind, ...}` a line.

Every reader reports malformed input as one-line `DataError`s naming the file and line. Every later
stage (training, sweeps, comparisons) works on `Example`s from `load_examples`.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, DataError, ModelError

__all__ = [
    "Example", "AbstractRecord", "QARecord", "ChatRecord", "PreferenceRecord",
    "FORMATS", "ROLES", "REASONS", "SPLIT_NAMES",
    "iter_json_records", "detect_format", "category_matcher", "parse_split",
    "read_arxiv", "read_papers", "read_qa", "read_chat", "read_preference", "read_built",
    "read_records", "load_examples", "token_counter", "build", "check",
]

FORMATS = ("arxiv", "papers", "qa", "chat", "preference", "built")
_ALIASES = {
    "kaggle": "arxiv", "arxiv-metadata": "arxiv", "scientific_papers": "papers", "scientific-papers": "papers",
    "csv": "qa", "messages": "chat", "dpo": "preference", "split": "built", "examples": "built",
}
ROLES = ("system", "user", "assistant", "tool")
SPLIT_NAMES = ("train", "validation", "test")
# skip reasons, in table order
REASONS = ("problem_too_long", "approach_too_short", "too_few_sentences", "duplicate", "category", "empty")
_REASON_LABELS = {
    "problem_too_long": "problem too long", "approach_too_short": "approach too short",
    "too_few_sentences": "too few sentences", "duplicate": "duplicate", "category": "filtered by category",
    "empty": "empty",
}
_OWNED_FILES = {f"{n}.jsonl" for n in SPLIT_NAMES} | {"stats.json"}
_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------------------- types


@dataclass
class Example:
    """One prompt/response pair: what training, generation, sweeps and comparisons consume.

    `kind` is `problem-approach` (from abstracts), `qa`, `chat`, `preference` or `prompt`; `meta`
    holds the rest (title, categories, source, a chat's system prompt and full messages, ...).
    """

    id: str
    prompt: str
    response: str
    kind: str
    meta: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        """The JSON object written to a built split."""
        return {"id": self.id, "prompt": self.prompt, "response": self.response, "kind": self.kind, **self.meta}


@dataclass
class AbstractRecord:
    """An abstract from arXiv metadata or scientific_papers (`sentences` set when the file has them)."""

    id: str
    title: str
    abstract: str
    categories: list[str]
    line: int
    update_date: str = ""
    sentences: list[str] | None = None


@dataclass
class QARecord:
    id: str
    question: str
    answer: str
    line: int


@dataclass
class ChatRecord:
    id: str
    messages: list[dict]
    line: int


@dataclass
class PreferenceRecord:
    id: str
    prompt: str | list[dict]
    chosen: str | list[dict]
    rejected: str | list[dict]
    line: int


# ------------------------------------------------------------------------------ low-level reading


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _one_line(text: Any) -> str:
    """User-supplied text (field names, values) made safe for a one-line message."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def _found(obj: dict) -> str:
    names = [_one_line(k) for k in obj]
    shown = ", ".join(names[:15]) + (f", ... ({len(names)} in all)" if len(names) > 15 else "")
    return f"found: {shown}" if names else "the record is empty"


def _check_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path, fix="check the path")
    if path.is_dir():
        raise DataError("is a directory, not a data file", path=path, fix="pass the file itself")
    return path


def _not_utf8(path: Path, line: int, raw: bytes, exc: UnicodeDecodeError) -> DataError:
    return DataError(
        f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
        path=path, line=line, fix="re-save the file as UTF-8",
    )


def _decode_all(path: Path, raw: bytes) -> str:
    if raw.startswith(_BOM):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = UnicodeDecodeError(exc.encoding, exc.object, exc.start - line_start, exc.end - line_start, exc.reason)
        raise _not_utf8(path, line, raw[line_start:], bad) from None


def _empty(path: Path) -> DataError:
    return DataError("file is empty (no records)", path=path, fix="expected one JSON object per line, or a JSON array of objects")


def iter_json_records(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield `(line, object)` from a JSON Lines file or a file holding one JSON array of objects.

    A file is read as an array when it starts with '[' and is not named .jsonl/.ndjson.

    JSON Lines are streamed (the 4 GB Kaggle snapshot is fine); an array is read whole. Blank lines
    are skipped. Bad JSON, non-UTF-8 bytes, non-object records and empty files raise `DataError`.
    """
    path = _check_file(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        first = head[3:] if head.startswith(_BOM) else head
        stripped = first.lstrip()
        if not stripped and not head:
            raise _empty(path)
        if stripped.startswith(b"[") and path.suffix.lower() not in {".jsonl", ".ndjson"}:
            yield from _iter_array(path, head + f.read())
            return
        f.seek(0)
        count = 0
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, lineno, raw, exc) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                fix = "each line must be one complete JSON object (JSON Lines); a pretty-printed file must be one JSON array"
                raise DataError(f"bad JSON: {exc.msg} (column {exc.colno})", path=path, line=lineno, fix=fix) from None
            if not isinstance(obj, dict):
                raise DataError(f"expected a JSON object, got {_json_type(obj)}", path=path, line=lineno,
                                fix="write one {...} object per line")
            count += 1
            yield lineno, obj
        if count == 0:
            raise _empty(path)


_WS = re.compile(r"\s*")


def _iter_array(path: Path, raw: bytes) -> Iterator[tuple[int, dict]]:
    text = _decode_all(path, raw)
    decoder = json.JSONDecoder()
    i = _WS.match(text, text.index("[") + 1).end()
    line, counted_to = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        return line

    def bad(msg: str, pos: int) -> DataError:
        col = pos - text.rfind("\n", 0, pos)
        return DataError(f"bad JSON: {msg} (column {col})", path=path, line=line_at(pos),
                         fix="the file must be one JSON array of objects, or one JSON object per line")

    count = 0
    if i < len(text) and text[i] == "]":
        raise DataError("file holds an empty JSON array (no records)", path=path, line=line_at(i))
    while True:
        if i >= len(text):
            raise bad("the array is not closed with ']'", i)
        try:
            obj, j = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise bad(exc.msg, exc.pos) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object in the array, got {_json_type(obj)}", path=path, line=line_at(i))
        count += 1
        yield line_at(i), obj
        i = _WS.match(text, j).end()
        if i < len(text) and text[i] == ",":
            i = _WS.match(text, i + 1).end()
            continue
        if i < len(text) and text[i] == "]":
            rest = _WS.match(text, i + 1).end()
            if rest != len(text):
                raise bad("extra data after the closing ']'", rest)
            return
        raise bad("expected ',' or ']' after a record", i)


def _string(obj: dict, name: str, path: Path, line: int, fix: str, *, required: bool = True, default: str = "") -> str:
    """A string field; numbers are accepted as text, null as empty; anything else is an error."""
    if name not in obj:
        if required:
            raise DataError(f"missing field {name!r} ({_found(obj)})", path=path, line=line, fix=fix)
        return default
    value = obj[name]
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"field {name!r} must be a string, got {_json_type(value)}", path=path, line=line, fix=fix)


def _record_id(obj: dict, path: Path, line: int, key: str = "id") -> str:
    value = obj.get(key)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    return f"{path.stem}-{line}"


def _normalize_format(fmt: str, *, option: str = "--format") -> str:
    key = str(fmt).strip().lower()
    key = _ALIASES.get(key, key)
    if key != "auto" and key not in FORMATS:
        raise ConfigError(f"unknown {option} {fmt!r}", fix=f"use auto or one of {', '.join(FORMATS)}")
    return key


def _format_of(obj: dict, question_col: str, answer_col: str) -> str | None:
    keys = set(obj)
    if "messages" in keys:
        return "chat"
    if keys & {"chosen", "rejected"}:
        return "preference"
    if "prompt" in keys:
        return "built"
    if keys & {"article", "article_text", "abstract_text", "section_names"}:
        return "papers"
    if "abstract" in keys:
        return "arxiv"
    if keys & {question_col, answer_col}:
        return "qa"
    return None


def detect_format(path: Path, question_col: str = "question", answer_col: str = "answer") -> str:
    """The format of a file: `.csv`/`.tsv` is QA; JSON is judged by the fields of its first record."""
    path = _check_file(path)
    if path.suffix.lower() in {".csv", ".tsv"}:
        return "qa"
    line, first = next(iter_json_records(path))
    fmt = _format_of(first, question_col, answer_col)
    if fmt is None:
        raise DataError(
            f"cannot tell the format from the first record ({_found(first)})", path=path, line=line,
            fix=f"pass --format ({', '.join(FORMATS)}); for QA name the columns with --question-col/--answer-col",
        )
    return fmt


# ------------------------------------------------------------------------------------ filtering

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


def parse_split(split: str) -> list[tuple[str, int]]:
    """`"90,5,5"` -> [(train, 90), (validation, 5), (test, 5)]; `"80,20"` -> train/validation; `"100"` -> train."""
    fix = "give 2 or 3 whole percentages that sum to 100: --split 90,5,5 (train,validation,test) or 80,20"
    parts = [p for p in re.split(r"[,/\s]+", str(split).strip()) if p]
    if not 1 <= len(parts) <= 3:
        raise ConfigError(f"--split {split!r} has {len(parts)} parts", fix=fix)
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--split {split!r} is not a list of whole numbers", fix=fix) from None
    if any(n < 0 for n in numbers) or sum(numbers) != 100:
        raise ConfigError(f"--split {split!r} sums to {sum(numbers)}, not 100", fix=fix)
    if numbers[0] == 0:
        raise ConfigError(f"--split {split!r} leaves nothing for training", fix=fix)
    return list(zip(SPLIT_NAMES, numbers))


def _largest_remainder(n: int, percents: list[int]) -> list[int]:
    counts = [n * p // 100 for p in percents]
    left = n - sum(counts)
    order = sorted(range(len(percents)), key=lambda i: (-(n * percents[i] % 100), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


# -------------------------------------------------------------------------------------- readers



def _squash(text: str) -> str:
    return " ".join(text.split())


def read_arxiv(path: Path, categories: str = "", abstract_col: str = "abstract") -> Iterator[AbstractRecord]:
    """Abstracts from arXiv metadata (Kaggle snapshot: JSON Lines or one JSON array).

    With `categories` (see `category_matcher`) only matching records are yielded, and a file where
    nothing matches is an error that shows the most common categories it does hold.
    """
    path = Path(path)
    match = category_matcher(categories)
    fix = "if the abstract is under another field name, pass it with --abstract-col (Kaggle arXiv fields: id, title, abstract, categories)"
    seen = skipped = 0
    found: Counter = Counter()
    for line, obj in iter_json_records(path):
        abstract = _string(obj, abstract_col, path, line, fix)
        raw_cats = obj.get("categories")
        if match is not None and "categories" not in obj:
            raise DataError(f"missing field 'categories' ({_found(obj)})", path=path, line=line,
                            fix="--categories needs arXiv metadata with a space-separated 'categories' field")
        if raw_cats is None:
            cats: list[str] = []
        elif isinstance(raw_cats, str):
            cats = raw_cats.split()
        elif isinstance(raw_cats, list) and all(isinstance(c, str) for c in raw_cats):
            cats = list(raw_cats)
        else:
            raise DataError(f"field 'categories' must be a space-separated string, got {_json_type(raw_cats)}",
                            path=path, line=line, fix='write categories like "cs.LG cs.CL"')
        record = AbstractRecord(
            id=_record_id(obj, path, line),
            title=_squash(_string(obj, "title", path, line, fix, required=False)),
            abstract=abstract,
            categories=cats,
            line=line,
            update_date=_string(obj, "update_date", path, line, fix, required=False),
        )
        seen += 1
        if match is not None and not match(cats):
            skipped += 1
            found.update(cats)
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
    text = _squash(_TAGS.sub(" ", text))
    return _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", text))


def read_papers(path: Path, abstract_col: str = "abstract") -> Iterator[AbstractRecord]:
    """Abstracts from the `scientific_papers`/arxiv JSONL (`article`, `abstract`, `section_names`).

    Sentences come from the file: `<S>...</S>` tags, else one sentence per line of the abstract (a
    one-line abstract goes through the sentence splitter). Tags, newlines and tokenised spacing
    ("word ." -> "word.") are normalised. This format has no categories.
    """
    from toolkit.data.records.textsplit import split_sentences

    path = Path(path)
    fix = "if the abstract is under another field name, pass it with --abstract-col (scientific_papers fields: article, abstract, section_names)"
    for line, obj in iter_json_records(path):
        col = abstract_col if abstract_col in obj or "abstract_text" not in obj else "abstract_text"
        if col not in obj:
            raise DataError(f"missing field {abstract_col!r} ({_found(obj)})", path=path, line=line, fix=fix)
        value = obj[col]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            pieces = value
        elif isinstance(value, str):
            if "<S>" in value:
                pieces = _SENT_TAG.findall(value) or [value]
            elif "\n" in value.strip():
                pieces = value.splitlines()
            else:
                pieces = split_sentences(value)
        elif value is None:
            pieces = []
        else:
            raise DataError(f"field {col!r} must be a string or a list of strings, got {_json_type(value)}",
                            path=path, line=line, fix=fix)
        sentences = [s for s in (_detokenize(p) for p in pieces) if s]
        yield AbstractRecord(
            id=_record_id(obj, path, line, "article_id") if "article_id" in obj else _record_id(obj, path, line),
            title="", abstract=" ".join(sentences), categories=[], line=line, sentences=sentences,
        )


def read_qa(path: Path, question_col: str = "question", answer_col: str = "answer") -> Iterator[QARecord]:
    """Question/answer pairs from CSV/TSV (header row) or JSON Lines; empty cells give empty strings."""
    path = _check_file(path)
    if path.suffix.lower() in {".csv", ".tsv"}:
        yield from _read_qa_csv(path, question_col, answer_col)
        return
    fix = "name the columns with --question-col and --answer-col"
    for line, obj in iter_json_records(path):
        q = _string(obj, question_col, path, line, fix).strip()
        a = _string(obj, answer_col, path, line, fix).strip()
        yield QARecord(_record_id(obj, path, line), q, a, line)


def _read_qa_csv(path: Path, question_col: str, answer_col: str) -> Iterator[QARecord]:
    raw = path.read_bytes()
    if not raw.strip() or raw.strip() == _BOM:
        raise DataError("file is empty (no header, no rows)", path=path, fix=f"expected a header row with {question_col},{answer_col}")
    text = _decode_all(path, raw)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    fix = "name the columns with --question-col and --answer-col"
    try:
        header = [h.strip() for h in next(reader)]
        for col in (question_col, answer_col):
            if col not in header:
                found = ", ".join(_one_line(h) for h in header if h) or "no column names"
                raise DataError(f"missing column {col!r} (found: {found})", path=path, line=1, fix=fix)
        qi, ai = header.index(question_col), header.index(answer_col)
        ii = header.index("id") if "id" in header else None
        count = 0
        while True:
            line = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                break
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header) or (len(row) > len(header) and any(c.strip() for c in row[len(header):])):
                raise DataError(f"row has {len(row)} fields but the header has {len(header)}", path=path, line=line,
                                fix="quote fields that contain commas, quotes or newlines")
            rid = row[ii].strip() if ii is not None and row[ii].strip() else f"{path.stem}-{line}"
            count += 1
            yield QARecord(rid, row[qi].strip(), row[ai].strip(), line)
    except csv.Error as exc:
        raise DataError(f"bad CSV: {exc}", path=path, line=reader.line_num, fix="check the quoting on that line") from None
    if count == 0:
        raise DataError("file has a header but no rows", path=path, fix="add question/answer rows")


def _check_messages(messages: Any, path: Path, line: int, where: str, *, final_assistant: bool, need_user: bool = True) -> list[dict]:
    fix = 'messages are [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'
    if not isinstance(messages, list):
        raise DataError(f"{where} must be a list of messages, got {_json_type(messages)}", path=path, line=line, fix=fix)
    if not messages:
        raise DataError(f"{where} is an empty list", path=path, line=line, fix=fix)
    n = len(messages)
    for i, m in enumerate(messages, 1):
        at = f"{where} message {i} of {n}"
        if not isinstance(m, dict):
            raise DataError(f"{at} must be an object with role and content, got {_json_type(m)}", path=path, line=line, fix=fix)
        if "role" not in m:
            raise DataError(f"{at} has no 'role' ({_found(m)})", path=path, line=line, fix=fix)
        role = m["role"]
        if role not in ROLES:
            raise DataError(f"{at} has role {role!r}; expected one of {', '.join(ROLES)}", path=path, line=line, fix=fix)
        content = m.get("content")
        if content is None and not (role in ("assistant", "tool") and ("tool_calls" in m or role == "tool")):
            raise DataError(f"{at} ({role}) has no 'content' ({_found(m)})", path=path, line=line, fix=fix)
        if content is not None and not isinstance(content, str):
            raise DataError(f"{at} ({role}) content must be a string, got {_json_type(content)}", path=path, line=line, fix=fix)
    roles = [m["role"] for m in messages]
    if need_user and "user" not in roles:
        raise DataError(f"{where} has no user message (roles: {', '.join(roles)})", path=path, line=line, fix=fix)
    if final_assistant:
        if roles[-1] != "assistant":
            raise DataError(f"{where} ends with a {roles[-1]} message; training data must end with the assistant's reply",
                            path=path, line=line, fix="drop trailing turns or add the assistant's answer")
        if not (messages[-1].get("content") or "").strip():
            raise DataError(f"{where} ends with an empty assistant message", path=path, line=line, fix="give the final reply text")
    return messages


def read_chat(path: Path, training: bool = True) -> Iterator[ChatRecord]:
    """Conversations from chat JSON Lines (`messages`); with `training`, each must end with the assistant."""
    path = Path(path)
    for line, obj in iter_json_records(path):
        if "messages" not in obj:
            raise DataError(f"missing field 'messages' ({_found(obj)})", path=path, line=line,
                            fix='chat records are {"messages": [{"role": ..., "content": ...}, ...]}; pass --format for other data')
        messages = _check_messages(obj["messages"], path, line, "messages", final_assistant=training)
        yield ChatRecord(_record_id(obj, path, line), messages, line)


def read_preference(path: Path) -> Iterator[PreferenceRecord]:
    """Preference pairs (`prompt`, `chosen`, `rejected`), each a plain string or a list of messages."""
    path = Path(path)
    fix = "preference records need prompt, chosen and rejected: strings, or lists of {role, content} messages"
    for line, obj in iter_json_records(path):
        values = {}
        for name in ("prompt", "chosen", "rejected"):
            if name not in obj:
                raise DataError(f"missing field {name!r} ({_found(obj)})", path=path, line=line, fix=fix)
            value = obj[name]
            if isinstance(value, str):
                if not value.strip():
                    raise DataError(f"field {name!r} is empty", path=path, line=line, fix=fix)
            elif isinstance(value, list):
                if name == "prompt":
                    _check_messages(value, path, line, "prompt", final_assistant=False)
                    if value[-1]["role"] == "assistant":
                        raise DataError("prompt ends with an assistant message; the reply belongs in chosen/rejected",
                                        path=path, line=line, fix=fix)
                else:
                    _check_messages(value, path, line, name, final_assistant=True, need_user=False)
            else:
                raise DataError(f"field {name!r} must be a string or a list of messages, got {_json_type(value)}",
                                path=path, line=line, fix=fix)
            values[name] = value
        if isinstance(values["chosen"], str) != isinstance(values["rejected"], str):
            shapes = {k: "a string" if isinstance(v, str) else "a message list" for k, v in values.items()}
            raise DataError(f"chosen is {shapes['chosen']} but rejected is {shapes['rejected']}", path=path, line=line,
                            fix="give chosen and rejected the same shape")
        yield PreferenceRecord(_record_id(obj, path, line), values["prompt"], values["chosen"], values["rejected"], line)


_BUILT_KEYS = ("id", "prompt", "response", "kind")


def read_built(path: Path, require_response: bool = True) -> Iterator[Example]:
    """Examples from a built split (`{id, prompt, response, kind, ...}` a line); other keys go to meta."""
    path = Path(path)
    fix = "built rows are {id, prompt, response, kind, ...}; rebuild with `toolkit data build` or pass --format"
    for line, obj in iter_json_records(path):
        prompt = _string(obj, "prompt", path, line, fix)
        response = _string(obj, "response", path, line, fix, required=require_response)
        kind = _string(obj, "kind", path, line, fix, required=False, default="qa" if "response" in obj else "prompt")
        if not prompt.strip():
            raise DataError("field 'prompt' is empty", path=path, line=line, fix=fix)
        meta = {k: v for k, v in obj.items() if k not in _BUILT_KEYS}
        yield Example(_record_id(obj, path, line), prompt, response, kind, meta)


def read_records(path: Path, format: str = "auto", question_col: str = "question", answer_col: str = "answer",
                 categories: str = "", abstract_col: str = "abstract") -> Iterator[Any]:
    """Records of any format (auto-detected from the first record unless `format` says otherwise)."""
    fmt = _normalize_format(format)
    if fmt == "auto":
        fmt = detect_format(path, question_col, answer_col)
    if categories and fmt != "arxiv":
        raise _no_categories(path, fmt)
    if fmt == "arxiv":
        return read_arxiv(path, categories, abstract_col)
    if fmt == "papers":
        return read_papers(path, abstract_col)
    if fmt == "qa":
        return read_qa(path, question_col, answer_col)
    if fmt == "chat":
        return read_chat(path)
    if fmt == "preference":
        return read_preference(path)
    return read_built(path)


def _no_categories(path: Path, fmt: str) -> DataError:
    name = {"papers": "scientific_papers"}.get(fmt, fmt)
    return DataError(f"--categories was given but {name} data has no categories", path=path,
                     fix="drop --categories for this file (only arXiv metadata has categories), or build it separately")


def _text_of(value: str | list[dict], role: str) -> str:
    """A preference field's text: the string itself, or the last `role` message of a list."""
    if isinstance(value, str):
        return value
    for m in reversed(value):
        if m["role"] == role:
            return m.get("content") or ""
    return value[-1].get("content") or ""


def load_examples(path: Path, format: str = "auto", question_col: str = "question", answer_col: str = "answer") -> list[Example]:
    """Examples from a built split, a QA file (CSV/JSONL), chat JSONL or preference JSONL.

    Chat: prompt = last user turn, response = final assistant turn; the system prompt and the full
    conversation are kept in `meta["system"]` / `meta["messages"]`. Preference: response = chosen,
    `meta["rejected"]`. A JSONL of `{"prompt": ...}` rows alone gives examples with empty responses.
    Raw arXiv/scientific_papers metadata must be built first.
    """
    path = _check_file(path)
    fmt = _normalize_format(format)
    if fmt == "auto":
        fmt = detect_format(path, question_col, answer_col)
    if fmt in ("arxiv", "papers"):
        raise DataError(f"this is raw {fmt} metadata, not prompt/response examples", path=path,
                        fix=f"build it first: toolkit data build {path}")
    examples: list[Example] = []
    if fmt == "built":
        examples = list(read_built(path, require_response=False))
    elif fmt == "qa":
        for r in read_qa(path, question_col, answer_col):
            for name, value in (("question", r.question), ("answer", r.answer)):
                if not value:
                    raise DataError(f"empty {name}", path=path, line=r.line, fix="fill it in or drop the row")
            examples.append(Example(r.id, r.question, r.answer, "qa", {"source": f"{path.name}:{r.line}"}))
    elif fmt == "chat":
        for r in read_chat(path):
            users = [m for m in r.messages if m["role"] == "user"]
            system = next((m.get("content") or "" for m in r.messages if m["role"] == "system"), "")
            meta: dict = {"messages": r.messages, "source": f"{path.name}:{r.line}"}
            if system:
                meta["system"] = system
            examples.append(Example(r.id, users[-1].get("content") or "", r.messages[-1]["content"], "chat", meta))
    else:  # preference
        for r in read_preference(path):
            meta = {"rejected": _text_of(r.rejected, "assistant"), "source": f"{path.name}:{r.line}"}
            if not isinstance(r.prompt, str):
                meta["messages"] = r.prompt
            examples.append(Example(r.id, _text_of(r.prompt, "user"), _text_of(r.chosen, "assistant"), "preference", meta))
    return examples


# --------------------------------------------------------------------------------------- tokens

_TOKENIZERS: dict[str, Any] = {}


def token_counter(tokenizer: str = "smollm2") -> Callable[[list[str]], list[int]]:
    """A function counting tokens of many texts at once (no special tokens added).

    `tokenizer` is a model spec for `toolkit.models.resolve` (its `tokenizer.json` is used), a path
    to a `tokenizer.json`, or `words` for whitespace-separated words. Loaded tokenizers are cached
    per process.
    """
    if tokenizer == "words":
        return lambda texts: [len(t.split()) for t in texts]
    tok = _TOKENIZERS.get(tokenizer)
    if tok is None:
        from tokenizers import Tokenizer

        given = Path(tokenizer).expanduser()
        if given.is_file() and given.suffix == ".json":
            file = given
        else:
            from toolkit.models import resolve

            file = resolve(tokenizer).require_hf() / "tokenizer.json"
        if not file.is_file():
            raise ModelError(f"{file} not found: cannot count tokens for {tokenizer!r}",
                             fix="pass a model that has tokenizer.json, or --tokenizer words")
        tok = Tokenizer.from_file(str(file))
        tok.no_truncation()
        tok.no_padding()
        _TOKENIZERS[tokenizer] = tok

    def count(texts: list[str], batch: int = 4096) -> list[int]:
        counts: list[int] = []
        for i in range(0, len(texts), batch):
            counts.extend(len(e.ids) for e in tok.encode_batch(texts[i : i + batch], add_special_tokens=False))
        return counts

    return count


# ---------------------------------------------------------------------------------------- build


@dataclass(slots=True)
class _Item:
    kind: str  # "problem-approach" | "qa"
    id: str
    source: str
    title: str = ""
    categories: list[str] = field(default_factory=list)
    text: str = ""  # the abstract, or the question
    answer: str = ""
    sentences: list[str] | None = None
    prompt: str = ""
    response: str = ""
    reason: str | None = None


def build(
    inputs: list[Path],
    out: Path = Path("data/built"),
    format: str = "auto",
    categories: str = "",
    max_problem_tokens: int = 50,
    min_approach_tokens: int = 90,
    min_sentences: int = 2,
    split: str = "90,5,5",
    seed: int = 0,
    tokenizer: str = "smollm2",
    question_col: str = "question",
    answer_col: str = "answer",
    max_question_tokens: int = 0,
    min_answer_tokens: int = 0,
    abstract_col: str = "abstract",
) -> dict:
    """Build train/validation/test prompt->response splits from abstracts and QA files.

    An abstract's first sentence is the problem (prompt) and the rest the approach (response); a QA
    row gives prompt=question, response=answer. Every raw record is first assigned to a split by a
    seeded shuffle, then filtered within its split; duplicates (same abstract, or same question,
    ignoring case and whitespace) are detected across all inputs, the first in file order is kept,
    so no duplicate crosses splits. Writes OUT/train.jsonl, validation.jsonl, test.jsonl (those
    asked for) and stats.json atomically, and prints kept/skipped counts per split.

    Args:
        inputs: arXiv metadata (JSONL or JSON array), scientific_papers JSONL, or QA CSV/JSONL files.
        out: output directory.
        format: input format: auto (judged per file from its first record), arxiv, papers or qa.
        categories: keep arXiv records with any of these categories, comma-separated (cs.LG,cs.CL); a pattern ending in '.' is a prefix (cs. = all of cs).
        max_problem_tokens: drop abstracts whose first sentence is longer than this many tokens (0 = no limit).
        min_approach_tokens: drop abstracts whose remaining sentences are shorter than this many tokens (0 = no minimum).
        min_sentences: drop abstracts with fewer sentences than this (at least 2 are always needed).
        split: train,validation[,test] percentages summing to 100, e.g. 90,5,5 or 80,20.
        seed: seed of the split assignment; same inputs and seed give byte-identical outputs.
        tokenizer: model whose tokenizer counts tokens (embedded name, HF dir or tokenizer.json), or 'words'.
        question_col: QA column holding the question.
        answer_col: QA column holding the answer.
        max_question_tokens: drop QA rows whose question is longer than this many tokens (0 = no limit).
        min_answer_tokens: drop QA rows whose answer is shorter than this many tokens (0 = no minimum).
        abstract_col: field holding the abstract in arXiv/scientific_papers files.
    """
    from toolkit.data.records.textsplit import split_sentences
    from toolkit.models import file_digest

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    inputs = [Path(p) for p in inputs]
    out = Path(out)
    if not inputs:
        raise ConfigError("no input files given", fix="pass one or more arXiv, scientific_papers or QA files")
    splits = parse_split(split)
    fmt_requested = _normalize_format(format)
    match = category_matcher(categories)
    for name, value in (("max-problem-tokens", max_problem_tokens), ("min-approach-tokens", min_approach_tokens),
                        ("min-sentences", min_sentences), ("max-question-tokens", max_question_tokens),
                        ("min-answer-tokens", min_answer_tokens)):
        if value < 0:
            raise ConfigError(f"--{name} must be 0 or more, got {value}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory", fix="pass a directory for --out")

    # 1. read every raw record, in input order then file order
    items: list[_Item] = []
    input_info: list[dict] = []
    for path in inputs:
        fmt = detect_format(path, question_col, answer_col) if fmt_requested == "auto" else fmt_requested
        if fmt in ("chat", "preference", "built"):
            raise DataError(f"{fmt} data is not a build input", path=path,
                            fix="build takes arXiv metadata, scientific_papers JSONL or QA CSV/JSONL; "
                                "chat/preference/built files are used as they are (check them with `toolkit data check`)")
        if match is not None and fmt != "arxiv":
            raise _no_categories(path, fmt)
        before = len(items)
        if fmt == "qa":
            for r in read_qa(path, question_col, answer_col):
                items.append(_Item("qa", r.id, f"{path.name}:{r.line}", text=r.question, answer=r.answer))
        else:
            reader = read_arxiv(path, "", abstract_col) if fmt == "arxiv" else read_papers(path, abstract_col)
            for r in reader:
                items.append(_Item("problem-approach", r.id, f"{path.name}:{r.line}", title=r.title,
                                   categories=r.categories, text=r.abstract, sentences=r.sentences))
        input_info.append({"path": str(path), "format": fmt, "records": len(items) - before, "sha256": file_digest(path)})

    # 2. assign raw records to splits: seeded shuffle, cut by largest-remainder counts
    n = len(items)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    split_of = [0] * n
    start = 0
    for s, count in enumerate(_largest_remainder(n, [p for _, p in splits])):
        for idx in order[start : start + count]:
            split_of[idx] = s
        start += count

    # 3. filter in file order; duplicates are global, so the first copy wins wherever it landed
    seen: set[tuple[str, str]] = set()
    category_counts: Counter = Counter()
    for it in items:
        if match is not None and not match(it.categories):
            it.reason = "category"
            category_counts.update(it.categories)
            it.text = it.answer = ""
            it.sentences = None
            continue
        key = (it.kind, _squash(it.text).lower())
        if not key[1] or (it.kind == "qa" and not it.answer):
            it.reason = "empty"
            continue
        if key in seen:
            it.reason = "duplicate"
            continue
        seen.add(key)
        if it.kind == "qa":
            it.prompt, it.response = it.text, it.answer
            continue
        sentences = it.sentences if it.sentences is not None else split_sentences(it.text)
        if len(sentences) < max(2, min_sentences):
            it.reason = "too_few_sentences"
            continue
        it.prompt, it.response = sentences[0], " ".join(sentences[1:])

    # 4. token thresholds, counted in batches
    limits = {
        "problem-approach": (max_problem_tokens, min_approach_tokens),
        "qa": (max_question_tokens, min_answer_tokens),
    }
    if any(v for pair in limits.values() for v in pair) and any(it.reason is None for it in items):
        from toolkit.console import err

        label = "words" if tokenizer == "words" else f"the {tokenizer} tokenizer"
        with err.status(f"Counting tokens with {label}"):  # transient: leaves no line behind
            count = token_counter(tokenizer)
            for kind, (max_prompt, min_response) in limits.items():
                todo = [it for it in items if it.reason is None and it.kind == kind]
                if not todo:
                    continue
                if max_prompt:
                    for it, c in zip(todo, count([it.prompt for it in todo])):
                        if c > max_prompt:
                            it.reason = "problem_too_long"
                    todo = [it for it in todo if it.reason is None]
                if min_response and todo:
                    for it, c in zip(todo, count([it.response for it in todo])):
                        if c < min_response:
                            it.reason = "approach_too_short"

    # 5. stats and rows per split
    names = [name for name, _ in splits]
    per_split = {name: {"records": 0, "kept": 0, "skipped": dict.fromkeys(REASONS, 0)} for name in names}
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for idx, it in enumerate(items):
        name = names[split_of[idx]]
        entry = per_split[name]
        entry["records"] += 1
        if it.reason is not None:
            entry["skipped"][it.reason] += 1
            continue
        entry["kept"] += 1
        rows[name].append({"id": it.id, "prompt": it.prompt, "response": it.response, "kind": it.kind,
                           "title": it.title, "categories": it.categories, "source": it.source})
    total = {"records": n, "kept": sum(e["kept"] for e in per_split.values()),
             "skipped": {r: sum(e["skipped"][r] for e in per_split.values()) for r in REASONS}}
    stats = {
        "splits": per_split,
        "total": total,
        "options": {
            "format": fmt_requested, "categories": categories, "max_problem_tokens": max_problem_tokens,
            "min_approach_tokens": min_approach_tokens, "min_sentences": min_sentences,
            "split": ",".join(str(p) for _, p in splits), "seed": seed, "tokenizer": tokenizer,
            "question_col": question_col, "answer_col": answer_col, "max_question_tokens": max_question_tokens,
            "min_answer_tokens": min_answer_tokens, "abstract_col": abstract_col,
        },
        "inputs": input_info,
        "outputs": {name: f"{name}.jsonl" for name in names},
    }
    if total["kept"] == 0:
        raise DataError(_nothing_kept(stats, category_counts), fix=_relax_hint(stats, category_counts))

    # 6. write everything, or nothing
    _write_outputs(out, rows, stats)
    _print_build_table(stats, out)
    for name in names:
        if not rows[name]:
            from toolkit.console import err

            err.print(f"[yellow]warning:[/] the {name} split is empty; use more data or a larger share for it")
    return stats


def _nothing_kept(stats: dict, category_counts: Counter) -> str:
    total = stats["total"]
    counts = ", ".join(f"{_REASON_LABELS[r]} {n}" for r, n in total["skipped"].items() if n)
    return f"nothing kept from {total['records']} records ({counts})"


def _relax_hint(stats: dict, category_counts: Counter) -> str:
    skipped, opts = stats["total"]["skipped"], stats["options"]
    worst = max(REASONS, key=lambda r: skipped[r])
    if worst == "category":
        common = ", ".join(c for c, _ in category_counts.most_common(6)) or "none"
        return f"no record matches --categories {opts['categories']} (common here: {common}); a prefix needs a final '.' (cs.)"
    hints = {
        "problem_too_long": f"raise --max-problem-tokens (now {opts['max_problem_tokens']}) or set it to 0",
        "approach_too_short": f"lower --min-approach-tokens (now {opts['min_approach_tokens']}) or set it to 0",
        "too_few_sentences": f"lower --min-sentences (now {opts['min_sentences']}); abstracts need at least 2 sentences",
        "duplicate": "the inputs repeat the same records; add different data",
        "empty": "the records have empty abstracts/questions/answers; check the column options",
    }
    if worst in ("problem_too_long", "approach_too_short") and (opts["max_question_tokens"] or opts["min_answer_tokens"]):
        hints[worst] += " (for QA: --max-question-tokens / --min-answer-tokens)"
    return hints[worst]


def _write_outputs(out: Path, rows: dict[str, list[dict]], stats: dict) -> None:
    """All files land together: a fresh or build-only directory is replaced in one rename; a
    directory holding other files gets each file atomically, stale split files removed, stats last."""
    from toolkit.io import atomic_dir, write_json, write_jsonl

    existing = {p.name for p in out.iterdir()} if out.is_dir() else set()
    foreign = {n for n in existing if n not in _OWNED_FILES and not (n.startswith(".") and n.endswith(".tmp"))}
    if not foreign:
        with atomic_dir(out) as tmp:
            for name, split_rows in rows.items():
                write_jsonl(tmp / f"{name}.jsonl", split_rows)
            write_json(tmp / "stats.json", stats)
        return
    for name, split_rows in rows.items():
        write_jsonl(out / f"{name}.jsonl", split_rows)
    for name in SPLIT_NAMES:
        if name not in rows:
            (out / f"{name}.jsonl").unlink(missing_ok=True)
    write_json(out / "stats.json", stats)


def _print_build_table(stats: dict, out: Path) -> None:
    from rich.table import Table

    from toolkit.console import out as stdout

    reasons = ["problem_too_long", "approach_too_short", "too_few_sentences", "duplicate"]
    if stats["options"]["categories"]:
        reasons.append("category")
    if stats["total"]["skipped"]["empty"]:
        reasons.append("empty")
    table = Table(title=f"toolkit data build -> {out}", title_justify="left")
    table.add_column("split")
    table.add_column("kept", justify="right", style="bold green")
    for r in reasons:
        table.add_column(_REASON_LABELS[r], justify="right")
    names = list(stats["splits"])
    for name, entry in [*stats["splits"].items(), ("total", stats["total"])]:
        cells = [str(entry["kept"])] + [str(entry["skipped"][r]) for r in reasons]
        table.add_row(name, *cells, end_section=name == names[-1])
    stdout.print(table)


# ---------------------------------------------------------------------------------------- check


def _mean(values: list[int | float]) -> float:
    return round(sum(values) / len(values), 1) if values else 0.0


def check(path: Path, kind: str = "auto", question_col: str = "question", answer_col: str = "answer") -> dict:
    """Validate a chat, preference, QA, arXiv, scientific_papers or built file and print its counts.

    Every record is checked; the first problem stops with one line naming the file and line. The
    counts need no tokenizer: records, messages per role, characters per field, duplicates.

    Args:
        path: the file to check.
        kind: auto (judged from the first record), arxiv, papers, qa, chat, preference or built.
        question_col: QA column holding the question.
        answer_col: QA column holding the answer.
    """
    path = _check_file(Path(path))
    fmt = _normalize_format(kind, option="--kind")
    if fmt == "auto":
        fmt = detect_format(path, question_col, answer_col)
    result: dict[str, Any] = {"path": str(path), "format": fmt}
    if fmt == "chat":
        roles: Counter = Counter()
        turns, reply_chars, system, multi = [], [], 0, 0
        for r in read_chat(path):
            rs = [m["role"] for m in r.messages]
            roles.update(rs)
            turns.append(len(rs))
            reply_chars.append(len(r.messages[-1].get("content") or ""))
            system += "system" in rs
            multi += rs.count("user") > 1
        result.update(records=len(turns), messages=sum(turns), **{f"{role}_messages": roles[role] for role in ROLES},
                      with_system=system, multi_turn=multi, messages_min=min(turns), messages_mean=_mean(turns),
                      messages_max=max(turns), final_reply_chars_mean=_mean(reply_chars))
    elif fmt == "preference":
        shapes: Counter = Counter()
        chosen, rejected, same = [], [], 0
        for r in read_preference(path):
            shapes["string" if isinstance(r.chosen, str) else "messages"] += 1
            c, j = _text_of(r.chosen, "assistant"), _text_of(r.rejected, "assistant")
            chosen.append(len(c))
            rejected.append(len(j))
            same += c.strip() == j.strip()
        result.update(records=len(chosen), string_pairs=shapes["string"], message_pairs=shapes["messages"],
                      chosen_equals_rejected=same, chosen_chars_mean=_mean(chosen), rejected_chars_mean=_mean(rejected))
    elif fmt == "qa":
        qs, ans, keys = [], [], Counter()
        empty_q = empty_a = 0
        for r in read_qa(path, question_col, answer_col):
            empty_q += not r.question
            empty_a += not r.answer
            qs.append(len(r.question))
            ans.append(len(r.answer))
            if r.question:
                keys[_squash(r.question).lower()] += 1
        result.update(records=len(qs), empty_questions=empty_q, empty_answers=empty_a,
                      duplicate_questions=sum(v - 1 for v in keys.values()), question_chars_mean=_mean(qs),
                      answer_chars_mean=_mean(ans))
    elif fmt in ("arxiv", "papers"):
        from toolkit.data.records.textsplit import split_sentences

        cats: Counter = Counter()
        keys = Counter()
        sentences, dates, empty = [], [], 0
        for r in read_arxiv(path) if fmt == "arxiv" else read_papers(path):
            cats.update(r.categories)
            text = _squash(r.abstract).lower()
            empty += not text
            if text:
                keys[text] += 1
            sentences.append(len(r.sentences) if r.sentences is not None else len(split_sentences(r.abstract)))
            if r.update_date:
                dates.append(r.update_date)
        result.update(records=len(sentences), empty_abstracts=empty, duplicate_abstracts=sum(v - 1 for v in keys.values()),
                      sentences_mean=_mean(sentences), one_sentence_abstracts=sum(1 for s in sentences if s < 2))
        if fmt == "arxiv":
            result.update(categories=len(cats), top_categories=", ".join(f"{c} {n}" for c, n in cats.most_common(8)),
                          update_date_range=f"{min(dates)} .. {max(dates)}" if dates else "")
    else:  # built
        kinds: Counter = Counter()
        prompts, responses, keys = [], [], Counter()
        empty = 0
        for ex in read_built(path, require_response=False):
            kinds[ex.kind] += 1
            prompts.append(len(ex.prompt))
            responses.append(len(ex.response))
            empty += not ex.response.strip()
            keys[_squash(ex.prompt).lower()] += 1
        result.update(records=len(prompts), **{f"kind {k}": v for k, v in sorted(kinds.items())},
                      empty_responses=empty, duplicate_prompts=sum(v - 1 for v in keys.values()),
                      prompt_chars_mean=_mean(prompts), response_chars_mean=_mean(responses))
    _print_check_table(result)
    return result


def _print_check_table(result: dict) -> None:
    from rich.table import Table

    from toolkit.console import out as stdout

    table = Table(title=f"{result['path']} ({result['format']}): OK", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in result.items():
        if key not in ("path", "format"):
            table.add_row(key.replace("_", " "), str(value))
    stdout.print(table)

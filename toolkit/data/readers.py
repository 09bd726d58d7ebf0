"""Readers for every input format, format detection, and `load_examples` for the later stages.

Each `read_*` turns one file's raw records (from `toolkit.data.files`) into typed records
(`toolkit.data.records`), checking every field as it goes; `read_records` picks the reader for a
format and `load_examples` turns prompt/response data (built, QA, chat, preference) into `Example`s.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from toolkit.data.files import BOM, check_file, decode_all, iter_json_records
from toolkit.data.records import (
    FORMATS,
    ROLES,
    AbstractRecord,
    ChatRecord,
    Example,
    PreferenceRecord,
    QARecord,
    found_fields,
    json_type,
    normalize_format,
    one_line,
    record_id,
    squash,
    string_field,
)
from toolkit.data.textsplit import split_sentences
from toolkit.errors import ConfigError, DataError

__all__ = [
    "category_matcher", "detect_format", "read_arxiv", "read_papers", "read_qa", "read_chat", "read_preference",
    "read_built", "read_records", "no_categories", "text_of", "load_examples",
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
    path = check_file(path)
    if path.suffix.lower() in {".csv", ".tsv"}:
        return "qa"
    line, first = next(iter_json_records(path))
    fmt = _format_of(first, question_col, answer_col)
    if fmt is None:
        raise DataError(
            f"cannot tell the format from the first record ({found_fields(first)})", path=path, line=line,
            fix=f"pass --format ({', '.join(FORMATS)}); for QA name the columns with --question-col/--answer-col",
        )
    return fmt


# ------------------------------------------------------------------------------------ abstracts


def _categories_of(obj: dict, path: Path, line: int) -> list[str]:
    raw = obj.get("categories")
    if raw is None:
        return []
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list) and all(isinstance(c, str) for c in raw):
        return list(raw)
    raise DataError(f"field 'categories' must be a space-separated string, got {json_type(raw)}",
                    path=path, line=line, fix='write categories like "cs.LG cs.CL"')


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
        abstract = string_field(obj, abstract_col, path, line, fix)
        if match is not None and "categories" not in obj:
            raise DataError(f"missing field 'categories' ({found_fields(obj)})", path=path, line=line,
                            fix="--categories needs arXiv metadata with a space-separated 'categories' field")
        cats = _categories_of(obj, path, line)
        record = AbstractRecord(
            id=record_id(obj, path, line),
            title=squash(string_field(obj, "title", path, line, fix, required=False)),
            abstract=abstract,
            categories=cats,
            line=line,
            update_date=string_field(obj, "update_date", path, line, fix, required=False),
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


def read_papers(path: Path, abstract_col: str = "abstract") -> Iterator[AbstractRecord]:
    """Abstracts from the `scientific_papers`/arxiv JSONL (`article`, `abstract`, `section_names`).

    Sentences come from the file: `<S>...</S>` tags, else one sentence per line of the abstract (a
    one-line abstract goes through the sentence splitter). Tags, newlines and tokenised spacing
    ("word ." -> "word.") are normalised. This format has no categories.
    """
    path = Path(path)
    fix = "if the abstract is under another field name, pass it with --abstract-col (scientific_papers fields: article, abstract, section_names)"
    for line, obj in iter_json_records(path):
        col = abstract_col if abstract_col in obj or "abstract_text" not in obj else "abstract_text"
        if col not in obj:
            raise DataError(f"missing field {abstract_col!r} ({found_fields(obj)})", path=path, line=line, fix=fix)
        pieces = _sentence_pieces(obj[col], col, path, line, fix)
        sentences = [s for s in (_detokenize(p) for p in pieces) if s]
        yield AbstractRecord(
            id=record_id(obj, path, line, "article_id") if "article_id" in obj else record_id(obj, path, line),
            title="", abstract=" ".join(sentences), categories=[], line=line, sentences=sentences,
        )


# ------------------------------------------------------------------------------------------- QA


def read_qa(path: Path, question_col: str = "question", answer_col: str = "answer") -> Iterator[QARecord]:
    """Question/answer pairs from CSV/TSV (header row) or JSON Lines; empty cells give empty strings."""
    path = check_file(path)
    if path.suffix.lower() in {".csv", ".tsv"}:
        yield from _read_qa_csv(path, question_col, answer_col)
        return
    fix = "name the columns with --question-col and --answer-col"
    for line, obj in iter_json_records(path):
        q = string_field(obj, question_col, path, line, fix).strip()
        a = string_field(obj, answer_col, path, line, fix).strip()
        yield QARecord(record_id(obj, path, line), q, a, line)


def _read_qa_csv(path: Path, question_col: str, answer_col: str) -> Iterator[QARecord]:
    raw = path.read_bytes()
    if not raw.strip() or raw.strip() == BOM:
        raise DataError("file is empty (no header, no rows)", path=path, fix=f"expected a header row with {question_col},{answer_col}")
    text = decode_all(path, raw)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    fix = "name the columns with --question-col and --answer-col"
    try:
        header = [h.strip() for h in next(reader)]
        for col in (question_col, answer_col):
            if col not in header:
                found = ", ".join(one_line(h) for h in header if h) or "no column names"
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


# ------------------------------------------------------------------------------ chat, preference


def _check_message(m: Any, at: str, path: Path, line: int, fix: str) -> None:
    if not isinstance(m, dict):
        raise DataError(f"{at} must be an object with role and content, got {json_type(m)}", path=path, line=line, fix=fix)
    if "role" not in m:
        raise DataError(f"{at} has no 'role' ({found_fields(m)})", path=path, line=line, fix=fix)
    role = m["role"]
    if role not in ROLES:
        raise DataError(f"{at} has role {role!r}; expected one of {', '.join(ROLES)}", path=path, line=line, fix=fix)
    content = m.get("content")
    if content is None and not (role in ("assistant", "tool") and ("tool_calls" in m or role == "tool")):
        raise DataError(f"{at} ({role}) has no 'content' ({found_fields(m)})", path=path, line=line, fix=fix)
    if content is not None and not isinstance(content, str):
        raise DataError(f"{at} ({role}) content must be a string, got {json_type(content)}", path=path, line=line, fix=fix)


def _check_messages(messages: Any, path: Path, line: int, where: str, *, final_assistant: bool, need_user: bool = True) -> list[dict]:
    fix = 'messages are [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'
    if not isinstance(messages, list):
        raise DataError(f"{where} must be a list of messages, got {json_type(messages)}", path=path, line=line, fix=fix)
    if not messages:
        raise DataError(f"{where} is an empty list", path=path, line=line, fix=fix)
    for i, m in enumerate(messages, 1):
        _check_message(m, f"{where} message {i} of {len(messages)}", path, line, fix)
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
            raise DataError(f"missing field 'messages' ({found_fields(obj)})", path=path, line=line,
                            fix='chat records are {"messages": [{"role": ..., "content": ...}, ...]}; pass --format for other data')
        messages = _check_messages(obj["messages"], path, line, "messages", final_assistant=training)
        yield ChatRecord(record_id(obj, path, line), messages, line)


_PREFERENCE_FIX = "preference records need prompt, chosen and rejected: strings, or lists of {role, content} messages"


def _preference_value(obj: dict, name: str, path: Path, line: int) -> str | list[dict]:
    """One of prompt/chosen/rejected: a non-empty string, or a valid message list."""
    fix = _PREFERENCE_FIX
    if name not in obj:
        raise DataError(f"missing field {name!r} ({found_fields(obj)})", path=path, line=line, fix=fix)
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
        raise DataError(f"field {name!r} must be a string or a list of messages, got {json_type(value)}",
                        path=path, line=line, fix=fix)
    return value


def read_preference(path: Path) -> Iterator[PreferenceRecord]:
    """Preference pairs (`prompt`, `chosen`, `rejected`), each a plain string or a list of messages."""
    path = Path(path)
    for line, obj in iter_json_records(path):
        values = {name: _preference_value(obj, name, path, line) for name in ("prompt", "chosen", "rejected")}
        if isinstance(values["chosen"], str) != isinstance(values["rejected"], str):
            shapes = {k: "a string" if isinstance(v, str) else "a message list" for k, v in values.items()}
            raise DataError(f"chosen is {shapes['chosen']} but rejected is {shapes['rejected']}", path=path, line=line,
                            fix="give chosen and rejected the same shape")
        yield PreferenceRecord(record_id(obj, path, line), values["prompt"], values["chosen"], values["rejected"], line)


def text_of(value: str | list[dict], role: str) -> str:
    """A preference field's text: the string itself, or the last `role` message of a list."""
    if isinstance(value, str):
        return value
    for m in reversed(value):
        if m["role"] == role:
            return m.get("content") or ""
    return value[-1].get("content") or ""


# ---------------------------------------------------------------------------------------- built

_BUILT_KEYS = ("id", "prompt", "response", "kind")


def read_built(path: Path, require_response: bool = True) -> Iterator[Example]:
    """Examples from a built split (`{id, prompt, response, kind, ...}` a line); other keys go to meta."""
    path = Path(path)
    fix = "built rows are {id, prompt, response, kind, ...}; rebuild with `toolkit data build` or pass --format"
    for line, obj in iter_json_records(path):
        prompt = string_field(obj, "prompt", path, line, fix)
        response = string_field(obj, "response", path, line, fix, required=require_response)
        kind = string_field(obj, "kind", path, line, fix, required=False, default="qa" if "response" in obj else "prompt")
        if not prompt.strip():
            raise DataError("field 'prompt' is empty", path=path, line=line, fix=fix)
        meta = {k: v for k, v in obj.items() if k not in _BUILT_KEYS}
        yield Example(record_id(obj, path, line), prompt, response, kind, meta)


# ------------------------------------------------------------------------------- any format


def read_records(path: Path, format: str = "auto", question_col: str = "question", answer_col: str = "answer",
                 categories: str = "", abstract_col: str = "abstract") -> Iterator[Any]:
    """Records of any format (auto-detected from the first record unless `format` says otherwise)."""
    fmt = normalize_format(format)
    if fmt == "auto":
        fmt = detect_format(path, question_col, answer_col)
    if categories and fmt != "arxiv":
        raise no_categories(path, fmt)
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


def _qa_examples(path: Path, question_col: str, answer_col: str) -> Iterator[Example]:
    for r in read_qa(path, question_col, answer_col):
        for name, value in (("question", r.question), ("answer", r.answer)):
            if not value:
                raise DataError(f"empty {name}", path=path, line=r.line, fix="fill it in or drop the row")
        yield Example(r.id, r.question, r.answer, "qa", {"source": f"{path.name}:{r.line}"})


def _chat_examples(path: Path) -> Iterator[Example]:
    for r in read_chat(path):
        users = [m for m in r.messages if m["role"] == "user"]
        system = next((m.get("content") or "" for m in r.messages if m["role"] == "system"), "")
        meta: dict = {"messages": r.messages, "source": f"{path.name}:{r.line}"}
        if system:
            meta["system"] = system
        yield Example(r.id, users[-1].get("content") or "", r.messages[-1]["content"], "chat", meta)


def _preference_examples(path: Path) -> Iterator[Example]:
    for r in read_preference(path):
        meta = {"rejected": text_of(r.rejected, "assistant"), "source": f"{path.name}:{r.line}"}
        if not isinstance(r.prompt, str):
            meta["messages"] = r.prompt
        yield Example(r.id, text_of(r.prompt, "user"), text_of(r.chosen, "assistant"), "preference", meta)


def load_examples(path: Path, format: str = "auto", question_col: str = "question", answer_col: str = "answer") -> list[Example]:
    """Examples from a built split, a QA file (CSV/JSONL), chat JSONL or preference JSONL.

    Chat: prompt = last user turn, response = final assistant turn; the system prompt and the full
    conversation are kept in `meta["system"]` / `meta["messages"]`. Preference: response = chosen,
    `meta["rejected"]`. A JSONL of `{"prompt": ...}` rows alone gives examples with empty responses.
    Raw arXiv/scientific_papers metadata must be built first.
    """
    path = check_file(path)
    fmt = normalize_format(format)
    if fmt == "auto":
        fmt = detect_format(path, question_col, answer_col)
    if fmt in ("arxiv", "papers"):
        raise DataError(f"this is raw {fmt} metadata, not prompt/response examples", path=path,
                        fix=f"build it first: toolkit data build {path}")
    if fmt == "built":
        return list(read_built(path, require_response=False))
    if fmt == "qa":
        return list(_qa_examples(path, question_col, answer_col))
    if fmt == "chat":
        return list(_chat_examples(path))
    return list(_preference_examples(path))

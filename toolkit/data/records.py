"""The record types the readers yield, the format names, and small helpers every reader shares.

Inputs the toolkit reads (format names as used by `--format` / `--kind`):

* `arxiv`: arXiv metadata: the Kaggle snapshot's fields `id`, `title`, `abstract`, `categories`
  (space-separated) and `update_date`, or the names other public files use (`summaries`, `terms`,
  ...: `toolkit.data.columns`), in any container below.
* `papers`: the `scientific_papers`/arxiv data (`article`, `abstract`, `section_names`: JSONL, or
  the dataset saved to disk); the abstract's `<S>`/`</S>` tags, newlines and tokenised spacing
  (`word .`) are normalised.
* `qa`: question/answer pairs; column names are configurable.
* `chat`: records with `messages`: a list of `{role, content}` (system/user/assistant/tool), or
  ShareGPT `conversations` (`toolkit.data.messages`).
* `preference`: `prompt`, `chosen`, `rejected`, each a string or a message list, or LLaMA-Factory's
  ShareGPT form (`conversations` + `chosen`/`rejected` objects).
* `built`: the splits `toolkit data build` writes: one `{id, prompt, response, kind, ...}` a line.

Containers (`toolkit.data.sources`): JSON Lines, a JSON array, CSV/TSV, Parquet, Arrow, and a
Hugging Face dataset saved with `save_to_disk`. Every reader reports malformed input as one-line
`DataError`s naming the file and line; `Problems` collects a file's bad records so one run lists
them all (up to `Problems.SHOWN`, then a count) instead of stopping at the first. Every later
stage (training, sweeps, comparisons) works on `Example`s from `toolkit.data.readers.load_examples`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.data.dates import Date
from toolkit.errors import ConfigError, DataError

__all__ = [
    "Example", "AbstractRecord", "QARecord", "ChatRecord", "PreferenceRecord", "FORMATS", "ROLES",
    "normalize_format", "json_type", "one_line", "found_fields", "squash", "string_field", "record_id", "Problems",
    "clean_text",
]

FORMATS = ("arxiv", "papers", "qa", "chat", "preference", "built")
_ALIASES = {
    "kaggle": "arxiv", "arxiv-metadata": "arxiv", "scientific_papers": "papers", "scientific-papers": "papers",
    "csv": "qa", "messages": "chat", "dpo": "preference", "split": "built", "examples": "built",
}
ROLES = ("system", "user", "assistant", "tool")


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
    date: Date | None = None  # the first version's date, else the arXiv id's month, else update_date (dates.dated)
    date_source: str = ""  # where `date` came from: a key of toolkit.data.dates.SOURCES


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


# ------------------------------------------------------------------------------------- helpers


def normalize_format(fmt: str, *, option: str = "--format") -> str:
    """A format name or alias (`csv`, `dpo`, ...) as one of FORMATS, or `auto`."""
    key = str(fmt).strip().lower()
    key = _ALIASES.get(key, key)
    if key != "auto" and key not in FORMATS:
        raise ConfigError(f"unknown {option} {fmt!r}", fix=f"use auto or one of {', '.join(FORMATS)}")
    return key


# ShareGPT speaker names (LLaMA-Factory's tags and common variants) -> chat roles
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
            "bot": "assistant", "system": "system", "observation": "tool", "tool": "tool", "function_call": "assistant"}


def with_system(messages: list[dict], obj: dict) -> list[dict]:
    """A record's separate `system` field (LLaMA-Factory's ShareGPT form) as the first message,
    where the messages have none."""
    system = obj.get("system")
    if isinstance(system, str) and system.strip() and messages and isinstance(messages[0], dict) and messages[0].get("role") != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
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


def one_line(text: Any) -> str:
    """User-supplied text (field names, values) made safe for a one-line message."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def found_fields(obj: dict) -> str:
    """`found: a, b, c` naming a record's fields, for a missing-field message."""
    names = [one_line(k) for k in obj]
    shown = ", ".join(names[:15]) + (f", ... ({len(names)} in all)" if len(names) > 15 else "")
    return f"found: {shown}" if names else "the record is empty"


def squash(text: str) -> str:
    """Whitespace runs collapsed to single spaces, ends trimmed."""
    return " ".join(text.split())


def string_field(obj: dict, name: str, path: Path, line: int, fix: str, *, required: bool = True, default: str = "") -> str:
    """A string field; numbers are accepted as text, null as empty; anything else is an error."""
    if name not in obj:
        if required:
            raise DataError(f"missing field {name!r} ({found_fields(obj)})", path=path, line=line, fix=fix)
        return default
    value = obj[name]
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"field {name!r} must be a string, got {json_type(value)}", path=path, line=line, fix=fix)


def record_id(obj: dict, path: Path, line: int, key: str = "id") -> str:
    """The record's own id when it has a usable one, else `<file stem>-<line>`."""
    value = obj.get(key)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    return f"{path.stem}-{line}"


def clean_text(text: str) -> str:
    """Text with Windows (CRLF) and old Mac (CR) line ends as plain newlines: no stray \\r in prompts."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


class Problems:
    """The bad records of one file, collected so that one run reports all of them.

    A reader `add`s each record's `DataError` and goes on; `raise_if_any` at the end of the file
    raises the error itself when there was one, or one error listing the first `SHOWN` (file:line
    and reason) and counting the rest.
    """

    SHOWN = 10

    def __init__(self, path: Path):
        self.path = path
        self.errors: list[DataError] = []
        self.count = 0
        self.reasons: Counter = Counter()  # every bad record's reason, up to its first ':' ("missing chosen")

    def add(self, error: DataError) -> None:
        self.count += 1
        self.reasons[_reason(error).split(":")[0]] += 1
        if len(self.errors) < self.SHOWN:
            self.errors.append(error)

    def lines(self) -> list[str]:
        """The first `SHOWN` bad records as `line N: reason`."""
        return [f"line {e.line}: {_reason(e)}" if e.line is not None else _reason(e) for e in self.errors]

    def handed_over(self) -> bool:
        """Whether a `collect_problems` block takes this file's bad records (then the reader does not raise)."""
        sink = _COLLECTING.get()
        if sink is None:
            return False
        sink.append(self)
        return True

    def raise_if_any(self) -> None:
        if not self.count:
            return
        first = self.errors[0]
        if self.count == 1:
            raise first
        listed = "; ".join(self.lines())
        more = f"; and {self.count - len(self.errors)} more" if self.count > len(self.errors) else ""
        raise DataError(f"{self.count} bad records: {listed}{more}", path=self.path, line=None, fix=first.fix)


_COLLECTING: ContextVar[list[Problems] | None] = ContextVar("collecting", default=None)


@contextmanager
def collect_problems() -> Iterator[list[Problems]]:
    """Within the block, a reader that ends with bad records hands its `Problems` to the list this
    yields instead of raising them, so `data check` prints its summary before it fails."""
    token = _COLLECTING.set([])
    try:
        yield _COLLECTING.get()
    finally:
        _COLLECTING.reset(token)


def _reason(error: DataError) -> str:
    """A record error's message without its `file:line: ` prefix."""
    where = f"{error.path}:{error.line}: " if error.line is not None else f"{error.path}: "
    return error.message[len(where):] if error.message.startswith(where) else error.message

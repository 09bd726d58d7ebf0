"""Opening data files and iterating their raw records: UTF-8 decoding, JSON Lines and JSON arrays.

The readers in `toolkit.data.readers` turn these raw objects into typed records. The other
containers (CSV/TSV, Parquet, Arrow, saved Hugging Face datasets) are in `toolkit.data.tables`,
and `toolkit.data.sources` picks the container of a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from toolkit.data.records import Problems, json_type
from toolkit.errors import DataError

__all__ = ["BOM", "check_file", "decode_all", "iter_json_records", "count_json_records", "not_utf8", "is_json_array"]

BOM = b"\xef\xbb\xbf"
_WS = re.compile(r"\s*")


def check_file(path: Path) -> Path:
    """`path` as a Path, once it is known to be an existing file."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path, fix="check the path")
    if path.is_dir():
        raise DataError("is a directory, not a data file", path=path, fix="pass the file itself")
    return path


def not_utf8(path: Path, line: int, raw: bytes, exc: UnicodeDecodeError) -> DataError:
    """The error for bytes that are not UTF-8, naming the line and column."""
    return DataError(
        f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
        path=path, line=line, fix="re-save the file as UTF-8",
    )


def decode_line(path: Path, lineno: int, raw: bytes) -> str:
    """One line's bytes as text (a BOM dropped from the first line); bad UTF-8 is an error naming the line."""
    if lineno == 1 and raw.startswith(BOM):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, lineno, raw, exc) from None


def decode_all(path: Path, raw: bytes) -> str:
    """A whole file's bytes as text, without a BOM; bad UTF-8 is an error naming its line and column."""
    if raw.startswith(BOM):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = UnicodeDecodeError(exc.encoding, exc.object, exc.start - line_start, exc.end - line_start, exc.reason)
        raise not_utf8(path, line, raw[line_start:], bad) from None


def _empty(path: Path) -> DataError:
    return DataError("file is empty (no records)", path=path, fix="expected one JSON object per line, or a JSON array of objects")


def is_json_array(path: Path, head: bytes) -> bool:
    """Whether a file (whose first bytes are `head`) is one JSON array rather than JSON Lines."""
    first = head[3:] if head.startswith(BOM) else head
    return first.lstrip().startswith(b"[") and Path(path).suffix.lower() not in {".jsonl", ".ndjson"}


def count_json_records(path: Path) -> int:
    """How many records `iter_json_records` yields for a well-formed file, without decoding JSON Lines.

    A JSON Lines record is a line with something besides whitespace on it; an array is parsed.
    """
    path = check_file(path)
    with open(path, "rb") as f:
        if is_json_array(path, f.read(1 << 16)):
            return sum(1 for _ in iter_json_records(path))
        f.seek(0)
        count = 0
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[3:]
            head = raw.lstrip()[:1]
            if head and (0x21 <= head[0] <= 0x7E or raw.decode("utf-8", "replace").strip()):  # "{": no need to decode
                count += 1
        return count


def iter_json_records(path: Path, problems: Problems | None = None) -> Iterator[tuple[int, dict]]:
    """Yield `(line, object)` from a JSON Lines file or a file holding one JSON array of objects.

    A file is read as an array when it starts with '[' and is not named .jsonl/.ndjson.

    JSON Lines are streamed (the 4 GB Kaggle snapshot is fine); an array is read whole. Blank lines
    are skipped. Bad JSON, non-UTF-8 bytes, non-object records and empty files raise `DataError`;
    with `problems`, a bad JSON Lines line is added there instead and reading goes on.
    """
    path = check_file(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        if not head:
            raise _empty(path)
        if is_json_array(path, head):
            yield from _iter_array(path, head + f.read())
            return
        f.seek(0)
        count = 0
        for lineno, raw in enumerate(f, 1):
            try:
                obj = _json_line(path, lineno, raw)
            except DataError as exc:
                if problems is None:
                    raise
                problems.add(exc)
                count += 1  # a record, if a bad one: the file is not empty
                continue
            if obj is not None:
                count += 1
                yield lineno, obj
        if count == 0:
            raise _empty(path)


def _json_line(path: Path, lineno: int, raw: bytes) -> dict | None:
    """One JSON Lines line as an object; None for a blank line."""
    text = decode_line(path, lineno, raw)
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        fix = "each line must be one complete JSON object (JSON Lines); a pretty-printed file must be one JSON array"
        raise DataError(f"bad JSON: {exc.msg} (column {exc.colno})", path=path, line=lineno, fix=fix) from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {json_type(obj)}", path=path, line=lineno,
                        fix="write one {...} object per line")
    return obj


def _iter_array(path: Path, raw: bytes) -> Iterator[tuple[int, dict]]:
    text = decode_all(path, raw)
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
            raise DataError(f"expected a JSON object in the array, got {json_type(obj)}", path=path, line=line_at(i))
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

"""Which container a data file is, and its raw rows whatever the container: one entry point for every reader.

Containers: `json` (JSON Lines or one JSON array), `csv`, `tsv`, `parquet`, `arrow` (an Arrow IPC
stream or file) and `hf` (a folder written by `datasets`' `save_to_disk`). `detect_container`
judges by the extension (`.jsonl`, `.json`, `.csv`, `.tsv`, `.parquet`, `.arrow`, a folder), and by
the content when the extension says nothing (`PAR1` and `ARROW1` magic bytes, a leading `{` or `[`,
a tab in the first line). `--format` can name the container (`--format csv`, or with the kind:
`--format arxiv,csv`); `parse_format` splits such a value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from toolkit.data.files import count_json_records, iter_json_records
from toolkit.data.records import FORMATS, Problems, normalize_format
from toolkit.data.tables import arrow_columns, count_arrow_rows, csv_header, is_dataset_dir, iter_arrow_rows, iter_csv_rows
from toolkit.errors import ConfigError, DataError

T = TypeVar("T")

__all__ = ["CONTAINERS", "parse_format", "detect_container", "iter_rows", "count_rows", "first_keys"]

CONTAINERS = ("json", "csv", "tsv", "parquet", "arrow", "hf")
_CONTAINER_NAMES = {
    "json": "json", "jsonl": "json", "ndjson": "json", "csv": "csv", "tsv": "tsv", "tab": "tsv",
    "parquet": "parquet", "pq": "parquet", "arrow": "arrow", "feather": "arrow", "ipc": "arrow",
    "hf": "hf", "dataset": "hf", "hf-dataset": "hf", "huggingface": "hf", "save_to_disk": "hf",
}
_SUFFIXES = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
             ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}


def parse_format(spec: str, *, option: str = "--format") -> tuple[str, str]:
    """`(kind, container)` from a `--format` value: a kind (`arxiv`), a container (`csv`), or both
    joined by ',' or '+' (`arxiv,csv`); each part not given is `auto`."""
    kind, container = "auto", "auto"
    for part in (p for p in re.split(r"[,+:\s]+", str(spec).strip().lower()) if p):
        if part == "auto":
            continue
        if part in _CONTAINER_NAMES:
            container = _CONTAINER_NAMES[part]
            continue
        try:
            kind = normalize_format(part, option=option)
        except ConfigError:
            raise ConfigError(f"unknown {option} {spec!r}",
                              fix=f"use auto, a kind ({', '.join(FORMATS)}), a container ({', '.join(CONTAINERS)}), "
                                  f"or both: {option} arxiv,csv") from None
    return kind, container


def detect_container(path: Path) -> str:
    """The container of a file or folder, judged by its extension, else by its first bytes."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path, fix="check the path")
    if path.is_dir():
        if is_dataset_dir(path):
            return "hf"
        raise DataError("is a directory, not a data file or a saved dataset", path=path,
                        fix="pass the file itself, or a folder written by Dataset.save_to_disk (dataset_info.json + *.arrow)")
    by_suffix = _SUFFIXES.get(path.suffix.lower())
    if by_suffix:
        return by_suffix
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return "arrow"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text or text[:1] in (b"{", b"["):
        return "json"
    first_line = text.split(b"\n", 1)[0]
    return "tsv" if b"\t" in first_line and b"," not in first_line else "csv"


def iter_rows(path: Path, container: str, problems: Problems | None = None) -> Iterator[tuple[int, dict]]:
    """Yield `(line, row)` for every record of a file in the given container (see the module doc)."""
    if container == "json":
        return iter_json_records(path, problems)
    if container in ("csv", "tsv"):
        return iter_csv_rows(path, "\t" if container == "tsv" else ",", problems)
    return iter_arrow_rows(path, container)


def parse_rows(path: Path, container: str, parse: Callable[[int, dict], T]) -> Iterator[T]:
    """`parse(line, row)` for every record; a row it rejects with a DataError is set aside, and all of
    a file's bad rows are reported together (the first few listed) once the file is read."""
    problems = Problems(path)
    for line, obj in iter_rows(path, container, problems):
        try:
            record = parse(line, obj)
        except DataError as exc:
            problems.add(exc)
            continue
        yield record
    if problems.count and not problems.handed_over():
        problems.raise_if_any()


def count_rows(path: Path, container: str) -> int:
    """How many records `iter_rows` yields for a well-formed file, as cheaply as the container allows."""
    if container == "json":
        return count_json_records(path)
    if container in ("csv", "tsv"):
        return sum(1 for _ in iter_csv_rows(path, "\t" if container == "tsv" else ",", Problems(Path(path))))
    return count_arrow_rows(path, container)


def first_keys(path: Path, container: str) -> tuple[int, list[str], bool]:
    """`(line, column names, per_record)` of a file: the header of a table, or the first JSON record's
    fields (`per_record`: other records may have other fields)."""
    if container == "json":
        problems = Problems(Path(path))  # bad lines before the first good record are reported by the reader
        for line, first in iter_json_records(path, problems):
            return line, list(first), True
        problems.raise_if_any()
        return 1, [], True
    if container in ("csv", "tsv"):
        return 1, csv_header(path, "\t" if container == "tsv" else ","), False
    return 1, arrow_columns(path, container), False

"""Tabular containers: CSV/TSV, Parquet, Arrow and Hugging Face datasets saved to disk, row by row.

Every reader here yields `(line, row)` pairs, a row being a plain dict of column -> value, and
streams: a CSV is read a line at a time, Parquet a row group at a time, Arrow a record batch at a
time, so memory stays flat in the file's size.

CSV: UTF-8 (a BOM is dropped); the first non-blank row is the header; blank rows are skipped; the
line is the one the record starts on. Quoting is checked strictly: a file cut off inside a quoted
field, or a stray character after a closing quote, is an error naming the line. Windows (CRLF) and
old Mac (CR) line ends become plain newlines, inside quoted fields too, so no `\\r` reaches the
text. Fields have no size limit here (a long record is the build's `--max-chars` to judge).

Parquet, Arrow and saved datasets: the "line" is the row number, 1 for the first row. A dataset
folder written by `datasets`' `save_to_disk` is read from its Arrow files in the order its
`state.json` lists them; a `DatasetDict` folder reads its splits one after another (row numbers
run on across them).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.data.files import check_file, decode_line
from toolkit.data.records import Problems, one_line
from toolkit.errors import DataError

__all__ = ["iter_csv_rows", "csv_header", "iter_arrow_rows", "arrow_columns", "count_arrow_rows", "is_dataset_dir"]

_BATCH = 1024


# ------------------------------------------------------------------------------------------ CSV


def _lines(path: Path) -> Iterator[str]:
    """The file's lines decoded, line ends as `\\n`; bytes that are not UTF-8 are an error naming the line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            text = decode_line(path, lineno, raw)
            if "\r" not in text:
                yield text
                continue
            text = text.replace("\r\n", "\n")
            if "\r" not in text:
                yield text
                continue
            pieces = text.replace("\r", "\n").split("\n")  # CR-only line ends: each is a line
            for i, piece in enumerate(pieces):
                if i < len(pieces) - 1:
                    yield piece + "\n"
                elif piece:
                    yield piece


def _unique(names: list[str]) -> list[str]:
    """Header names made unique the way pandas does (`a`, `a.1`, `a.2`), so no column hides another."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        else:
            seen[name] = 0
        out.append(name)
    return out


def _reader(path: Path, delimiter: str) -> Any:
    csv.field_size_limit(2**31 - 1)  # the default 128 KiB would reject a long abstract outright
    return csv.reader(_lines(path), delimiter=delimiter, strict=True)


def _header(path: Path, reader: Any) -> list[str]:
    for row in reader:
        if any(cell.strip() for cell in row):
            return _unique([h.strip() for h in row])
    raise DataError("file is empty (no header, no rows)", path=path,
                    fix="expected a header row naming the columns, then one row per record")


def _csv_error(path: Path, exc: csv.Error, start: int, reader: Any) -> DataError:
    if "unexpected end of data" in str(exc):
        return DataError(f"the file ends inside a quoted field that starts on line {start}", path=path, line=start,
                         fix="the file is cut off, or a quote on that line is never closed; re-export the whole file")
    return DataError(f"bad CSV: {exc}", path=path, line=reader.line_num,
                     fix="check the quoting on that line: a quote inside a quoted field is written twice (\"\")")


def csv_header(path: Path, delimiter: str = ",") -> list[str]:
    """The column names of a CSV/TSV file (its first non-blank row)."""
    path = check_file(path)
    reader = _reader(path, delimiter)
    try:
        return _header(path, reader)
    except csv.Error as exc:
        raise _csv_error(path, exc, reader.line_num, reader) from None


def iter_csv_rows(path: Path, delimiter: str = ",", problems: Problems | None = None) -> Iterator[tuple[int, dict]]:
    """Yield `(line, {column: text})` for every non-blank row of a CSV/TSV file.

    A row with more or fewer fields than the header is an error (added to `problems` when given).
    """
    path = check_file(path)
    reader = _reader(path, delimiter)
    start = 1
    try:
        header = _header(path, reader)
        width, count = len(header), 0
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                break
            if not any(cell.strip() for cell in row):
                continue
            count += 1
            if len(row) < width or (len(row) > width and any(c.strip() for c in row[width:])):
                error = DataError(f"row has {len(row)} fields but the header has {width}", path=path, line=start,
                                  fix="quote fields that contain commas, quotes or newlines")
                if problems is None:
                    raise error
                problems.add(error)
                continue
            yield start, dict(zip(header, row))
    except csv.Error as exc:
        raise _csv_error(path, exc, start, reader) from None
    if count == 0:
        raise DataError("file has a header but no rows", path=path, fix="add rows below the header")


# ---------------------------------------------------------------------------- Arrow and Parquet


def is_dataset_dir(path: Path) -> bool:
    """Whether a folder looks like a `save_to_disk` dataset (or DatasetDict) or holds Arrow/Parquet files."""
    path = Path(path)
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    return path.is_dir() and (any((path / m).is_file() for m in markers) or bool(_data_files(path)))


def _data_files(folder: Path) -> list[Path]:
    """A saved dataset's data files in order: state.json's list, else its .arrow, else its .parquet files."""
    state = folder / "state.json"
    if state.is_file():
        try:
            listed = [folder / f["filename"] for f in json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            listed = []
        if listed and all(p.is_file() for p in listed):
            return listed
    return sorted(folder.glob("*.arrow")) or sorted(folder.glob("*.parquet"))


def _dataset_files(path: Path) -> list[Path]:
    """Every data file of a saved dataset folder; a DatasetDict gives its splits' files in its order."""
    split_list = path / "dataset_dict.json"
    if split_list.is_file():
        try:
            splits = json.loads(split_list.read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError):
            raise DataError("dataset_dict.json is unreadable", path=path, fix="save the dataset again with save_to_disk") from None
        return [f for s in splits for f in _data_files(path / s)]
    return _data_files(path)


def _files_of(path: Path, container: str) -> list[Path]:
    if container != "hf":
        return [check_file(path)]
    files = _dataset_files(path)
    if not files:
        raise DataError("no .arrow or .parquet data files in this folder", path=path,
                        fix="pass a folder written by Dataset.save_to_disk, or the data file itself")
    return files


def _open_arrow(path: Path) -> Any:
    """A record-batch reader over an Arrow IPC stream (what `datasets` writes) or an Arrow file (Feather v2)."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.OSFile(str(path)))
    except pa.ArrowInvalid:
        try:
            reader = pa.ipc.open_file(pa.OSFile(str(path)))
        except pa.ArrowInvalid as exc:
            raise DataError(f"not a readable Arrow file ({one_line(exc)})", path=path,
                            fix="pass an Arrow IPC file/stream, or --format to read it as another container") from None
        return _FileBatches(reader)


class _FileBatches:
    """The record batches of an Arrow random-access file, iterated like a stream reader."""

    def __init__(self, reader: Any):
        self.reader = reader
        self.schema = reader.schema

    def __iter__(self) -> Iterator[Any]:
        return (self.reader.get_batch(i) for i in range(self.reader.num_record_batches))


def _parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({one_line(exc)})", path=path,
                        fix="pass a Parquet file, or --format to read it as another container") from None


def _batches(path: Path) -> Iterator[Any]:
    if path.suffix.lower() in (".parquet", ".pq") or _magic(path) == b"PAR1":
        yield from _parquet(path).iter_batches(batch_size=_BATCH)
    else:
        yield from _open_arrow(path)


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def arrow_columns(path: Path, container: str) -> list[str]:
    """The column names of a Parquet/Arrow file or saved dataset (from its first data file)."""
    first = _files_of(path, container)[0]
    if first.suffix.lower() in (".parquet", ".pq") or _magic(first) == b"PAR1":
        return list(_parquet(first).schema_arrow.names)
    return list(_open_arrow(first).schema.names)


def count_arrow_rows(path: Path, container: str) -> int:
    """The number of rows, from Parquet metadata or by walking the Arrow batches (no values converted)."""
    total = 0
    for file in _files_of(path, container):
        if file.suffix.lower() in (".parquet", ".pq") or _magic(file) == b"PAR1":
            total += _parquet(file).metadata.num_rows
        else:
            total += sum(batch.num_rows for batch in _open_arrow(file))
    return total


def iter_arrow_rows(path: Path, container: str) -> Iterator[tuple[int, dict]]:
    """Yield `(row number, row)` from a Parquet/Arrow file or saved dataset, a batch at a time."""
    row = 0
    for file in _files_of(path, container):
        for batch in _batches(file):
            for obj in batch.to_pylist():
                row += 1
                yield row, obj
    if row == 0:
        raise DataError("the table has no rows", path=path, fix="pass a file with at least one row")

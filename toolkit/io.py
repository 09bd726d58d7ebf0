"""Atomic file output and the toolkit's home directory.

Artifacts are written to a temporary file in the destination directory and renamed into place, so
an interrupted job never leaves a half-written file that a later step would read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def toolkit_home() -> Path:
    """Where caches live: `$TOOLKIT_HOME`, else `$XDG_CACHE_HOME/toolkit`, else `~/.cache/toolkit`."""
    if os.environ.get("TOOLKIT_HOME"):
        return Path(os.environ["TOOLKIT_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "toolkit"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success rename it onto `dest`, else delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write `text` to `dest` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json(dest: str | os.PathLike, obj) -> Path:
    """Write `obj` as indented JSON atomically."""
    return write_text(dest, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(dest: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line atomically."""
    with atomic_path(dest) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(dest)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; on success it replaces `dest` in one rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_figure(fig, dest: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay out a matplotlib figure and write it as PNG atomically; the figure is closed."""
    import warnings

    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's colour bars trip tight_layout's warning
        fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(dest)

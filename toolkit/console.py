"""Terminal output: one rich console on stderr for progress, stdout left for results."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

err = Console(stderr=True)
out = Console()


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner for work whose length is unknown."""
    with err.status(message):
        yield
    err.print(f"[green]✓[/] {message}")


def progress() -> Progress:
    """A progress bar with count, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    with progress() as bar:
        task = bar.add_task(description, total=total if total is not None else len(items), info="")  # type: ignore[arg-type]
        for item in items:
            yield item
            bar.advance(task)

"""What every backend hands back, and the small helpers the backends and the batched engine share.

Kept apart from `backends` so that the batched engine (which `LlamaCppBackend` drives) can use
these types without importing the backends that import it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from toolkit.errors import BackendError, ConfigError
from toolkit.params import DecodingParams

Messages = list[dict[str, str]]
# what a job source hands `Backend.generate_stream`: (key, conversation, parameters), or None
StreamJob = tuple[Hashable, Messages, DecodingParams]
# most generations one backend runs at once (llama.cpp slots; batches were checked exact up to 64)
MAX_PARALLEL = 64


@dataclass
class Generation:
    """One completed generation with its token counts and timing."""

    text: str
    finish_reason: str  # "stop" (end of turn or stop sequence) or "length" (hit max_tokens)
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"tokens_per_second": round(self.tokens_per_second, 2)}


def as_messages(prompt: str | Messages, system: str | None = None) -> Messages:
    """A plain prompt becomes one user turn (after an optional system turn)."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def check_parallel(parallel: int) -> int:
    """`parallel` if it is a number of simultaneous generations a backend can run."""
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ConfigError(f"parallel={parallel} is outside 1..{MAX_PARALLEL}", fix=f"pick a number of simultaneous generations from 1 to {MAX_PARALLEL}")
    return parallel


def run_jobs(stream: Callable[[Callable[[], Any]], Iterator[tuple[int, Any]]], jobs: list) -> list:
    """Run `jobs` (each keyed by its index in the list) through a `generate_stream`-like `stream`
    that takes them one at a time; the results in the jobs' order."""
    queue = deque(jobs)
    results: list = [None] * len(jobs)
    for i, done in stream(lambda: queue.popleft() if queue else None):
        results[i] = done
    return results


def per_item(params: DecodingParams | Sequence[DecodingParams], n: int) -> list[DecodingParams]:
    """One parameter set per item: a single set repeated, or a list of exactly `n`."""
    if isinstance(params, DecodingParams):
        return [params] * n
    each = list(params)
    if len(each) != n:
        raise BackendError(f"{n} prompts but {len(each)} parameter sets")
    return each

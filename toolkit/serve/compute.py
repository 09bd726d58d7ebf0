"""The compute thread and the batched engine of `toolkit serve`.

Every llama.cpp computation of the server runs on one thread (`Compute`); with `--parallel`, plain
generations from several connections decode together in one llama.cpp batch (`Engine`, over
`toolkit.runtime.batched`): several times the total throughput on a CPU, same texts per seed.
A request whose client left (its `cancel` event set) stops within one decode step on either path.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from toolkit.params import DecodingParams
from toolkit.runtime.batched import BatchedGenerator, Completion, Job
from toolkit.serve.request import Cancelled

POLL = 0.05  # seconds between looks at a waiting request's cancel event


class Compute:
    """The one thread that runs every llama.cpp computation of the server.

    llama.cpp computes with OpenMP, and libgomp keeps a team of threads for each thread that ever
    computed. Once two have, more threads are alive than there are cores, libgomp stops spinning
    at its barriers, and every decode runs at about half speed (measured on 2 cores: 53 -> 27
    tok/s, for good, even when only one computes at a time). So request threads never compute:
    they hand work here. Tasks run one after another, in order.
    """

    def __init__(self) -> None:
        self._tasks: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="llama-compute", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        """Queue `fn(*args, **kwargs)`; a Future of its result."""
        from concurrent.futures import Future

        future: Future = Future()
        self._tasks.put((future, fn, args, kwargs))
        return future

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on the compute thread; its result, or its error raised here."""
        return self.submit(fn, *args, **kwargs).result()

    def iterate(self, make: Callable[[], Iterator[Any]], cancel: threading.Event | None = None) -> Iterator[Any]:
        """The items of `make()`, computed on the compute thread and yielded here as they come. A
        caller that stops early stops the computation, and waits until it has stopped; so does a
        `cancel` event once set (then Cancelled is raised here)."""
        items: queue.Queue = queue.Queue()
        stop = threading.Event()
        end = object()

        def work() -> None:
            with contextlib.closing(make()) as source:
                for item in source:
                    items.put(item)
                    if stop.is_set():
                        return

        task = self.submit(work)
        task.add_done_callback(lambda _: items.put(end))
        try:
            while (item := _get(items, cancel)) is not end:
                yield item
            task.result()  # raises the computation's error, if any
        finally:
            stop.set()
            if not task.cancel():
                task.exception()  # wait: the caller may free what the computation uses

    def busy(self) -> bool:
        """Whether other tasks are waiting (a batch then stops taking requests, see `Engine`)."""
        return not self._tasks.empty()

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, args, kwargs = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)

    def close(self) -> None:
        self._tasks.put(None)
        self._thread.join(timeout=600)


class Engine:
    """A model's batched generator (`toolkit.runtime.batched`): requests from several connections decode
    together in its `parallel` slots, as in Ollama with OLLAMA_NUM_PARALLEL. Each request gets its
    text pieces as they are final, then its Completion.

    Requests queue here; a batch runs as one task on the compute thread while requests keep
    joining it. It stops taking new ones when other tasks wait (a structured-output request, an
    embedding, another model's batch), so none waits for long, and is queued again after them.
    `enqueue` and `close` run under the registry's lock.
    """

    def __init__(self, gguf: Path, compute: Compute, *, n_ctx: int, parallel: int, n_threads: int | None,
                 lora: Path | None = None):
        self.n_ctx = n_ctx
        self.gen = BatchedGenerator(gguf, n_ctx_per_seq=n_ctx, n_parallel=parallel, n_threads=n_threads, lora=lora)
        self._compute = compute
        self._pending: deque = deque()  # (Job, replies) not started yet
        self._waiting: dict[int, queue.Queue] = {}  # started: key -> replies
        self._gone: set = set()  # requests whose client went away: dropped from the batch
        self._keys = itertools.count()
        self._scheduled = False  # a batch task is queued or running
        self._guard = threading.Lock()  # for _pending and _scheduled, shared with the compute thread

    def enqueue(self, tokens: list[int], params: DecodingParams) -> tuple[int, queue.Queue]:
        """Queue a generation for prompt `tokens` (tokenized by the caller, outside any lock)."""
        key, replies = next(self._keys), queue.Queue()
        job = Job(key, tokens, params, on_text=replies.put)
        with self._guard:
            self._pending.append((job, replies))
            if not self._scheduled:
                self._scheduled = True
                self._compute.submit(self._batch)
        return key, replies

    def replies(self, key: int, replies: queue.Queue, cancel: threading.Event | None = None) -> Iterator[Any]:
        """Text pieces, then the Completion; a consumer that stops early, or whose `cancel` is
        set (Cancelled is raised), drops the request before the next decode step."""
        done = False
        try:
            while not done:
                item = _get(replies, cancel)
                if isinstance(item, BaseException):
                    done = True
                    raise item
                done = isinstance(item, Completion)
                yield item
        finally:
            if not done:
                self._gone.add(key)

    def _next(self, drain: bool) -> Any:
        with self._guard:
            while self._pending and self._pending[0][0].key in self._gone:  # left before it started
                self._gone.discard(self._pending.popleft()[0].key)
            if not self._pending or (self._compute.busy() and not drain):
                return None
            job, replies = self._pending.popleft()
        self._waiting[job.key] = replies
        return job

    def _batch(self, drain: bool = False) -> None:
        """On the compute thread: decode the queued requests together until none is left (or, unless
        draining, other tasks wait); then queue another batch for requests still pending."""
        try:
            for key, done in self.gen.stream(lambda: self._next(drain), self._gone.__contains__):
                self._waiting.pop(key).put(done)
                self._gone.discard(key)
        except BaseException as exc:  # every request in the batch gets the error
            for replies in self._waiting.values():
                replies.put(exc)
            self._waiting.clear()
        for key in [k for k in self._waiting if k in self._gone]:  # dropped mid-generation
            del self._waiting[key]
            self._gone.discard(key)
        with self._guard:
            self._scheduled = bool(self._pending) and not drain
            if self._scheduled:
                self._compute.submit(self._batch)

    def close(self) -> None:
        """Finish every request already queued, then free the generator."""
        def finish() -> None:
            self._batch(drain=True)
            self.gen.close()

        self._compute.call(finish)


def _get(items: queue.Queue, cancel: threading.Event | None) -> Any:
    """The next item; Cancelled once `cancel` is set while waiting for it."""
    if cancel is None:
        return items.get()
    while True:
        if cancel.is_set():
            raise Cancelled()
        try:
            return items.get(timeout=POLL)
        except queue.Empty:
            pass

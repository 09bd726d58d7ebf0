"""Token log-probabilities from llama.cpp: the scorer behind `toolkit eval` and echo/logprobs.

`Scorer.score(context, continuations)` gives, for each continuation, the log-probability of each
of its tokens after the context and the tokens before it, and whether every token was the argmax
(lm-evaluation-harness's `is_greedy`); `score_many` does it for many items at once. An item's
context is decoded once, each of its tokens tagged with one sequence per choice (the KV cache is
unified, so its cells belong to all of them), logits kept only for its last token; each choice's
tokens but the last follow in the choice's own sequence (a one-token choice, MMLU's letters, needs
none: it is read from the context's last logits). Items are packed: each decode holds up to
`n_batch` tokens of contexts and choices of consecutive items, so short items (0-shot ARC) share
decodes and a long context's last chunk shares its decode with its choices.

Packing changes only the summation order. Measured on SmolLM2-135M (llama-cpp-python 0.3.36):
with f32 weights and f32 K/V cells a packed choice agrees with the same choice scored alone to
~5e-6 nats per token; with f16 K/V cells it moved by ~2e-3 nats (a different order flips the f16
rounding of cached values, and 30 layers amplify it), hence float32 cells here, as the `hf` model
keeps them; f16 weights round every activation to f16 and move it by up to ~1e-2 nats per token
whatever the cells (packed or alone alike: both are within the f16 GGUF's distance to HF fp32).
Flash attention is off: its CPU kernel moved packed choices by ~4e-2. tests/test_eval_exact.py
compares packed with one-at-a-time scoring within 1e-5 nats per token on f32 models.

Log-probabilities are log-softmax over the whole vocabulary, computed once per logits row from
llama.cpp's float32 logits (float32 exponentials summed in float64: within ~1e-7 of a float64
log-softmax), as the harness's `hf` model takes them from torch's.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import BackendError
from toolkit.runtime.native import NativeModel
from toolkit.runtime.tokenize import with_bos

N_SEQ = 64  # sequences in the cache at once: the choices of the items in one decode
SEQS_PER_JOB = 16  # choices decoded with one prefill of their context (an item with more is prefilled again)


@dataclass
class Scored:
    """One continuation's tokens scored: per-token log-probabilities, whether each token was the
    argmax, and (when asked) the `top` most likely (token, log-probability) at each position."""

    logprobs: list[float]
    greedy: list[bool]
    top: list[list[tuple[int, float]]] | None = None

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def is_greedy(self) -> bool:
        return all(self.greedy)


class Scorer(NativeModel):
    """Score token sequences with one GGUF (and optionally a GGUF LoRA at scale 1).

    Contexts are decoded once per item and many items share each decode (see the module
    docstring); the counters `prefilled` (context tokens) and `decoded` (choice tokens) say how
    many tokens were decoded, against the naive count of every choice with its whole context.

    Args:
        gguf: the model file (loaded with the CPU-safety probe of `toolkit.runtime.llamacpp`).
        lora: a GGUF LoRA applied at scale 1, as `llamacpp.load(lora=...)` applies it.
        n_ctx: KV cells (float32): one context plus one continuation must fit; an item whose
            choices do not fit together is scored in parts, its context decoded once per part.
        n_threads: CPU threads (default: all this process may use).
        n_batch: most tokens in one decode (longer contexts take several); also bounds the
            sequences in the cache at once (N_SEQ), as llama.cpp keeps one output per sequence.
    """

    def __init__(self, gguf: str | Path, *, lora: str | Path | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, n_batch: int = 512):
        import llama_cpp

        self._load(gguf)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self._model))
        self.n_ctx, self.n_batch = n_ctx, n_batch
        # llama.cpp keeps room for n_batch outputs, and at least one per sequence
        self.n_seq = min(N_SEQ, n_batch)
        self.seqs_per_job = min(SEQS_PER_JOB, self.n_seq)
        # one unified cache: a context's cells belong to every sequence of its choices at once
        cparams = self._context_params(n_ctx=n_ctx, n_seq_max=self.n_seq, n_batch=n_batch, n_threads=n_threads, kv_unified=True)
        # float32 K and V, as the `hf` model keeps them: with f16 cells a choice's numbers moved by
        # ~1e-3 nats with where its cells sat in the cache (the rounding to f16 amplifies the
        # different summation order); in f32 they move by ~1e-6 (see the module docstring)
        cparams.type_k = cparams.type_v = llama_cpp.GGML_TYPE_F32
        self._open_context(cparams, lora, fix="lower n_ctx", seqs_per_token=self.seqs_per_job)
        self.prefilled = self.decoded = 0  # tokens decoded for contexts, and for continuations

    # -- tokens ------------------------------------------------------------------------------

    @property
    def bos(self) -> int | None:
        import llama_cpp

        bos = int(llama_cpp.llama_vocab_bos(self._vocab))
        return bos if bos >= 0 else None

    @property
    def eos(self) -> int | None:
        import llama_cpp

        eos = int(llama_cpp.llama_vocab_eos(self._vocab))
        return eos if eos >= 0 else None

    @property
    def adds_bos(self) -> bool:
        """Whether a text prompt gets a leading BOS (the GGUF's `tokenizer.ggml.add_bos_token`)."""
        return self._bos is not None

    def tokenize(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`, special-token text read as those tokens. `add_bos=None` follows
        the BOS rule (`toolkit.runtime.tokenize`: as the GGUF says, never twice); True/False force it."""
        bos = self._bos if add_bos is None else (self.bos if add_bos else None)
        return with_bos(self._text_tokens(text), bos)

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends a generation (EOS, EOT and the like)."""
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, int(token)))

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as their text, as a tokenizer's decode does)."""
        return self._token_piece(token, special=True)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    # -- scoring -----------------------------------------------------------------------------

    def score(self, context: Sequence[int], continuations: Sequence[Sequence[int]], *, top: int = 0) -> list[Scored]:
        """Each continuation's tokens scored after `context` (non-empty), in order: `score_many` of one item."""
        return next(self.score_many([(context, continuations)], top=top))

    def score_many(self, items: Iterable[tuple[Sequence[int], Sequence[Sequence[int]]]], *, top: int = 0) -> Iterator[list[Scored]]:
        """Each item's (context, continuations) scored as `score` scores it, yielded item by item in
        order as soon as it is done. Items are packed into decodes of up to `n_batch` tokens: each
        context once, tagged with one sequence per choice that needs decoding, then each choice in
        its own sequence, often in the same decode, next to other items' tokens."""
        jobs = _Jobs(self, items, top)
        self._clear()
        while True:
            yield from jobs.finish()
            n = jobs.fill()
            if not n:
                return
            self._decode(n)
            jobs.read()

    def trace(self, prompt: Sequence[int], max_new: int = 0, *, top: int = 0) -> tuple[list[Step], list[Step]]:
        """Every prompt token after the first scored after those before it, and up to `max_new`
        greedy tokens after the prompt (an end-of-generation token is the last one), each with its
        log-probability and the `top` best: what an OpenAI `echo` + `logprobs` completion reports."""
        import llama_cpp

        tokens = [int(t) for t in prompt]
        if not tokens or len(tokens) + max_new > self.n_ctx:
            raise BackendError(f"a prompt of {len(tokens)} tokens + {max_new} new tokens does not fit the scorer's n_ctx ({self.n_ctx})")
        self._clear()
        steps: list[Step] = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            for i, token in enumerate(chunk):
                self._put(i, token, start + i, 0, True)
            self._decode(len(chunk))
            for i in range(len(chunk)):
                following = start + i + 1
                row = self._row(i)
                if following < len(tokens):
                    steps.append(_step(row, tokens[following], top))
        generated: list[Step] = []
        for _ in range(max_new):
            token = int(row.argmax())
            generated.append(_step(row, token, top))
            if llama_cpp.llama_vocab_is_eog(self._vocab, token) or len(generated) == max_new:
                break
            self._put(0, token, len(tokens) + len(generated) - 1, 0, True)
            self._decode(1)
            row = self._row(0)
        return steps, generated

    def greedy(self, prompt: Sequence[int], max_tokens: int, stop: Callable[[str], bool] = lambda text: False) -> str:
        """Greedy (argmax) continuation of `prompt` token ids: up to `max_tokens` tokens, the
        end-of-generation token, or the first text `stop` accepts (the harness's `generate_until`)."""
        import llama_cpp

        self._clear()
        row = self._prefill([int(t) for t in prompt])
        out: list[int] = []
        for _ in range(max_tokens):
            token = int(row.argmax())
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                break
            out.append(token)
            text = self.detokenize(out)
            if stop(text) or len(prompt) + len(out) >= self.n_ctx:
                break
            self._put(0, token, len(prompt) + len(out) - 1, 0, True)
            self._decode(1)
            row = self._row(0)
        return self.detokenize(out)

    def _clear(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(self._mem, True)

    def _decode(self, n: int) -> None:
        import llama_cpp

        self._batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise BackendError(f"llama_decode failed with status {status} on a batch of {n} tokens")

    def _row(self, index: int):
        """A float32 copy of the logits at batch position `index` of the last decode."""
        return self._logits(index).copy()

    def _prefill(self, context: list[int]):
        """Decode the context in sequence 0, `n_batch` tokens at a time; the logits after its last token."""
        for start in range(0, len(context), self.n_batch):
            chunk = context[start:start + self.n_batch]
            for i, token in enumerate(chunk):
                pos = start + i
                self._put(i, token, pos, 0, pos == len(context) - 1)
            self._decode(len(chunk))
        self.prefilled += len(context)
        return self._row(len(context) - 1 - (len(context) - 1) // self.n_batch * self.n_batch)

    def _logits(self, index: int):
        """The float32 logits at batch position `index` of the last decode, read in place (valid until the next decode)."""
        import llama_cpp
        import numpy as np

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,))

    def _check(self, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> None:
        if not context:
            raise BackendError("scoring needs a non-empty context (the harness puts BOS or EOS there)")
        for cont in continuations:
            if not cont:
                raise BackendError("a continuation to score is empty")
            if len(context) + len(cont) - 1 > self.n_ctx:
                raise BackendError(f"context ({len(context)} tokens) + continuation ({len(cont)}) exceed the scorer's "
                                   f"n_ctx ({self.n_ctx})", fix="truncate from the left or raise n_ctx")


class _Job:
    """One item's context and some of its choices (all of them unless they need more sequences or
    KV cells than a job may hold): the tokens to decode, in order, and what each logits row scores."""

    def __init__(self, item: int, context: list[int], choices: list[tuple[int, list[int]]]):
        self.item, self.choices = item, choices  # (index among the item's continuations, tokens)
        decoded = [k for k, (_, cont) in enumerate(choices) if len(cont) > 1]  # a one-token choice is read from the context
        self.n_seqs = max(1, len(decoded))
        last = len(context) - 1
        # (token, position, sequence slots, [(choice, token index) this row scores])
        self.stream = [(t, i, range(self.n_seqs), [] if i < last else [(k, 0) for k in range(len(choices))])
                       for i, t in enumerate(context)]
        for slot, k in enumerate(decoded):
            cont = choices[k][1]
            self.stream += [(t, len(context) + j, (slot,), [(k, j + 1)]) for j, t in enumerate(cont[:-1])]
        self.cells, self.n_context = len(self.stream), len(context)
        self.cursor = 0
        self.seqs: list[int] = []
        self.rows: list[tuple[int, list[tuple[int, int]]]] = []  # (batch index, what it scores) of the last decode
        self.scored = [[None] * len(cont) for _, cont in choices]

    @property
    def done(self) -> bool:
        return self.cursor == len(self.stream)


class _Jobs:
    """The packing of `Scorer.score_many`: jobs start in order while sequences and KV cells are free
    (all of a job's cells are reserved when it starts, so the started ones can always finish); each
    decode continues the started jobs first, then starts new ones, up to n_batch tokens."""

    def __init__(self, scorer: Scorer, items, top: int):
        self.scorer, self.top = scorer, top
        self.items = iter(enumerate(items))
        self.waiting: deque[_Job] = deque()
        self.active: list[_Job] = []
        self.free = list(range(scorer.n_seq))
        self.reserved = 0
        self.results: dict[int, list] = {}  # item -> its Scored list, filled as its jobs finish
        self.left: dict[int, int] = {}  # item -> jobs not finished
        self.next_item = 0
        self._more()

    def _more(self) -> None:
        """Split the next item (with choices) into jobs: a job decodes at most `seqs_per_job`
        choices, and its context with its choices fits n_ctx."""
        scorer = self.scorer
        for item, (context, continuations) in self.items:
            scorer._check(context, continuations)
            context = [int(t) for t in context]
            parts: list[list[tuple[int, list[int]]]] = []
            seqs = cells = 0
            for k, cont in enumerate(continuations):
                cont = [int(t) for t in cont]
                decoded = len(cont) > 1
                if not parts or seqs + decoded > scorer.seqs_per_job or len(context) + cells + len(cont) - 1 > scorer.n_ctx:
                    parts.append([])
                    seqs = cells = 0
                parts[-1].append((k, cont))
                seqs, cells = seqs + decoded, cells + len(cont) - 1
            self.results[item], self.left[item] = [None] * len(continuations), len(parts)
            self.waiting.extend(_Job(item, context, part) for part in parts)
            if parts:
                return

    def fill(self) -> int:
        """Put the next tokens of the started jobs, then of new ones, into the batch; how many."""
        n = 0
        while n < self.scorer.n_batch:
            job = next((job for job in self.active if not job.done), None)
            if job is None:
                if not self.waiting:
                    self._more()
                if not self._start(room=self.scorer.n_batch - n if n else None):
                    break
                continue
            n = self._put(job, n)
        return n

    def _start(self, room: int | None) -> bool:
        """Start the next waiting job if its sequences and cells are free and, joining a batch
        that holds other tokens, it fits the `room` left: every token of a decode attends over
        all the cells in use (masked), so a long context sharing a decode with another item's
        cells was measured to cost more than the decode it saves."""
        if not self.waiting:
            return False
        job = self.waiting[0]
        if len(self.free) < job.n_seqs or self.reserved + job.cells > self.scorer.n_ctx or (room is not None and job.cells > room):
            return False
        self.waiting.popleft()
        job.seqs, self.free = self.free[:job.n_seqs], self.free[job.n_seqs:]
        self.reserved += job.cells
        self.active.append(job)
        return True

    def _put(self, job: _Job, n: int) -> int:
        for token, pos, slots, scores in job.stream[job.cursor:job.cursor + self.scorer.n_batch - n]:
            self.scorer._put_seqs(n, token, pos, [job.seqs[s] for s in slots], bool(scores))
            if scores:
                job.rows.append((n, scores))
            n += 1
            job.cursor += 1
        return n

    def read(self) -> None:
        """Score what each logits row of the last decode predicts (one log-softmax per row)."""
        for job in self.active:
            for index, scores in job.rows:
                row = _RowStats(self.scorer._logits(index), self.top)
                for k, j in scores:
                    job.scored[k][j] = row.of(job.choices[k][1][j])
            job.rows = []

    def finish(self) -> Iterator[list[Scored]]:
        """Drop finished jobs' sequences; yield the items now complete, in order."""
        import llama_cpp

        scorer = self.scorer
        for job in [job for job in self.active if job.done]:
            self.active.remove(job)
            for seq in job.seqs:
                llama_cpp.llama_memory_seq_rm(scorer._mem, seq, -1, -1)
            self.free += job.seqs
            self.reserved -= job.cells
            scorer.prefilled += job.n_context
            scorer.decoded += job.cells - job.n_context
            for (k, _), steps in zip(job.choices, job.scored):
                self.results[job.item][k] = Scored([s[0] for s in steps], [s[1] for s in steps], [s[2] for s in steps] if self.top else None)
            self.left[job.item] -= 1
        if not self.active:
            scorer._clear()  # an empty cache starts again at cell 0: the attention spans only the cells in use
        while self.left.get(self.next_item) == 0:
            del self.left[self.next_item]
            yield self.results.pop(self.next_item)
            self.next_item += 1


@dataclass
class Step:
    """One token as scored: its id, log-probability, and the `top` best (token, log-probability)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def _step(row, token: int, top: int) -> Step:
    scored = _scored([row], [token], top)
    return Step(int(token), scored.logprobs[0], scored.top[0] if scored.top else [])


class _RowStats:
    """One logits row's log-softmax, computed once: the log-sum-exp over the vocabulary (float32
    exponentials summed in float64), the argmax and the `top` best; `of(token)` reads one token."""

    def __init__(self, row, top: int):
        import numpy as np

        peak = row.max()
        self.row, self.argmax = row, int(row.argmax())
        self.lse = float(peak) + math.log(float(np.exp(row - peak).sum(dtype=np.float64)))
        self.top: list[tuple[int, float]] = []
        if top:
            ids = np.argpartition(-row, top - 1)[:top] if top < len(row) else np.arange(len(row))
            ids = ids[np.argsort(-row[ids], kind="stable")]
            self.top = [(int(t), float(row[t]) - self.lse) for t in ids]

    def of(self, token: int) -> tuple[float, bool, list[tuple[int, float]]]:
        """(log-probability, is the argmax, the top best) of `token` at this row."""
        return float(self.row[int(token)]) - self.lse, self.argmax == int(token), self.top


def _scored(rows: list, cont: Sequence[int], top: int) -> Scored:
    """Row i predicts cont[i]: each token's log-probability, whether it is the argmax, and the `top` best."""
    steps = [_RowStats(row, top).of(token) for row, token in zip(rows, cont)]
    return Scored([s[0] for s in steps], [s[1] for s in steps], [s[2] for s in steps] if top else None)

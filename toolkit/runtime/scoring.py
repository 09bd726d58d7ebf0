"""Token log-probabilities from llama.cpp: the scorer behind `toolkit eval` and echo/logprobs.

`Scorer.score(context, continuations)` gives, for each continuation, the log-probability of each
of its tokens after the context and the tokens before it, and whether every token was the argmax
(lm-evaluation-harness's `is_greedy`). Multiple-choice items share their context, so the context
is prefilled once, in chunks of `n_batch`, with logits kept only for its last token; the KV cache
is unified, so `llama_memory_seq_cp` lets a choice's sequence see those cells without copying
them; each choice's remaining tokens take one decode (a one-token choice, MMLU's letters, takes
none: its log-probability is read from the context's last logits).
The same tokens scored one sequence at a time give the same numbers (tests/test_eval_exact.py).

Log-probabilities are log-softmax over the whole vocabulary in float64 from llama.cpp's float32
logits, as the harness's `hf` model takes them from torch's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import BackendError
from toolkit.runtime.native import NativeModel
from toolkit.runtime.tokenize import with_bos


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

    Args:
        gguf: the model file (loaded with the CPU-safety probe of `toolkit.runtime.llamacpp`).
        lora: a GGUF LoRA applied at scale 1, as `llamacpp.load(lora=...)` applies it.
        n_ctx: KV cells: one context plus one continuation must fit.
        n_threads: CPU threads (default: all this process may use).
        n_batch: most tokens in one decode (longer contexts are prefilled in several).
    """

    def __init__(self, gguf: str | Path, *, lora: str | Path | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, n_batch: int = 512):
        import llama_cpp

        self._load(gguf)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self._model))
        self.n_ctx, self.n_batch = n_ctx, n_batch
        # two sequences: the context, and the choice being scored; kv_unified so that seq_cp
        # shares the context's cells instead of copying them
        cparams = self._context_params(n_ctx=n_ctx, n_seq_max=2, n_batch=n_batch, n_threads=n_threads, kv_unified=True)
        self._open_context(cparams, lora, fix="lower n_ctx")
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
        """Each continuation's tokens scored after `context` (non-empty), in order. The context is
        prefilled once; each choice is then decoded in sequence 1 sharing its cells, and dropped."""
        if not context:
            raise BackendError("scoring needs a non-empty context (the harness puts BOS or EOS there)")
        context = [int(t) for t in context]
        for cont in continuations:
            if not cont:
                raise BackendError("a continuation to score is empty")
            if len(context) + len(cont) - 1 > self.n_ctx:
                raise BackendError(f"context ({len(context)} tokens) + continuation ({len(cont)}) exceed the scorer's "
                                   f"n_ctx ({self.n_ctx})", fix="truncate from the left or raise n_ctx")
        self._clear()
        last = self._prefill(context)
        return [_scored([last, *self._decode_choice(len(context), cont)], cont, top) for cont in continuations]

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
        """A float64 copy of the logits at batch position `index` of the last decode."""
        import llama_cpp
        import numpy as np

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,)).astype(np.float64)

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

    def _decode_choice(self, n_context: int, cont: Sequence[int]) -> list:
        """The choice but its last token in sequence 1, which shares the context's cells, in
        decodes of `n_batch` tokens; the logits rows after each of those tokens. One choice per
        decode: several sequences of unequal lengths in one decode were measured to shift
        logits (by ~0.07 nats on a 135M model, llama-cpp-python 0.3.36), as batched.py found for prompts."""
        import llama_cpp

        tokens = [int(t) for t in cont[:-1]]
        if not tokens:  # a one-token choice is read from the context's last logits
            return []
        llama_cpp.llama_memory_seq_cp(self._mem, 0, 1, -1, -1)
        rows = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            for n, token in enumerate(chunk):
                self._put(n, token, n_context + start + n, 1, True)
            self._decode(len(chunk))
            rows += [self._row(n) for n in range(len(chunk))]
        llama_cpp.llama_memory_seq_rm(self._mem, 1, -1, -1)
        self.decoded += len(tokens)
        return rows


@dataclass
class Step:
    """One token as scored: its id, log-probability, and the `top` best (token, log-probability)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def _step(row, token: int, top: int) -> Step:
    scored = _scored([row], [token], top)
    return Step(int(token), scored.logprobs[0], scored.top[0] if scored.top else [])


def _scored(rows: list, cont: Sequence[int], top: int) -> Scored:
    """Log-softmax of each row (row i predicts cont[i]): the token's log-probability, whether it
    is the argmax, and the `top` best."""
    import numpy as np

    logprobs, greedy, best = [], [], []
    for row, token in zip(rows, cont):
        shifted = row - row.max()
        lp = shifted - np.log(np.exp(shifted).sum())
        logprobs.append(float(lp[int(token)]))
        greedy.append(int(np.argmax(lp)) == int(token))
        if top:
            ids = np.argpartition(-lp, top - 1)[:top] if top < len(lp) else np.arange(len(lp))
            ids = ids[np.argsort(-lp[ids], kind="stable")]
            best.append([(int(t), float(lp[t])) for t in ids])
    return Scored(logprobs, greedy, best if top else None)

"""Several generations in one llama.cpp decode: continuous batching over the low-level C API.

The high-level `llama_cpp.Llama` decodes one sequence at a time, which leaves most of a CPU's
matmul throughput unused for a small model: one decode of 16 sequences costs little more than one
of a single sequence. `BatchedGenerator` keeps `n_parallel` slots, each a KV-cache sequence with
its own sampler chain. A new prompt is prefilled in its own decode; then every step decodes one
token for each generating slot together, and a finished slot takes the next prompt from the queue.
A prompt that a running slot already holds is not prefilled again: its KV cells are copied from
that slot and its first token is sampled from the logits saved at that prefill (a sweep decodes
every prompt under several trials' parameters at once, so most prefills are shared).

Sampling mirrors `Llama.create_completion` (penalties, then greedy at temperature 0, else top-k,
top-p, min-p, temperature and a seeded draw), and the context is set up like `Llama`'s (no flash
attention), so a batch gives exactly the texts `chat()` gives for the same prompt, parameters and
seed, whatever else is in the batch. That rests on two batch shapes that were checked to give
bit-identical logits to decoding alone: one sequence's prompt per decode, and one token for each of
up to 64 sequences per decode. Mixing several prompts in one decode was measured to be both wrong
(llama.cpp 0.3.36 shifts logits by up to ~1.0 when prompts of unequal length share a decode) and
no faster on CPU, so it is not done. Bit-identical holds for the default Q4_1 model, which has no
batched kernel. Formats that llamafile's batched kernels take (f16, Q8_0, the Q5_0 inside this
model's Q4_K_M) sum a batch in another order than one sequence, so a text can drift from chat()'s
after a near-tie (bench/sweep.py sees it as small differences in objective values).
"""

from __future__ import annotations

import codecs
import ctypes
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import BackendError
from toolkit.params import DecodingParams
from toolkit.runtime.generation import Generation, per_item, run_jobs
from toolkit.runtime.native import NativeModel
from toolkit.runtime.tokenize import with_bos

Prompt = str | Sequence[int]

# The high-level Llama penalises repeats over its `last_n_tokens_size` (64); keep the same window
# so that repeat_penalty means the same thing in chat() and in a batch.
PENALTY_LAST_N = 64


@dataclass
class Completion:
    """A generation plus the completion tokens as sampled (the end-of-generation token excluded)."""

    generation: Generation
    tokens: list[int] = field(default_factory=list)


@dataclass
class Job:
    """One generation for `BatchedGenerator.stream`: `key` comes back with its Completion."""

    key: Hashable
    prompt: Prompt
    params: DecodingParams
    seed: int | None = None  # the sampler's seed; default: params.seed
    on_text: Callable[[str], None] | None = None  # called with each piece of text as it is final (a server streams it)


@dataclass
class _Slot:
    """One running sequence: its KV-cache sequence id, prompt, sampler and output so far."""

    seq_id: int
    job: Hashable
    prompt: list[int]
    params: DecodingParams
    sampler: object  # llama_sampler_p
    start: float
    n_past: int = 0  # tokens of this sequence already in the KV cache
    pending: int | None = None  # the last sampled token, to be decoded next step
    last_index: int = 0  # where this sequence's logits are in the last decoded batch
    tail: bytes = b""  # the last 3 bytes of the completion, and a countdown, for _inside_character
    multibyte_fix: int = 0
    first_logits: object = None  # numpy copy of the logits after the prompt, for slots that share it
    kv_from: int = 0  # the decode count from which this slot's prompt KV data is in place
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    on_text: Callable[[str], None] | None = None
    sent: int = 0  # characters of text passed to on_text so far
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("ignore"))

    @property
    def prefilling(self) -> bool:  # prompt tokens not yet in the KV cache
        return self.n_past < len(self.prompt)


class BatchedGenerator(NativeModel):
    """Generate many completions at once from one GGUF with continuous batching.

    Args:
        gguf: the model file (loaded with the CPU-safety probe of `toolkit.runtime.llamacpp`).
        n_ctx_per_seq: KV-cache room for each sequence: prompt + max_tokens must fit.
        n_parallel: sequences decoded together (slots); exactness checked up to 64.
        n_threads: CPU threads (default: all this process may use).
        n_batch: most prompt tokens in one prefill decode (longer prompts take several).
        lora: a GGUF LoRA applied to the model at scale 1, as `llamacpp.load(lora=...)` applies it.
    """

    def __init__(self, gguf: str | Path, *, n_ctx_per_seq: int = 1024, n_parallel: int = 16,
                 n_threads: int | None = None, n_batch: int = 512, lora: str | Path | None = None):
        import llama_cpp

        if not 1 <= n_parallel <= llama_cpp.llama_max_parallel_sequences():
            raise BackendError(f"n_parallel={n_parallel} is outside 1..{llama_cpp.llama_max_parallel_sequences()}")
        self.n_parallel = n_parallel
        self.n_ctx_per_seq = n_ctx_per_seq
        self.n_batch = max(n_batch, n_parallel)  # every generating slot must fit one decode
        self._load(gguf)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        # one KV stream per sequence (kv_unified off): attention never scans the others
        cparams = self._context_params(n_ctx=n_ctx_per_seq * n_parallel, n_seq_max=n_parallel, n_batch=self.n_batch,
                                       n_threads=n_threads, kv_unified=False)
        self._open_context(cparams, lora, fix="lower n_parallel or n_ctx_per_seq")
        self._pieces: dict[int, bytes] = {}
        self._decodes = 0  # llama_decode calls so far (when copied KV data is in place)
        # per free sequence: (prompt, logits after it) when its KV cache still holds that prompt
        self._kept: list[tuple[list[int], object] | None] = [None] * n_parallel
        self.prefills = self.shared_prefills = 0  # prompts prefilled, and prompts copied instead
        self.most_live = 0  # the most sequences decoded together in one step so far

    # -- tokens ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Prompt tokens for text (special tokens parsed, BOS as the GGUF asks and never twice:
        `toolkit.runtime.tokenize`), exactly as `LlamaCppBackend.prompt_tokens` tokenizes."""
        return with_bos(self._text_tokens(text), self._bos)

    def piece(self, token: int) -> bytes:
        """The bytes of one token as text (special tokens render as nothing, as in `Llama`)."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._token_piece(token, special=False)
        return cached

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "ignore")

    # -- generation --------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], params: DecodingParams | Sequence[DecodingParams],
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """One `Generation` per prompt (text or token list), in order; see `complete`."""
        return [c.generation for c in self.complete(prompts, params, seeds)]

    def complete(self, prompts: Sequence[Prompt], params: DecodingParams | Sequence[DecodingParams],
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        """Generate a completion for every prompt, `n_parallel` at a time.

        `params` is one set for all prompts or one per prompt (a sweep decodes several trials'
        settings together). `seeds[i]` seeds prompt i's sampler (default: its parameters' seed). A completion stops at
        an end-of-generation token or a stop string (both "stop"; the stop string is cut from the
        text) or after `params.max_tokens` tokens ("length"). `completion_tokens` counts the tokens
        sampled, the one that completed a stop string included, the end-of-generation token not.
        """
        self._check_open()
        each = per_item(params, len(prompts))
        seeds = list(seeds) if seeds is not None else [p.seed for p in each]
        if len(seeds) != len(prompts):
            raise BackendError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        tokenized = [self.tokenize(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        for i, toks in enumerate(tokenized):  # every prompt checked before any is decoded
            self._check_fits(i, toks, each[i])
        return run_jobs(self.stream, [Job(i, toks, p, seed) for i, (toks, p, seed) in enumerate(zip(tokenized, each, seeds))])

    def stream(self, next_job: Callable[[], Job | None],
               cancelled: Callable[[Hashable], bool] = lambda key: False) -> Iterator[tuple[Hashable, Completion]]:
        """Run jobs as `next_job()` hands them out (None: none for now), yielding (key, Completion)
        as each finishes, until no job is waiting and no slot is running.

        Jobs may appear between yields, and a running job whose key turns `cancelled` is dropped
        before the next step: a sweep starts a trial's next prompt chunk in otherwise idle slots
        and drops it if the trial is pruned.
        """
        self._check_open()
        slots: list[_Slot | None] = [None] * self.n_parallel
        finished: list[tuple[Hashable, Completion]] = []
        try:
            while True:
                for seq_id, slot in enumerate(slots):
                    if slot is not None and cancelled(slot.job):
                        self._release(slot)
                        slots[seq_id] = None
                free = [seq_id for seq_id, slot in enumerate(slots) if slot is None]
                while free and (job := next_job()) is not None:
                    slot = self._open(free, job)
                    slots[slot.seq_id] = slot
                fresh = [slot for slot in slots if slot is not None and slot.pending is None]
                for slot in fresh:  # new prompts: shared with a running slot, or prefilled alone
                    self._begin(slot, slots)
                    self._collect(slot, finished, slots)  # before the next prefill replaces the logits
                yield from finished
                finished.clear()
                live = [slot for slot in slots if slot is not None]
                if not live:
                    if fresh:  # all done at once; jobs queued during the yield are taken above
                        continue
                    return
                self.most_live = max(self.most_live, len(live))
                self._step(live)  # one token for every generating sequence, all in one decode
                for slot in live:
                    self._collect(slot, finished, slots)
                yield from finished
                finished.clear()
        finally:
            for slot in slots:  # an error (or a caller that stops early) must not leak samplers or KV
                if slot is not None:
                    self._release(slot)

    def _check_open(self) -> None:
        if self._ctx is None:
            raise BackendError("the batched generator is closed")

    def _open(self, free: list[int], job: Job) -> _Slot:
        """A slot for `job` (validated, its sampler seeded) on one of the `free` sequences (taken
        from the list): one whose KV cache still holds this prompt, else one holding none."""
        tokens = self.tokenize(job.prompt) if isinstance(job.prompt, str) else [int(t) for t in job.prompt]
        self._check_fits(job.key, tokens, job.params)
        seq_id = next((i for i in free if self._kept[i] is not None and self._kept[i][0] == tokens),
                      next((i for i in free if self._kept[i] is None), free[0]))
        free.remove(seq_id)
        # the seed goes through DecodingParams so it is validated like any other
        params = job.params if job.seed is None else job.params.replace(seed=job.seed)
        return _Slot(seq_id, job.key, tokens, params, self._sampler(params), time.perf_counter(), on_text=job.on_text)

    def _check_fits(self, i: Hashable, tokens: list[int], params: DecodingParams) -> None:
        if not tokens:
            raise BackendError(f"prompt {i} is empty", fix="give every prompt some text")
        if len(tokens) + params.max_tokens > self.n_ctx_per_seq:
            raise BackendError(f"prompt {i} ({len(tokens)} tokens) + max_tokens ({params.max_tokens}) exceed the "
                               f"context per sequence ({self.n_ctx_per_seq})",
                               fix="shorten the prompt, lower max_tokens or raise n_ctx_per_seq")

    def _sampler(self, params: DecodingParams):
        """A sampler chain in the same order as `Llama._init_sampler` (its first link, the repeat
        penalty, is `_penalize`), seeded for this sequence."""
        import llama_cpp

        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        chain = llama_cpp.llama_sampler_chain_init(chain_params)
        add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731
        # the chain starts with the repeat penalty, applied in _penalize (llama.cpp's penalties
        # sampler scans the whole vocabulary: 0.29 of 0.34 ms per token here)
        if params.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            # Llama also adds typical_p=1.0 here, which llama.cpp skips as a no-op
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            add(llama_cpp.llama_sampler_init_dist(params.seed))
        return chain

    def _begin(self, slot: _Slot, slots: list[_Slot | None]) -> None:
        """Put a new slot's prompt in the KV cache: still there from this sequence's last job,
        copied from another sequence that holds it, or else prefilled."""
        import llama_cpp

        kept, self._kept[slot.seq_id] = self._kept[slot.seq_id], None
        if kept is not None and kept[0] == slot.prompt:
            self._shared(slot, kept[1], kv_from=self._decodes)
            return
        if kept is not None:  # another prompt's cells
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        source = self._holder(slot, slots)
        if source is None:
            self._prefill(slot)
            slot.first_logits = self._logits(slot.last_index).copy()
            slot.kv_from = self._decodes
            return
        # Each sequence has its own KV stream: llama.cpp copies the source's whole stream at the
        # start of the next decode (before it computes anything, so a source prefilled with
        # another prompt in that decode is copied first); tokens past the prompt are dropped here.
        llama_cpp.llama_memory_seq_cp(self._mem, source[0], slot.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, len(slot.prompt), -1)
        self._shared(slot, source[1], kv_from=self._decodes + 1)  # a copy of a copy only once the data is there

    def _shared(self, slot: _Slot, first_logits, *, kv_from: int) -> None:
        """The slot's prompt is in its KV cells without a prefill; its first token comes from the
        logits saved when that prompt was prefilled."""
        slot.n_past, slot.last_index = len(slot.prompt), -1  # -1: sample from first_logits
        slot.first_logits, slot.kv_from = first_logits, kv_from
        self.shared_prefills += 1

    def _holder(self, slot: _Slot, slots: list[_Slot | None]) -> tuple[int, object] | None:
        """(sequence id, logits after the prompt) of another sequence whose KV holds slot's prompt."""
        for other in slots:
            if (other is not None and other is not slot and other.first_logits is not None
                    and other.kv_from <= self._decodes and other.prompt == slot.prompt):
                return other.seq_id, other.first_logits
        for seq_id, kept in enumerate(self._kept):
            if kept is not None and kept[0] == slot.prompt:
                return seq_id, kept[1]
        return None

    def _logits(self, index: int):
        """The logits at batch position `index` of the last decode, as a writable numpy view."""
        import llama_cpp
        import numpy as np

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))

    def _sample_saved(self, slot: _Slot) -> int:
        """What `llama_sampler_sample` does, on saved logits: apply the chain, accept the choice."""
        import llama_cpp
        import numpy as np

        cur = np.empty(self._n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        cur["id"] = np.arange(self._n_vocab, dtype=np.int32)
        cur["logit"] = slot.first_logits
        cur["p"] = 0.0
        array = llama_cpp.llama_token_data_array(cur.ctypes.data_as(llama_cpp.llama_token_data_p), self._n_vocab, -1, False)
        llama_cpp.llama_sampler_apply(slot.sampler, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise BackendError(f"the sampler selected no token ({array.selected})")
        token = array.data[array.selected].id
        llama_cpp.llama_sampler_accept(slot.sampler, token)
        return token

    def _prefill(self, slot: _Slot) -> None:
        """Decode one slot's whole prompt, in chunks of n_batch, with logits for its last token.

        Never together with other sequences: llama.cpp (0.3.36 here) computes wrong logits, off by
        up to ~1.0, when one decode holds prompt chunks of several sequences of unequal lengths
        (it splits them into ubatches internally). One sequence per prefill decode is exact and, on
        CPU, no slower: a prompt of ~40 tokens already keeps the matrix kernels busy.
        """
        self.prefills += 1
        while slot.prefilling:
            take = min(len(slot.prompt) - slot.n_past, self.n_batch)
            for i in range(take):
                pos = slot.n_past + i
                self._put(i, slot.prompt[pos], pos, slot.seq_id, pos == len(slot.prompt) - 1)
            self._batch.n_tokens = take
            self._decode()
            slot.n_past += take
        slot.last_index = self._batch.n_tokens - 1

    def mixed_prefill_exact(self, first: Sequence[int], second: Sequence[int]) -> bool:
        """Whether one decode of two prompts of unequal length gives `first` the same last logits,
        bit for bit, as decoding `first` alone, on this machine (it depends on the CPU's kernels:
        exact on an AVX2-only VM, wrong on AVX-512 ones). `_prefill` never mixes prompts either way
        (measured no faster); bench/prefill.py measures both and reports it. Clears the KV
        cache: call between generations, from the thread that uses this generator."""
        import llama_cpp
        import numpy as np

        self._check_open()

        def last_logits(seqs: list[tuple[int, Sequence[int]]]):
            llama_cpp.llama_memory_clear(self._mem, True)
            n = 0
            for seq_id, tokens in seqs:
                for pos, token in enumerate(tokens):
                    self._put(n, token, pos, seq_id, seq_id == 0 and pos == len(tokens) - 1)
                    n += 1
            self._batch.n_tokens = n
            self._decode()
            return self._logits(len(first) - 1).copy()

        try:
            return bool(np.array_equal(last_logits([(0, first)]), last_logits([(0, first), (1, second)])))
        finally:
            llama_cpp.llama_memory_clear(self._mem, True)
            self._kept = [None] * self.n_parallel  # no prompt is cached any more

    def _step(self, live: list[_Slot]) -> None:
        """One decode with exactly one token per generating sequence (batch index = list index);
        this shape gives bit-identical logits to decoding each sequence alone."""
        for i, slot in enumerate(live):
            self._put(i, slot.pending, slot.n_past, slot.seq_id, True)
            slot.n_past += 1
            slot.last_index = i
        self._batch.n_tokens = len(live)
        self._decode()

    def _collect(self, slot: _Slot, finished: list, slots: list) -> None:
        """Sample the slot's next token from its logits; retire the slot if it finished."""
        done = self._advance(slot, slot.last_index)
        if done is not None:
            finished.append((slot.job, done))
            self._release(slot)
            slots[slot.seq_id] = None

    def _decode(self) -> None:
        import llama_cpp

        status = llama_cpp.llama_decode(self._ctx, self._batch)
        self._decodes += 1
        if status != 0:  # 1: no KV room (prevented by _check_fits), 2: aborted, <0: error
            raise BackendError(f"llama_decode failed with status {status} on a batch of {self._batch.n_tokens} tokens")

    def _advance(self, slot: _Slot, index: int) -> Completion | None:
        """Sample the slot's next token from batch position `index`; its Completion if finished."""
        import llama_cpp

        if index < 0:  # the first token of a shared prompt: nothing sampled yet, nothing to penalise
            token = self._sample_saved(slot)
        else:
            self._penalize(slot, index)
            token = llama_cpp.llama_sampler_sample(slot.sampler, self._ctx, index)
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return self._finish(slot, "stop", slot.text + slot.decoder.decode(b"", final=True))
        slot.tokens.append(token)
        piece = self.piece(token)
        before = len(slot.text)
        slot.text += slot.decoder.decode(piece)
        slot.pending = token
        if _inside_character(slot, piece) and len(slot.prompt) + len(slot.tokens) < self.n_ctx_per_seq:
            return None
        cut = _find_stop(slot.text, slot.params.stop, before)
        if cut is not None:
            return self._finish(slot, "stop", slot.text[:cut])
        if len(slot.tokens) >= slot.params.max_tokens:
            return self._finish(slot, "length", slot.text + slot.decoder.decode(b"", final=True))
        if slot.on_text is not None:  # hold back what a stop string may still claim
            self._send(slot, len(slot.text) - max(map(len, slot.params.stop), default=1) + 1)
        return None

    @staticmethod
    def _send(slot: _Slot, upto: int) -> None:
        if upto > slot.sent:
            slot.on_text(slot.text[slot.sent:upto])
            slot.sent = upto

    def _penalize(self, slot: _Slot, index: int) -> None:
        """llama.cpp's penalties sampler as `Llama` configures it (repeat penalty over the last
        PENALTY_LAST_N sampled tokens, no frequency or presence penalty), on the logits in place:
        a logit <= 0 is multiplied by the penalty, a positive one divided, in float32 as in C."""
        if slot.params.repeat_penalty == 1.0 or not slot.tokens:
            return
        import numpy as np

        logits = self._logits(index)
        ids = np.fromiter(set(slot.tokens[-PENALTY_LAST_N:]), dtype=np.int64)
        values = logits[ids]
        penalty = np.float32(slot.params.repeat_penalty)
        logits[ids] = np.where(values <= 0, values * penalty, values / penalty)

    def _finish(self, slot: _Slot, reason: str, text: str) -> Completion:
        if slot.on_text is not None:
            slot.text = text
            self._send(slot, len(text))
        seconds = time.perf_counter() - slot.start
        return Completion(Generation(text, reason, len(slot.prompt), len(slot.tokens), seconds), slot.tokens)

    def _release(self, slot: _Slot) -> None:
        """Free the slot's sampler and its generated tokens' KV cells so the sequence can be reused."""
        import llama_cpp

        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
            slot.sampler = None
        if slot.first_logits is not None and slot.kv_from <= self._decodes:
            # keep the prompt's cells: the sequence's next job may have the same prompt (a sweep
            # runs every prompt under many trials' parameters)
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, len(slot.prompt), -1)
            self._kept[slot.seq_id] = (slot.prompt, slot.first_logits)
        else:
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            self._kept[slot.seq_id] = None


def _inside_character(slot: _Slot, piece: bytes) -> bool:
    """Whether to skip the stop and max_tokens checks after this token, exactly as
    `Llama.create_completion` does while the text may end inside a multi-byte UTF-8 character (so a
    reply can run a token or two past max_tokens to finish an emoji, in chat() and here alike)."""
    slot.tail = (slot.tail + piece)[-3:]
    for at, byte in enumerate(slot.tail):  # Llama's test, kept as is: it counts from the 3rd-last byte
        k = 3 - at
        for num, pattern in ((2, 192), (3, 224), (4, 240)):
            if num > k and pattern & byte == pattern:
                slot.multibyte_fix = num - k
    if slot.multibyte_fix > 0:
        slot.multibyte_fix -= 1
        return True
    return False


def _find_stop(text: str, stops: Sequence[str], checked: int) -> int | None:
    """Where the earliest stop string starts in `text`, looking only where new text could complete
    one (everything before `checked` was already searched); None if there is none."""
    best = None
    for stop in stops:
        at = text.find(stop, max(0, checked - len(stop) + 1))
        if at >= 0 and (best is None or at < best):
            best = at
    return best

"""The harness's `LM` for a GGUF scored in process by llama.cpp, and the request cache of every model.

`GGUFLM` is registered with lm-evaluation-harness as `toolkit-gguf`. It is the harness's own
`TemplateLM`: context and continuation are tokenized by the harness's rule (`_encode_pair`: the
pair tokenized together, the context's own tokens cut off the front, trailing spaces of the context
moved to the continuation; an empty context scored after BOS, else EOS), with the GGUF's
tokenizer and its BOS rule (`toolkit.runtime.tokenize`); long inputs are cut from the left at
`max_length` as the `hf` model cuts them. Requests that share their context tokens (a
multiple-choice item's choices) are scored together: the context is prefilled once, and many
items' tokens share each decode (`toolkit.runtime.scoring.Scorer.score_many`).

`RequestCache` keeps every answer in SQLite, keyed by the model's identity (the GGUF's digest and
its LoRA's) and the request, written as each item finishes: a run killed mid-way repeats no scored
request. `CachedLM` puts the same cache in front of any other harness model (`hf`, `local-completions`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from toolkit.runtime.llamacpp import read_metadata
from toolkit.runtime.scoring import Scorer

Progress = Callable[..., None]  # (requests just finished, total=N when a new batch of N starts)


class RequestCache:
    """Answers of (model identity, request kind, request arguments) in one SQLite file."""

    def __init__(self, path: Path, model_id: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.model_id = model_id
        self.hits = self.misses = 0

    def key(self, kind: str, args: Sequence[Any]) -> str:
        blob = json.dumps({"model": self.model_id, "kind": kind, "args": list(args)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        row = self._db.execute("SELECT value FROM requests WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_many(self, items: Sequence[tuple[str, Any]]) -> None:
        with self._db:  # one transaction per item: an interrupted run keeps every item it finished
            self._db.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items])

    def close(self) -> None:
        self._db.close()


def _lm_base():
    from lm_eval.api.model import TemplateLM

    return TemplateLM


def gguf_lm_class():
    """The `GGUFLM` class, built on first use so that importing this module stays light (lm_eval
    pulls in torch and datasets)."""
    if "GGUFLM" in _classes:
        return _classes["GGUFLM"]
    from lm_eval.api.registry import register_model

    @register_model("toolkit-gguf")
    class GGUFLM(_lm_base()):
        """A GGUF (plus a GGUF LoRA) scored in process by llama.cpp; see the module docstring.

        `create_from_arg_string("gguf=PATH,lora=PATH,n_batch=512")` builds one from the harness CLI."""

        def __init__(self, gguf: str, lora: str | None = None, n_batch: int = 512, n_threads: int | None = None,
                     max_length: int | None = None, cache: RequestCache | None = None, **_: Any):
            super().__init__()

            meta = read_metadata(gguf)  # the trained context, as the `hf` model takes max_position_embeddings
            trained = int(meta.get(f"{meta.get('general.architecture', '')}.context_length", "") or 8192)
            length = min(trained, int(max_length or 8192))
            self.scorer = Scorer(gguf, lora=lora, n_ctx=length, n_batch=int(n_batch), n_threads=n_threads)
            self._max_length = length  # the harness's input (context + continuation but its last token) fits
            self.cache = cache
            self.progress: Progress | None = None
            self.naive_tokens = 0  # tokens the requests hold, each scored alone (the scorer counts what it decodes)

        # -- the TemplateLM contract ---------------------------------------------------------

        @property
        def eot_token_id(self) -> int:
            return self.scorer.eos if self.scorer.eos is not None else 0

        @property
        def prefix_token_id(self) -> int:
            bos = self.scorer.bos
            return bos if bos is not None else self.eot_token_id

        @property
        def max_length(self) -> int:
            return self._max_length

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            """The GGUF's tokens; BOS by its rule unless `add_special_tokens=False` (as `hf` reads it)."""
            return self.scorer.tokenize(string, add_bos=False if add_special_tokens is False else None)

        def tok_decode(self, tokens: Sequence[int]) -> str:
            return self.scorer.detokenize(tokens)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
            """(log-probability, is greedy) per (strings, context tokens, continuation tokens): requests
            sharing a context are one item, all items scored in one packed run of the scorer, each
            item's answers cached as soon as it is scored."""
            if self.progress:
                self.progress(0, total=len(requests))
            inputs = [(strings, *self._truncated(list(context), list(continuation))) for strings, context, continuation in requests]
            self.naive_tokens += sum(len(c) + len(x) - 1 for _, c, x in inputs)  # what scoring each request alone decodes
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, (_, context, _) in enumerate(inputs):
                groups.setdefault(tuple(context), []).append(i)
            results: list[tuple[float, bool] | None] = [None] * len(requests)
            pending = []  # (context, members, key -> requests asking it) of the items not all cached
            for context, members in groups.items():
                todo = self._from_cache(inputs, members, results)
                if todo:
                    pending.append((context, members, todo))
                elif self.progress:
                    self.progress(len(members))
            items = ((list(context), [inputs[same[0]][2] for same in todo.values()]) for context, _, todo in pending)
            for (_, members, todo), scored in zip(pending, self.scorer.score_many(items)):
                for same, s in zip(todo.values(), scored):
                    for i in same:
                        results[i] = (s.total, s.is_greedy)
                if self.cache:
                    self.cache.put_many([(key, list(results[same[0]])) for key, same in todo.items()])
                if self.progress:
                    self.progress(len(members))
            return results  # type: ignore[return-value]

        def _from_cache(self, inputs, members: list[int], results: list) -> dict[str, list[int]]:
            """Fill `results` of the cached requests among `members`; the rest by key (two tasks may share items)."""
            todo: dict[str, list[int]] = {}
            for i in members:
                key = self._key("loglikelihood", inputs[i])
                cached = self.cache.get(key) if self.cache else None
                if cached is not None:
                    results[i] = (float(cached[0]), bool(cached[1]))
                else:
                    todo.setdefault(key, []).append(i)
            return todo

        def _truncated(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
            """The `hf` model's left cut: context + continuation to max_length + 1 tokens."""
            whole = (context + continuation)[-(self.max_length + 1):]
            return whole[:-len(continuation)], continuation

        def _key(self, kind: str, request) -> str:
            strings, context, continuation = request
            # the token ids are the request: the strings alone would not say how they were split
            args = [list(context), list(continuation)]
            return self.cache.key(kind, args) if self.cache else json.dumps(args)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            """Perplexity tasks: disjoint windows of max_length tokens, as the `hf` model rolls them."""
            from lm_eval import utils

            out, progress, self.progress = [], self.progress, None  # windows are not the requests counted
            for request in requests:
                (string,) = request.args
                windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1))
                scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
                out.append(sum(s for s, _ in scored))
                if progress:
                    progress(1)
            self.progress = progress
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            """Greedy generation up to the request's `until` strings or `max_gen_toks` tokens."""
            out = []
            if self.progress:
                self.progress(0, total=len(requests))
            for request in requests:
                context, kwargs = request.args
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                limit = int(kwargs.get("max_gen_toks", 256))
                tokens = self.tok_encode(context)[-(self.max_length - limit):]
                text = self.scorer.greedy(tokens, limit, stop=lambda t, until=until: any(u in t for u in until))
                for u in until:
                    text = text.split(u)[0]
                out.append(text)
                if self.progress:
                    self.progress(1)
            return out

        def get_model_info(self) -> dict:
            return {"model_gguf": str(self.scorer.gguf), "adds_bos": self.scorer.adds_bos}

    _classes["GGUFLM"] = GGUFLM
    return GGUFLM


_classes: dict[str, type] = {}


def cached_lm(lm, cache: RequestCache, progress: Progress | None = None):
    """Any harness LM behind the request cache: each request answered from the cache or the model,
    new answers written in chunks of 64 requests (the model runs its own batching within a chunk)."""
    from lm_eval.api.model import LM

    class CachedLM(LM):
        def __init__(self):
            super().__init__()
            self.inner = lm

        def _run(self, kind: str, requests) -> list:
            keys = [cache.key(kind, r.args) for r in requests]
            results = [cache.get(k) for k in keys]
            todo = [i for i, r in enumerate(results) if r is None]
            if progress:
                progress(len(requests) - len(todo), total=len(requests))
            for start in range(0, len(todo), 64):
                chunk = todo[start:start + 64]
                answers = getattr(self.inner, kind)([requests[i] for i in chunk])
                for i, answer in zip(chunk, answers):
                    results[i] = list(answer) if isinstance(answer, tuple) else answer
                cache.put_many([(keys[i], results[i]) for i in chunk])
                if progress:
                    progress(len(chunk))
            return [tuple(r) if isinstance(r, list) else r for r in results]

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._run("loglikelihood", requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._run("loglikelihood_rolling", requests)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._run("generate_until", requests)

        def __getattr__(self, name: str):
            if name == "inner":
                raise AttributeError(name)
            return getattr(self.inner, name)

    return CachedLM()


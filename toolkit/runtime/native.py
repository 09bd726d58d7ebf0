"""A GGUF held through llama.cpp's C API: what the batched generator (`batched.py`) and the scorer
(`scoring.py`) share. Loading it safely on this CPU, one context with an optional LoRA at scale 1,
one token batch, tokenizing by the BOS rule, and freeing it all.

Not thread-safe: the one object that owns the model calls it (the serve compute thread, a sweep,
a benchmark run).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

from toolkit.errors import BackendError, ModelError
from toolkit.runtime.llamacpp import default_threads, probe_extra_bufts, quiet_logs
from toolkit.runtime.tokenize import bos_to_add


class NativeModel:
    """Base of the C-API users: `_load`, then `_open_context`; `close()` (or `with`) frees everything."""

    _model = _ctx = _batch = None  # close() and __del__ work whatever fails while loading

    def _load(self, gguf: str | Path) -> None:
        """Load the model (quantized kernels as this CPU allows: see llamacpp.py) and its vocabulary."""
        import llama_cpp
        from llama_cpp._logger import set_verbose

        self.gguf = Path(gguf)
        if not self.gguf.exists():
            raise ModelError(f"GGUF file {self.gguf} does not exist", fix="check the path or run `toolkit export`")
        set_verbose(False)  # llama.cpp's load chatter goes through this logger
        quiet_logs()  # ...and this callback, which shows it only with --verbose
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        # Never assume: quantized kernels in the extra buffer types crash on some CPUs (see llamacpp.py)
        mparams.use_extra_bufts = probe_extra_bufts()["extra_bufts"]
        self._model = llama_cpp.llama_model_load_from_file(str(self.gguf).encode(), mparams)
        if not self._model:
            raise ModelError(f"llama.cpp cannot load {self.gguf}", fix="is it a complete GGUF file?")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._bos = bos_to_add(self._vocab)  # what every text prompt starts with (toolkit.runtime.tokenize)

    @staticmethod
    def _context_params(*, n_ctx: int, n_seq_max: int, n_batch: int, n_threads: int | None, kv_unified: bool):
        import llama_cpp

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_seq_max = n_seq_max
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_threads = cparams.n_threads_batch = n_threads or default_threads()
        cparams.kv_unified = kv_unified
        # Llama() runs without flash attention; llama.cpp's "auto" turns it on for CPU, and its
        # different summation order makes texts drift from chat(). Off, a batch reproduces chat().
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.no_perf = True
        return cparams

    def _open_context(self, cparams, lora: str | Path | None, fix: str, seqs_per_token: int = 1) -> None:
        """Create the context (`fix` says what to lower when it cannot be), set the LoRA, make the
        batch (each token in up to `seqs_per_token` sequences)."""
        import llama_cpp

        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise BackendError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {self.gguf}", fix=fix)
        if lora is not None:
            self._apply_lora(Path(lora))
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(cparams.n_batch, 0, seqs_per_token)

    def _apply_lora(self, lora: Path) -> None:
        """Load a GGUF LoRA for this model and set it on the context, as `Llama(lora_path=)` does.
        The adapter belongs to the model: llama.cpp frees it with the model (close())."""
        import llama_cpp

        adapter = llama_cpp.llama_adapter_lora_init(self._model, str(lora).encode()) if lora.exists() else None
        if not adapter:
            self.close()
            raise ModelError(f"llama.cpp cannot load LoRA {lora} for {self.gguf}", fix="is the LoRA exported for this base GGUF?")
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
        if llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
            self.close()
            raise BackendError(f"llama.cpp could not apply LoRA {lora} to {self.gguf}")

    def _text_tokens(self, text: str) -> list[int]:
        """Token ids of `text` with special-token text read as those tokens, and no BOS added."""
        import llama_cpp

        data = text.encode()
        size = len(data) + 8
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, size, False, True)
        if n < 0:  # cannot happen with one token per byte of room, but never read past the buffer
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, -n, False, True)
        return buf[:n]

    def _token_piece(self, token: int, special: bool) -> bytes:
        """The bytes of one token; `special` renders special tokens as their text instead of nothing."""
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def _put(self, n: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        """Token `n` of the batch in one sequence."""
        self._put_seqs(n, token, pos, (seq_id,), logits)

    def _put_seqs(self, n: int, token: int, pos: int, seqs: Sequence[int], logits: bool) -> None:
        """Token `n` of the batch in every sequence of `seqs` (the scorer: a context shared by its choices)."""
        batch = self._batch
        batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, pos, len(seqs), logits
        for i, seq in enumerate(seqs):
            batch.seq_id[n][i] = seq

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Free the batch, context and model (safe to call twice)."""
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the bindings may already be gone
            pass

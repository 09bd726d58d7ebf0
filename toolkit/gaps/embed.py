"""Sentence embeddings of title + abstract, cached on disk by content hash.

`minilm` (the embedded all-MiniLM-L6-v2) or any local HF encoder directory gives mean-pooled,
L2-normalised sentence embeddings, computed in length-sorted batches with a progress bar. Each
batch is committed to an SQLite cache keyed by (encoder digest, sha256 of the text) as soon as it
is done, so a re-run, a grown corpus or a run interrupted half-way embeds only what is missing.

`words` is a model-free encoder (hashed word counts, log-scaled, randomly projected to 256
dimensions; no state learned from the corpus, so no leak across a backtest split): seconds for
thousands of abstracts, meant for quick looks, tests and benchmarks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toolkit.errors import ModelError
from toolkit.io import toolkit_home
from toolkit.models import file_digest, scorer_path

MAX_TOKENS = 256  # all-MiniLM-L6-v2's sentence-transformers max_seq_length
WORDS_DIM = 256


class EmbeddingCache:
    """Vectors keyed by (encoder id, text hash) in one SQLite file; every `put` is committed."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (encoder TEXT, key TEXT, vec BLOB, PRIMARY KEY (encoder, key))")

    def get_many(self, encoder: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):  # SQLite limits the number of bound parameters
            chunk = unique[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, vec FROM vectors WHERE encoder = ? AND key IN ({marks})", (encoder, *chunk))
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, encoder: str, items: dict[str, np.ndarray]) -> None:
        with self._db:  # one transaction per batch: an interrupted run keeps every finished batch
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                                 [(encoder, k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])

    def close(self) -> None:
        self._db.close()


class WordsEncoder:
    """Hashed log word counts projected to `WORDS_DIM` dims by a fixed seeded random projection."""

    def __init__(self):
        self.id = f"words-v1-{WORDS_DIM}"
        self.batch_size = 4096

    def encode(self, texts: list[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import HashingVectorizer

        hashed = HashingVectorizer(n_features=2**18, stop_words="english", alternate_sign=False, norm=None).transform(texts)
        hashed.data = np.log1p(hashed.data)
        used = np.unique(hashed.indices)  # project only the columns these texts use
        dense = np.asarray(hashed[:, used] @ _signs(used, WORDS_DIM), dtype=np.float32)
        return _unit(dense)


def _signs(columns: np.ndarray, dim: int) -> np.ndarray:
    """A fixed +-1/sqrt(dim) projection row per hashed column, from a hash of (column, dimension),
    so it is the same in every run without holding a 2^18 x dim matrix."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose (splitmix64 mixing)
        x = columns.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15) + np.arange(dim, dtype=np.uint64)[None, :] * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(31)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(29)
    return np.where(x & np.uint64(1), 1.0, -1.0).astype(np.float32) / np.sqrt(dim)


class HFEncoder:
    """Mean-pooled token embeddings of a local HF encoder (default: the embedded MiniLM)."""

    def __init__(self, spec: str = "minilm", batch_size: int = 32, max_tokens: int = MAX_TOKENS):
        self.path, _ = scorer_path(spec)
        weights = sorted(self.path.glob("*.safetensors")) or sorted(self.path.glob("*.bin"))
        if not weights:
            raise ModelError(f"{self.path} has no weights (*.safetensors or *.bin)", fix="pass a complete encoder directory")
        self.id = f"hf-{file_digest(weights[0])[:16]}-{max_tokens}-mean"
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._model = self._tok = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(self.path))
        self._model = AutoModel.from_pretrained(str(self.path)).eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        self._load()
        batch = self._tok(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return _unit(pooled.float().numpy())


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


def open_encoder(spec: str = "minilm", batch_size: int = 32):
    """`words` (model-free) or an HF encoder: `minilm` or a local directory with config.json."""
    if spec == "words":
        return WordsEncoder()
    return HFEncoder(spec, batch_size=batch_size)


def embed_texts(texts: list[str], keys: list[str], encoder, cache: EmbeddingCache | None,
                description: str = "embed abstracts") -> tuple[np.ndarray, int]:
    """Embeddings of `texts` (one row each) and how many were computed (not found in `cache`).

    Missing texts are embedded in length-sorted batches (less padding) and each batch is stored
    in the cache as it finishes.
    """
    from toolkit.console import progress

    found = cache.get_many(encoder.id, keys) if cache is not None else {}
    missing = list(dict.fromkeys(k for k in keys if k not in found))
    if missing:
        text_of = dict(zip(keys, texts))
        order = sorted(missing, key=lambda k: len(text_of[k]), reverse=True)
        with progress() as bar:
            task = bar.add_task(description, total=len(order), info=f"{len(found)} cached")
            for i in range(0, len(order), encoder.batch_size):
                chunk = order[i : i + encoder.batch_size]
                vectors = encoder.encode([text_of[k] for k in chunk])
                batch = dict(zip(chunk, vectors))
                if cache is not None:
                    cache.put_many(encoder.id, batch)
                found.update(batch)
                bar.advance(task, len(chunk))
    return np.stack([found[k] for k in keys]).astype(np.float32), len(missing)


def embed_papers(papers: list, encoder, cache_path: Path | None = None) -> tuple[np.ndarray, int]:
    """Embed `Paper`s (title + abstract) with an encoder from `open_encoder`; the cache defaults to
    `$TOOLKIT_HOME/gaps/embeddings.sqlite` (the `words` encoder is not cached: it is instant)."""
    if isinstance(encoder, WordsEncoder):
        return embed_texts([p.text for p in papers], [p.key for p in papers], encoder, None)
    cache = EmbeddingCache(cache_path or toolkit_home() / "gaps" / "embeddings.sqlite")
    try:
        return embed_texts([p.text for p in papers], [p.key for p in papers], encoder, cache)
    finally:
        cache.close()

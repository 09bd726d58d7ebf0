"""The screens every generated pair passes before it is kept, each with one documented threshold.

- copies: a question at ROUGE-L F >= `ROUGE_MAX` to one the generator was shown (the template's
  example, the imitated pairs of its request) is dropped (command.py).
- length: question and answer separately, in tokens of the training tokenizer (data/tokens.py).
- near-duplicates: a question whose ROUGE-L F against a question already kept is above
  `ROUGE_MAX` (0.7, Self-Instruct's rule) is dropped. Up to `EXACT_BELOW` kept questions every one
  is checked; beyond that datasketch's MinHash LSH over word sets proposes the candidates (Jaccard
  `LSH_JACCARD`, well below what a ROUGE-L F of 0.7 implies) and ROUGE-L decides.
- leakage: a question at ROUGE-L F >= `ROUGE_MAX` or MiniLM cosine >= `COSINE_MAX` (0.9) to any
  question or reference of the user's real splits (train, validation, test) is dropped, so a test
  prompt never reaches training. Both thresholds can be tightened, never loosened (command.py).
- grounding (abstract seeds): an answer whose MiniLM similarity to its own abstract is not above
  its similarity to each of `GROUNDING_OTHERS` random other abstracts is dropped.

ROUGE-L is the `rouge_l` entry of evaluate/metrics.py; embeddings are gaps/embed.py's MiniLM,
cached by text in OUT/embeddings.sqlite.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from toolkit.data.readers import load_examples
from toolkit.errors import DataError
from toolkit.evaluate.metrics import MetricSuite

ROUGE_MAX = 0.7
COSINE_MAX = 0.9
EXACT_BELOW = 1000
LSH_JACCARD = 0.4
GROUNDING_OTHERS = 5
SPLITS = ("train", "validation", "test")
_WORD = re.compile(r"[a-z0-9]+")
Reason = tuple[str, str]  # (the reason counted in the drop table, the detail written to dropped.jsonl)


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class RougeIndex:
    """Texts to check new ones against by ROUGE-L F: all of them while few, else LSH candidates."""

    def __init__(self, exact_below: int = EXACT_BELOW):
        self.texts: list[str] = []
        self.exact_below = exact_below
        self._suite = MetricSuite()
        self._lsh = None

    def _minhash(self, text: str):
        from datasketch import MinHash

        m = MinHash(num_perm=128, seed=1)
        for w in words(text):
            m.update(w.encode())
        return m

    def add(self, text: str) -> None:
        self.texts.append(text)
        if self._lsh is None and len(self.texts) > self.exact_below:
            from datasketch import MinHashLSH

            self._lsh = MinHashLSH(threshold=LSH_JACCARD, num_perm=128)
            for i, t in enumerate(self.texts):
                self._lsh.insert(str(i), self._minhash(t))
        elif self._lsh is not None:
            self._lsh.insert(str(len(self.texts) - 1), self._minhash(text))

    def candidates(self, text: str) -> list[int]:
        if self._lsh is None:
            return list(range(len(self.texts)))
        return sorted(int(k) for k in self._lsh.query(self._minhash(text)))

    def nearest(self, text: str) -> tuple[float, int]:
        """The highest ROUGE-L F of `text` against the indexed texts (among the candidates) and its index (-1: none)."""
        found = self.candidates(text)
        if not found:
            return 0.0, -1
        scores = self.rouge(text, [self.texts[i] for i in found])
        best = max(range(len(found)), key=scores.__getitem__)
        return scores[best], found[best]

    def rouge(self, text: str, others: list[str]) -> list[float]:
        """ROUGE-L F of `text` against each of `others` (the `rouge_l` metric)."""
        return self._suite.score([text] * len(others), others, ("rouge_l",))["rouge_l"] if others else []


class Embedder:
    """MiniLM sentence embeddings (gaps/embed.py), cached by text hash in one SQLite file."""

    def __init__(self, cache_path: Path, spec: str = "minilm"):
        from toolkit.gaps.embed import EmbeddingCache, open_encoder

        self.encoder = open_encoder(spec)
        self.cache = EmbeddingCache(Path(cache_path))

    def __call__(self, texts: list[str], label: str = "embed"):
        from toolkit.gaps.embed import embed_texts

        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        vectors, _ = embed_texts(texts, keys, self.encoder, self.cache, label)
        return vectors

    def close(self) -> None:
        self.cache.close()


def read_splits(folder: Path) -> list[tuple[str, str]]:
    """(text, where) for every question and reference of the real splits in `folder`
    (train/validation/test in any format `train` reads: .jsonl, .json, .csv, .parquet)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("--against is not a folder", path=folder, fix="pass the folder `toolkit data build` wrote (train/validation/test)")
    files = [f for s in SPLITS for f in sorted(folder.glob(f"{s}.*")) if f.suffix in (".jsonl", ".json", ".csv", ".tsv", ".parquet")]
    if not files:
        raise DataError("no train/validation/test split here", path=folder, fix="pass the folder `toolkit data build` wrote")
    texts = []
    for f in files:
        for ex in load_examples(f):
            texts += [(t, f"{f.name}:{ex.id}") for t in (ex.prompt, ex.response) if t.strip()]
    return texts


class Leakage:
    """Questions too close to the real splits' questions or references (ROUGE-L or embedding cosine)."""

    def __init__(self, texts: list[tuple[str, str]], embed: Embedder | None, rouge_max: float = ROUGE_MAX,
                 cosine_max: float = COSINE_MAX, exact_below: int = EXACT_BELOW):
        self.where = [w for _, w in texts]
        self.rouge_max, self.cosine_max, self.embed = rouge_max, cosine_max, embed
        self.index = RougeIndex(exact_below)
        for t, _ in texts:
            self.index.add(t)
        self.vectors = embed([t for t, _ in texts], "embed the real splits") if embed is not None and texts else None

    def check(self, questions: list[str]) -> list[Reason | None]:
        """Per question the reason it leaks (naming the split row), or None."""
        reasons: list[Reason | None] = [None] * len(questions)
        for i, q in enumerate(questions):
            score, j = self.index.nearest(q)
            if j >= 0 and score >= self.rouge_max:
                reasons[i] = ("leakage", f"ROUGE-L {score:.2f} >= {self.rouge_max:g} to {self.where[j]}")
        if self.vectors is not None and questions:
            sims = self.embed(questions, "embed questions") @ self.vectors.T
            for i, row in enumerate(sims):
                j = int(row.argmax())
                if reasons[i] is None and row[j] >= self.cosine_max:
                    reasons[i] = ("leakage", f"cosine {row[j]:.2f} >= {self.cosine_max:g} to {self.where[j]}")
        return reasons


class Grounding:
    """Answers no closer to their own abstract than to random other abstracts."""

    def __init__(self, abstracts: dict[str, str], embed: Embedder, others: int = GROUNDING_OTHERS, seed: int = 0):
        self.ids = list(abstracts)
        self.row = {a: i for i, a in enumerate(self.ids)}
        self.vectors = embed([abstracts[a] for a in self.ids], "embed the abstracts")
        self.embed, self.others, self.seed = embed, others, seed

    def check(self, answers: list[str], abstract_ids: list[str], attempts: list[int]) -> list[Reason | None]:
        if not answers:
            return []
        sims = self.embed(answers, "embed answers") @ self.vectors.T
        reasons: list[Reason | None] = []
        for row, own, attempt in zip(sims, abstract_ids, attempts):
            pool = [a for a in self.ids if a != own]
            drawn = random.Random(f"{self.seed}\0{attempt}").sample(pool, min(self.others, len(pool)))
            mine, best = float(row[self.row[own]]), max((float(row[self.row[a]]) for a in drawn), default=-1.0)
            reasons.append(None if mine > best else ("ungrounded", f"similarity {mine:.2f} to its abstract <= {best:.2f} to another"))
        return reasons


def length_reasons(counter, questions: list[str], answers: list[str], bounds: dict[str, tuple[int, int]]) -> list[Reason | None]:
    """Per pair the length bound it breaks (question and answer counted separately), or None."""
    counts = {"question": counter(questions), "answer": counter(answers)}
    reasons: list[Reason | None] = [None] * len(questions)
    for part in ("question", "answer"):
        low, high = bounds[part]
        for i, n in enumerate(counts[part]):
            if reasons[i] is None and n < low:
                reasons[i] = (f"{part} too short", f"{n} < {low} tokens")
            elif reasons[i] is None and high and n > high:
                reasons[i] = (f"{part} too long", f"{n} > {high} tokens")
    return reasons

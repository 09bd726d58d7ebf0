"""BERTScore with a local encoder (the embedded all-MiniLM-L6-v2 by default).

`BertScorer` loads the encoder once and scores many (candidate, reference) batches; `bert_score`
accepts a local directory as `model_type` as long as `num_layers` is given explicitly.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DataError
from .models import DEFAULT_SCORER, scorer_path


@dataclass
class Scores:
    """Per-example BERTScore precision, recall and F1."""

    precision: list[float]
    recall: list[float]
    f1: list[float]

    def mean_f1(self) -> float:
        return statistics.fmean(self.f1) if self.f1 else float("nan")


class BertScorer:
    """A BERTScore scorer loaded once and reused.

    Args:
        model: `minilm` (embedded) or a local HF encoder directory.
        layer: which hidden layer to use; required for a directory other than the embedded one.
        idf: weight tokens by inverse document frequency over the references.
        baseline: a bert_score baseline TSV for rescaling (off by default: local encoders ship none).
        batch_size: sentences per forward pass.
    """

    def __init__(self, model: str | Path = DEFAULT_SCORER, layer: int | None = None, *, idf: bool = False,
                 baseline: str | Path | None = None, batch_size: int = 64):
        path, default_layer = scorer_path(model)
        self.layer = layer or default_layer
        if self.layer is None:
            raise ConfigError(f"scorer {model} needs an explicit layer", fix="pass --scorer-layer N (e.g. the encoder's last layer)")
        self.path = path
        self.idf = idf
        self.baseline = Path(baseline) if baseline else None
        self.batch_size = batch_size
        self._scorer = None
        self._idf_refs: tuple[str, ...] | None = None

    def _load(self, refs: list[str]):
        from bert_score import BERTScorer

        if self._scorer is None or (self.idf and tuple(refs) != self._idf_refs):
            self._scorer = BERTScorer(
                model_type=str(self.path), num_layers=self.layer, idf=self.idf,
                idf_sents=refs if self.idf else None, batch_size=self.batch_size, lang="en",
                rescale_with_baseline=self.baseline is not None,
                baseline_path=str(self.baseline) if self.baseline else None,
            )
            self._idf_refs = tuple(refs) if self.idf else None
        return self._scorer

    def score(self, candidates: list[str], references: list[str]) -> Scores:
        """Score each candidate against its reference."""
        if len(candidates) != len(references):
            raise DataError(f"{len(candidates)} candidates but {len(references)} references")
        if not candidates:
            return Scores([], [], [])
        p, r, f = self._load(list(references)).score(list(candidates), list(references), verbose=False)
        return Scores(p.tolist(), r.tolist(), f.tolist())

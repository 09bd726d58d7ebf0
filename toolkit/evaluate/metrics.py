"""Per-example text metrics: BERTScore (P/R/F1), ROUGE-L, sentence BLEU, and weighted mixes.

`MetricSuite` loads what it needs once and scores lists of (candidate, reference) pairs; the
sweep's objective and the comparison report both use it, so both measure the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toolkit.errors import ConfigError, DataError

METRICS = ("bertscore_f1", "bertscore_p", "bertscore_r", "rouge_l", "bleu")


@dataclass
class ScorerConfig:
    """Which BERTScore encoder to use.

    Attributes:
        model: `minilm` (embedded all-MiniLM-L6-v2) or a local HF encoder directory.
        layer: hidden layer for BERTScore (required for a directory other than minilm).
        idf: weight tokens by inverse document frequency over the references.
        baseline: a bert_score baseline TSV to rescale with (none ships for local encoders).
    """

    model: str = "minilm"
    layer: int | None = None
    idf: bool = False
    baseline: str | None = None


@dataclass
class MetricSuite:
    """Scores candidates against references with the named metrics, loading each scorer once."""

    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    _bert: object = None
    _rouge: object = None

    def score(self, candidates: list[str], references: list[str], names: tuple[str, ...] = METRICS) -> dict[str, list[float]]:
        """Per-example scores for each metric name (values in [0, 1])."""
        if len(candidates) != len(references):
            raise DataError(f"{len(candidates)} candidates but {len(references)} references")
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metric {unknown[0]!r}", fix=f"use one of {', '.join(METRICS)}")
        result: dict[str, list[float]] = {}
        if any(n.startswith("bertscore") for n in names):
            s = self._bertscorer().score(candidates, references)
            result.update(bertscore_p=s.precision, bertscore_r=s.recall, bertscore_f1=s.f1)
        if "rouge_l" in names:
            result["rouge_l"] = [self._rouge_scorer().score(r, c)["rougeL"].fmeasure for c, r in zip(candidates, references)]
        if "bleu" in names:
            from sacrebleu.metrics import BLEU

            bleu = BLEU(effective_order=True)
            result["bleu"] = [bleu.sentence_score(c, [r]).score / 100 for c, r in zip(candidates, references)]
        return {n: result[n] for n in names}

    def _bertscorer(self):
        if self._bert is None:
            from toolkit.evaluate.scoring import BertScorer

            self._bert = BertScorer(self.scorer.model, self.scorer.layer, idf=self.scorer.idf, baseline=self.scorer.baseline)
        return self._bert

    def _rouge_scorer(self):
        if self._rouge is None:
            from rouge_score import rouge_scorer

            self._rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        return self._rouge


def parse_objective(spec) -> dict[str, float]:
    """A metric name or a {metric: weight} mix -> weights (normalised to sum 1)."""
    weights = {spec: 1.0} if isinstance(spec, str) else dict(spec or {})
    if not weights:
        raise ConfigError("metric is empty", fix=f"use one of {', '.join(METRICS)} or a mapping of them to weights")
    for name, w in weights.items():
        if name not in METRICS:
            raise ConfigError(f"unknown metric {name!r}", fix=f"use one of {', '.join(METRICS)}")
        if not isinstance(w, (int, float)) or w < 0:
            raise ConfigError(f"metric weight for {name} must be a non-negative number, got {w!r}")
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError("metric weights sum to zero")
    return {k: v / total for k, v in weights.items()}


def objective_scores(scores: dict[str, list[float]], weights: dict[str, float]) -> list[float]:
    """Per-example weighted objective."""
    n = len(next(iter(scores.values())))
    return [sum(w * scores[m][i] for m, w in weights.items()) for i in range(n)]

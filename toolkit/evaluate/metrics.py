"""Per-example text metrics: the `METRICS` table (BERTScore P/R/F1, ROUGE-L, sentence BLEU) and
weighted mixes of them as a sweep's objective.

A metric is one `Metric` entry: name, label, scorer, range and direction. `MetricSuite` runs the
scorers on lists of (candidate, reference) pairs, loading each scorer's model once. The sweep's
objective, compare's results, tables, plots and report, and the rating plan and human-agreement
figures all read the table, so a metric added to it (in this file, or with `register`) is scored,
swept and reported everywhere by its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.scoring import BertScorer


@dataclass(frozen=True)
class Metric:
    """One per-example metric.

    Attributes:
        name: its key in results.json, sweep files (`metric:`) and objective mixes.
        label: how tables, plots and reports name it.
        scorer: (suite, candidates, references) -> one score per pair. `suite.loaded` keeps a model
            between calls; `suite.shared` runs a computation several metrics read (BERTScore's P,
            R and F1) once per `MetricSuite.score` call.
        range: the (low, high) scale of a score; a lower-is-better metric enters a sweep's objective
            as low + high - score, so every objective is maximised.
        higher_is_better: the direction of a better score: win rates, compare's verdict, the
            human-agreement figure and the sweep's objective read it.
        short: a shorter label where space is tight (the score beside each generation); defaults to `label`.
        shown: in compare's terminal table and box plots (results.json and the report's tables list every metric).
    """

    name: str
    label: str
    scorer: Callable[[MetricSuite, list[str], list[str]], list[float]]
    range: tuple[float, float] = (0.0, 1.0)
    higher_is_better: bool = True
    short: str = ""
    shown: bool = True

    @property
    def brief(self) -> str:
        return self.short or self.label

    def better(self, a: float, b: float) -> bool:
        """Whether score `b` is strictly better than score `a`."""
        return b > a if self.higher_is_better else b < a

    def oriented(self, value: float) -> float:
        """`value` on a higher-is-better scale within `range` (itself when higher is better)."""
        return value if self.higher_is_better else self.range[0] + self.range[1] - value


def _bertscore(suite: MetricSuite, candidates: list[str], references: list[str]):
    """BERTScore's precision, recall and F1 of the pairs, computed once per `score` call."""
    def run():
        cfg = suite.scorer
        bert = suite.loaded("bertscore", lambda: BertScorer(cfg.model, cfg.layer, idf=cfg.idf, baseline=cfg.baseline))
        return bert.score(candidates, references)

    return suite.shared("bertscore", run)


def _rouge_l(suite: MetricSuite, candidates: list[str], references: list[str]) -> list[float]:
    def load():
        from rouge_score import rouge_scorer

        return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    rouge = suite.loaded("rouge_l", load)
    return [rouge.score(r, c)["rougeL"].fmeasure for c, r in zip(candidates, references)]


def _bleu(suite: MetricSuite, candidates: list[str], references: list[str]) -> list[float]:
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)  # sentence-level: orders a short candidate lacks are left out
    return [bleu.sentence_score(c, [r]).score / 100 for c, r in zip(candidates, references)]


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("bertscore_f1", "BERTScore F1", lambda suite, c, r: _bertscore(suite, c, r).f1, short="F1"),
    Metric("bertscore_p", "BERTScore P", lambda suite, c, r: _bertscore(suite, c, r).precision, short="P", shown=False),
    Metric("bertscore_r", "BERTScore R", lambda suite, c, r: _bertscore(suite, c, r).recall, short="R", shown=False),
    Metric("rouge_l", "ROUGE-L", _rouge_l),
    Metric("bleu", "BLEU", _bleu),
)}
# the headline metric: compare's verdict sentence, histogram and score beside each generation, the
# rating plan's strata and the metric-vs-humans agreement figure
PRIMARY = "bertscore_f1"


def register(entry: Metric) -> Metric:
    """Add a metric to the table (a plugin, or a test that removes it after); the name must be new.
    From then on `MetricSuite.score` computes it, sweeps accept it and compare reports it."""
    if entry.name in METRICS:
        raise ConfigError(f"metric {entry.name!r} is already in the table", fix="give the new metric another name")
    METRICS[entry.name] = entry
    return entry


def metric(name: str) -> Metric:
    """The table entry of `name`; an unknown name fails in one line listing the known ones."""
    if not isinstance(name, str) or name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}", fix=f"use one of {', '.join(METRICS)}")
    return METRICS[name]


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
    _loaded: dict = field(default_factory=dict, repr=False)  # scorer models, kept between calls
    _shared: dict = field(default_factory=dict, repr=False)  # computations of the current call

    def score(self, candidates: list[str], references: list[str], names: tuple[str, ...] | None = None) -> dict[str, list[float]]:
        """Per-example scores for each metric name (every metric in `METRICS` when none are named),
        in the order asked."""
        if len(candidates) != len(references):
            raise DataError(f"{len(candidates)} candidates but {len(references)} references")
        chosen = [metric(n) for n in (tuple(METRICS) if names is None else names)]
        self._shared = {}
        try:
            result = {m.name: list(m.scorer(self, candidates, references)) for m in chosen}
        finally:
            self._shared = {}  # the next call scores other texts
        wrong = next((name for name, values in result.items() if len(values) != len(candidates)), None)
        if wrong is not None:
            raise DataError(f"metric {wrong} gave {len(result[wrong])} scores for {len(candidates)} pairs",
                            fix="its scorer must return one score per (candidate, reference) pair")
        return result

    def loaded(self, key: str, load: Callable[[], object]):
        """The scorer model under `key`, loaded by `load()` on first use and kept."""
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]

    def shared(self, key: str, compute: Callable[[], object]):
        """`compute()` run once per `score` call, for metrics that read one computation."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]


def parse_objective(spec) -> dict[str, float]:
    """A metric name or a {metric: weight} mix -> weights (normalised to sum 1). Any name in
    `METRICS` may be used, a registered one too."""
    if spec is not None and not isinstance(spec, (str, dict)):
        raise ConfigError(f"metric must be a metric name or a mapping of names to weights, got {spec!r}",
                          fix=f"e.g. metric: bertscore_f1, or metric: {{bertscore_f1: 0.7, rouge_l: 0.3}} ({', '.join(METRICS)})")
    weights = {spec: 1.0} if isinstance(spec, str) else dict(spec or {})
    if not weights:
        raise ConfigError("metric is empty", fix=f"use one of {', '.join(METRICS)} or a mapping of them to weights")
    for name, w in weights.items():
        metric(name)
        if not isinstance(w, (int, float)) or w < 0:
            raise ConfigError(f"metric weight for {name} must be a non-negative number, got {w!r}")
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError("metric weights sum to zero")
    return {k: v / total for k, v in weights.items()}


def objective_scores(scores: dict[str, list[float]], weights: dict[str, float]) -> list[float]:
    """Per-example weighted objective, higher is better (a lower-is-better metric enters flipped
    within its range, see `Metric.oriented`)."""
    n = len(next(iter(scores.values())))
    table = {m: metric(m) for m in weights}
    return [sum(w * table[m].oriented(scores[m][i]) for m, w in weights.items()) for i in range(n)]

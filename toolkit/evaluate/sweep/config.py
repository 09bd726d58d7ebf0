"""Sweep files: read and validate a sweep YAML into a `SweepConfig` (every mistake one line).

A sweep file (YAML, see sweeps/) names the search space, the metric, the sampler and pruner, the
number of trials and prompts, and the generation seed every trial uses (so trials differ only in
their parameters). `mode: race` (the default) races every candidate against the default and stops
when the answer is known (race.py); `mode: search` is the older search, then re-run (noise.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError
from toolkit.evaluate.metrics import PRIMARY, ScorerConfig, parse_objective
from toolkit.params import DEFAULTS, SPECS, SWEEPABLE, DecodingParams, check_bounds
from toolkit.space import Dimension, parse_space

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median")
MODES = ("race", "search")
# what a space entry keeps in the study's fingerprint (a saved study is compared with it)
_FINGERPRINT_FIELDS = ("low", "high", "step", "log", "choices")


@dataclass
class RaceSettings:
    """How a race (mode: race) decides; see toolkit/evaluate/sweep/race.py.

    Attributes:
        chunk: prompts per chunk: every decision is taken after a chunk.
        alpha: family-wise error of "beats the default" (Holm over the candidates compared).
        futility: a candidate whose conditional power (of beating the default once every prompt is
            scored, given its paired differences so far) is below this is out.
        prune_p: WilcoxonPruner's p threshold: a candidate worse than the default beyond this is out.
        min_effect: the smallest difference worth having (metric units); 0 = any. A candidate whose
            upper 95% bound is below it is out (equivalence).
        wave: candidates raced together (their chunks decoded in one batch); a smaller wave never
            costs more generations (a race stops after the first wave holding a winner).
        max_generations: generation budget (0 = none).
        max_seconds: wall-time budget of one run (0 = none).
    """

    chunk: int = 3
    alpha: float = 0.05
    futility: float = 0.05
    prune_p: float = 0.1
    min_effect: float = 0.0
    wave: int = 4
    max_generations: int = 0
    max_seconds: float = 0.0


@dataclass
class SweepConfig:
    """A sweep file, validated.

    Attributes:
        name: the study name.
        metric: a metric name or a {metric: weight} mix of names in `METRICS` (toolkit/evaluate/metrics.py:
            bertscore_f1, bertscore_p, bertscore_r, rouge_l, bleu, and any registered one), maximised.
        sampler: tpe, random or grid.
        sampler_seed: seed of the sampler: the same sweep proposes the same trials.
        pruner: none or median (prune after a prompt chunk when the running mean is below the median).
        chunks: prompt chunks per trial (pruning points).
        startup_trials: trials that are never pruned, so the median means something.
        trials: finished trials wanted (a grid's size overrides it).
        prompts: prompts per trial (the first N of the split).
        seed: the generation seed every trial uses.
        fixed: parameters held fixed for every trial (and for the default it is compared with).
        space: the searched parameters.
        scorer: the BERTScore encoder.
        rerun_top: how many of the best trials to re-run with several seeds.
        rerun_seeds: the generation seeds of those re-runs.
        bootstrap: bootstrap resamples for intervals.
        mode: race (race every candidate against the default, stop when decided) or search.
        default: the baseline every candidate is compared with, over the defaults and `fixed`.
        race: how a race decides (`RaceSettings`).
    """

    name: str
    space: dict[str, Dimension]
    metric: dict[str, float] = field(default_factory=lambda: {PRIMARY: 1.0})
    sampler: str = "tpe"
    sampler_seed: int = 0
    pruner: str = "median"
    chunks: int = 3
    startup_trials: int = 5
    trials: int = 30
    prompts: int = 12
    seed: int = 1234
    fixed: dict[str, Any] = field(default_factory=dict)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    rerun_top: int = 3
    rerun_seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    bootstrap: int = 1000
    mode: str = "race"
    default: dict[str, Any] = field(default_factory=dict)
    race: RaceSettings = field(default_factory=RaceSettings)

    def base_params(self) -> DecodingParams:
        """The default parameters with the fixed ones applied and the sweep's generation seed."""
        return DEFAULTS.replace(**self.fixed, seed=self.seed)

    def default_params(self) -> DecodingParams:
        """The baseline candidates are compared with: `base_params` with the `default:` block."""
        return self.base_params().replace(**self.default)

    def grid_space(self) -> dict[str, list]:
        return {name: dim.grid() for name, dim in self.space.items()}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["space"] = {k: {kk: vv for kk, vv in asdict(v).items() if vv not in (None, False) and kk in _FINGERPRINT_FIELDS}
                         for k, v in self.space.items()}
        return data


_TOP_KEYS = {"name", "space", "metric", "sampler", "pruner", "trials", "prompts", "seed", "fixed", "scorer", "noise",
             "mode", "default", "race"}


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; every mistake is one line naming the file and field."""
    import yaml

    path = Path(path)
    if not path.exists():
        shipped = Path(__file__).resolve().parents[3] / "sweeps" / f"{path.stem}.yaml"
        if shipped.exists():
            path = shipped
        else:
            raise ConfigError(f"sweep file {path} does not exist", fix="pass a file from sweeps/")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:  # a binary file (a .gguf, say) passed as the sweep file
        raise ConfigError(f"{path}: not a sweep file: it is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})",
                          fix="pass a YAML sweep file, e.g. one from sweeps/") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with `space:` and options")
    return parse_sweep(raw, where=str(path), default_name=path.stem)


def parse_sweep(raw: dict, *, where: str = "sweep", default_name: str = "sweep") -> SweepConfig:
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}", fix=f"valid: {', '.join(sorted(_TOP_KEYS))}")
    space = parse_space(raw.get("space"), where=where, types={name: SPECS[name].type for name in SWEEPABLE},
                        decimals=6, check=check_bounds)
    fixed = dict(raw.get("fixed") or {})
    for name in fixed:
        if name not in SPECS and name != "stop":
            raise ConfigError(f"{where}: fixed.{name} is not a decoding parameter", fix=f"valid: {', '.join(SPECS)}")
        if name in space:
            raise ConfigError(f"{where}: {name} is both fixed and searched", fix="remove it from one of them")
    try:
        DEFAULTS.replace(**fixed)
    except ConfigError as exc:
        raise ConfigError(f"{where}: fixed: {exc.message}") from None
    default = _default_block(raw.get("default"), fixed, where)
    mode = raw.get("mode", "race")
    if mode not in MODES:
        raise ConfigError(f"{where}: mode {mode!r} is unknown", fix="use race (decide against the default) or search")
    sampler = raw.get("sampler", "tpe")
    sampler_seed = 0
    if isinstance(sampler, dict):
        sampler_seed = _int(sampler.get("seed", 0), f"{where}: sampler.seed")
        sampler = sampler.get("type", "tpe")
    pruner = raw.get("pruner", "median")
    chunks, startup = 3, 5
    if isinstance(pruner, dict):
        chunks = _int(pruner.get("chunks", 3), f"{where}: pruner.chunks", low=1)
        startup = _int(pruner.get("startup_trials", 5), f"{where}: pruner.startup_trials", low=0)
        pruner = pruner.get("type", "median")
    if sampler not in SAMPLERS:
        raise ConfigError(f"{where}: sampler {sampler!r} is unknown", fix=f"use one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"{where}: pruner {pruner!r} is unknown", fix=f"use one of {', '.join(PRUNERS)}")
    noise = raw.get("noise") or {}
    scorer = raw.get("scorer") or {}
    bad = sorted(set(scorer) - {"model", "layer", "idf", "baseline"})
    if bad:
        raise ConfigError(f"{where}: scorer.{bad[0]} is unknown", fix="valid: model, layer, idf, baseline")
    try:
        metric = parse_objective(raw.get("metric", PRIMARY))  # the headline metric unless the file says
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", fix=exc.fix) from None
    cfg = SweepConfig(
        name=str(raw.get("name") or default_name), space=space, metric=metric, sampler=sampler,
        sampler_seed=sampler_seed, pruner=pruner, chunks=chunks, startup_trials=startup,
        trials=_int(raw.get("trials", 30), f"{where}: trials", low=1),
        prompts=_int(raw.get("prompts", 12), f"{where}: prompts", low=1),
        seed=_int(raw.get("seed", 1234), f"{where}: seed", low=0), fixed=fixed,
        scorer=ScorerConfig(**scorer), rerun_top=_int(noise.get("rerun_top", 3), f"{where}: noise.rerun_top", low=0),
        rerun_seeds=[_int(s, f"{where}: noise.rerun_seeds") for s in noise.get("rerun_seeds", [1, 2, 3])],
        bootstrap=_int(noise.get("bootstrap", 1000), f"{where}: noise.bootstrap", low=100),
        mode=mode, default=default, race=_race_settings(raw.get("race"), where),
    )
    if cfg.sampler == "grid":
        cfg.trials = math.prod(len(v) for v in cfg.grid_space().values())
    return cfg


def _default_block(raw, fixed: dict, where: str) -> dict:
    """The `default:` block: decoding parameters of the baseline, checked like `fixed`."""
    default = dict(raw or {})
    for name in default:
        if name not in SPECS or name == "seed":
            raise ConfigError(f"{where}: default.{name} is not a decoding parameter of the baseline",
                              fix=f"valid: {', '.join(n for n in SPECS if n != 'seed')}")
    try:
        DEFAULTS.replace(**fixed, **default)
    except ConfigError as exc:
        raise ConfigError(f"{where}: default: {exc.message}") from None
    return default


def _race_settings(raw, where: str) -> RaceSettings:
    raw = dict(raw or {})
    known = RaceSettings.__dataclass_fields__
    bad = sorted(set(raw) - set(known))
    if bad:
        raise ConfigError(f"{where}: race.{bad[0]} is unknown", fix=f"valid: {', '.join(known)}")
    values = {}
    for name, value in raw.items():
        if isinstance(known[name].default, int):
            values[name] = _int(value, f"{where}: race.{name}", low=0 if name == "max_generations" else 1)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}: race.{name} must be a number of at least 0, got {value!r}")
        else:
            values[name] = float(value)
    for name in ("alpha", "futility", "prune_p"):
        if not 0 < values.get(name, 0.05) < 1:
            raise ConfigError(f"{where}: race.{name} must be between 0 and 1, got {values[name]}")
    return RaceSettings(**values)


def _int(value, where: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be a whole number, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{where} must be at least {low}, got {value}")
    return value


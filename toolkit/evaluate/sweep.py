"""`toolkit sweep`: find better decoding parameters with Optuna, scored against references.

A sweep file (YAML, see sweeps/) names the search space, the metric, the sampler and pruner, the
number of trials and prompts, and the generation seed every trial uses (so trials differ only in
their parameters). The study lives in SQLite beside the results (or any Optuna storage URL, e.g.
PostgreSQL for many workers), so `kill -9` and re-running the same command continues it.

Per trial the prompts are generated in chunks; after each chunk the running mean is reported so
Optuna's median pruner can stop a trial that cannot beat the median. After the search, the best
trials and the default parameters are re-run with several generation seeds, compared pairwise, and
the report says plainly whether the best beats the default beyond noise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.metrics import ScorerConfig, parse_objective
from toolkit.params import DEFAULTS, SPECS, SWEEPABLE, DecodingParams, check_bounds

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median")


@dataclass
class Dimension:
    """One searched parameter: a range (low, high, optional step, log) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if SPECS[self.name].type is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        value = trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return round(value, 6)  # a stepped float arrives as 0.7000000000000001

    def largest(self) -> float:
        return max(self.choices) if self.choices is not None else self.high

    def grid(self) -> list:
        """Every value of this dimension (a grid needs choices or a step)."""
        if self.choices is not None:
            return list(self.choices)
        if self.step is None:
            raise ConfigError(f"space.{self.name}: a grid needs `values` or a `step`")
        n = int(round((self.high - self.low) / self.step)) + 1
        values = [round(self.low + i * self.step, 10) for i in range(n)]
        return [int(v) for v in values] if SPECS[self.name].type is int else values


@dataclass
class SweepConfig:
    """A sweep file, validated.

    Attributes:
        name: the study name.
        metric: a metric name or a {metric: weight} mix (bertscore_f1, bertscore_p, bertscore_r, rouge_l, bleu).
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
    """

    name: str
    space: dict[str, Dimension]
    metric: dict[str, float] = field(default_factory=lambda: {"bertscore_f1": 1.0})
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

    def base_params(self) -> DecodingParams:
        """The default parameters with the fixed ones applied and the sweep's generation seed."""
        return DEFAULTS.replace(**self.fixed, seed=self.seed)

    def grid_space(self) -> dict[str, list]:
        return {name: dim.grid() for name, dim in self.space.items()}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["space"] = {k: {kk: vv for kk, vv in asdict(v).items() if vv not in (None, False) and kk != "name"}
                         for k, v in self.space.items()}
        return data


_TOP_KEYS = {"name", "space", "metric", "sampler", "pruner", "trials", "prompts", "seed", "fixed", "scorer", "noise"}


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; every mistake is one line naming the file and field."""
    import yaml

    path = Path(path)
    if not path.exists():
        shipped = Path(__file__).resolve().parents[2] / "sweeps" / f"{path.stem}.yaml"
        if shipped.exists():
            path = shipped
        else:
            raise ConfigError(f"sweep file {path} does not exist", fix="pass a file from sweeps/")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
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
    space = _parse_space(raw.get("space"), where)
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
        metric = parse_objective(raw.get("metric", "bertscore_f1"))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    cfg = SweepConfig(
        name=str(raw.get("name") or default_name), space=space, metric=metric, sampler=sampler,
        sampler_seed=sampler_seed, pruner=pruner, chunks=chunks, startup_trials=startup,
        trials=_int(raw.get("trials", 30), f"{where}: trials", low=1),
        prompts=_int(raw.get("prompts", 12), f"{where}: prompts", low=1),
        seed=_int(raw.get("seed", 1234), f"{where}: seed", low=0), fixed=fixed,
        scorer=ScorerConfig(**scorer), rerun_top=_int(noise.get("rerun_top", 3), f"{where}: noise.rerun_top", low=0),
        rerun_seeds=[_int(s, f"{where}: noise.rerun_seeds") for s in noise.get("rerun_seeds", [1, 2, 3])],
        bootstrap=_int(noise.get("bootstrap", 1000), f"{where}: noise.bootstrap", low=100),
    )
    if cfg.sampler == "grid":
        cfg.trials = math.prod(len(v) for v in cfg.grid_space().values())
    return cfg


def _int(value, where: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be a whole number, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{where} must be at least {low}, got {value}")
    return value


def _parse_space(space, where: str) -> dict[str, Dimension]:
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: `space` must map parameter names to ranges", fix="e.g. space: {temperature: {low: 0.1, high: 1.5}}")
    dims = {}
    for name, spec in space.items():
        field_where = f"{where}: space.{name}"
        if name not in SWEEPABLE:
            raise ConfigError(f"{field_where}: unknown parameter {name!r}", fix=f"searchable: {', '.join(SWEEPABLE)}")
        if isinstance(spec, list):
            spec = {"values": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{field_where} must be {{low, high[, step, log]}} or {{values: [...]}}")
        bad = sorted(set(spec) - {"low", "high", "step", "log", "values"})
        if bad:
            raise ConfigError(f"{field_where}: unknown key {bad[0]!r}", fix="use low, high, step, log or values")
        dims[name] = _dimension(name, spec, field_where)
    return dims


def _dimension(name: str, spec: dict, where: str) -> Dimension:
    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values must be a non-empty list")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}.values: {v!r} is not a number")
            check_bounds(name, v, where=f"{where}: ")
        return Dimension(name, choices=list(values))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where} needs both low and high (or values)")
    low, high, step = spec["low"], spec["high"], spec.get("step")
    for key, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ConfigError(f"{where}.{key} must be a number, got {v!r}")
    check_bounds(name, low, where=f"{where}.low: ")
    check_bounds(name, high, where=f"{where}.high: ")
    if low >= high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}.step must be positive, got {step}")
    if SPECS[name].type is int and any(v is not None and float(v) != int(v) for v in (low, high, step)):
        raise ConfigError(f"{where}: {name} takes whole numbers")
    return Dimension(name, float(low), float(high), step, bool(spec.get("log", False)))


# ----------------------------------------------------------------------------------------------
# Running a study
# ----------------------------------------------------------------------------------------------


@dataclass
class Evaluator:
    """Generates for a fixed prompt set and scores against its references; loaded once per worker."""

    backend: Any
    prompts: list[str]
    references: list[str]
    metric: dict[str, float]
    suite: Any
    generations: int = 0

    def evaluate_many(self, requests: list[tuple[DecodingParams, list[int]]]) -> list[tuple[list[float], dict]]:
        """Several (parameters, prompt indices) requests decoded in one batch and scored in one call:
        a backend with parallel slots keeps them full across trials."""
        jobs = [(r, params, i) for r, (params, indices) in enumerate(requests) for i in indices]
        gens = self.backend.generate_batch([self.conversation(i) for _, _, i in jobs], [params for _, params, _ in jobs])
        self.generations += len(gens)
        scores, _ = self.score(gens, [i for _, _, i in jobs])  # one scorer call for all
        results = []
        for r in range(len(requests)):
            mine = [k for k, (owner, _, _) in enumerate(jobs) if owner == r]
            results.append(([scores[k] for k in mine], _summary([gens[k] for k in mine])))
        return results

    def score(self, gens: list, indices: list[int]) -> tuple[list[float], dict]:
        """Objective value per generation (against the references of prompts `indices`), and a summary."""
        from toolkit.evaluate.metrics import objective_scores

        scores = objective_scores(self.suite.score([g.text for g in gens], [self.references[i] for i in indices],
                                                   tuple(self.metric)), self.metric)
        return scores, _summary(gens)

    def conversation(self, i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompts[i]}]


def _summary(gens: list) -> dict:
    return {"tokens": sum(g.completion_tokens for g in gens), "seconds": sum(g.seconds for g in gens),
            "texts": [g.text for g in gens], "finish": [g.finish_reason for g in gens]}


def _chunks(n: int, k: int) -> list[list[int]]:
    k = max(1, min(k, n))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(k)]


def _grid_sampler(space: dict, seed: int):
    """Optuna's GridSampler without its stop(): `run_trials` stops when the grid is covered, and
    Study.stop() only works inside Study.optimize()."""
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    return GridSampler(space, seed=seed)


def make_pruner(cfg: SweepConfig):
    """Median pruning over prompt chunks after `startup_trials` complete ones, or none."""
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(cfg: SweepConfig, storage: str, study_name: str, *, fingerprint: dict):
    """Create or load the study; refuse to continue a study that was run with different settings."""
    import optuna

    sampler = {
        # constant_liar: trials running together (in the parallel slots) do not all propose the same point
        "tpe": lambda: optuna.samplers.TPESampler(seed=cfg.sampler_seed, n_startup_trials=min(10, max(1, cfg.trials // 3)),
                                                  constant_liar=True),
        "random": lambda: optuna.samplers.RandomSampler(seed=cfg.sampler_seed),
        "grid": lambda: _grid_sampler(cfg.grid_space(), cfg.sampler_seed),
    }[cfg.sampler]()
    pruner = make_pruner(cfg)
    rdb = _storage(storage)
    study = optuna.create_study(study_name=study_name, storage=rdb, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        study.set_user_attr("fingerprint", fingerprint)
    elif saved != fingerprint:
        changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        raise ConfigError(f"study {study_name!r} in {storage} was run with a different {changed[0]}",
                          fix="use --study NEW_NAME or --out NEW_DIR to start a new study")
    return study


def _storage(url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(5):
        try:
            return _open_rdb(url)
        except Exception as exc:
            # workers starting together race to create the schema ("table ... already exists", or
            # both inserting its version row): the loser simply opens what the winner created
            raced = any(m in str(exc) for m in ("already exists", "UNIQUE constraint failed", "duplicate key"))
            if not raced or attempt == 4:
                raise ConfigError(f"cannot open study storage {url} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                                  fix="check the URL; PostgreSQL needs `pip install psycopg[binary]` and a reachable server") from None
            time.sleep(0.5 + attempt)


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` means psycopg 3 (our `postgres` extra), not SQLAlchemy's default psycopg2."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg2") is None:
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _open_rdb(url: str):
    import warnings

    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    url = sqlalchemy_url(url)

    # Heartbeats let a rerun (or another worker) notice a trial whose process was killed and
    # retry it with the same parameters instead of leaving it RUNNING forever.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are marked experimental
        return RDBStorage(url, heartbeat_interval=10, grace_period=30,
                          heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=2),
                          engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)


def finished(study) -> list:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def run_trials(study, cfg: SweepConfig, ev: Evaluator) -> None:
    """Run trials until the study (across all workers) has `cfg.trials` finished ones.

    Trials stream through the backend: a new trial is asked whenever a parallel slot would
    otherwise wait, a trial's next prompt chunk is queued as soon as the previous one is scored,
    median pruning stops a weak trial after a chunk, and a trial is told as soon as it ends. Every
    ask, prune and tell happens at a fixed point of the decoding stream (never on a clock), so the
    same sweep gives the same trials.
    """
    import warnings

    import optuna

    from toolkit.console import progress

    chunks = _chunks(len(ev.prompts), cfg.chunks if cfg.pruner != "none" else 1)
    if cfg.trials - len(finished(study)) <= 0:
        return
    longest = int(cfg.space["max_tokens"].largest()) if "max_tokens" in cfg.space else cfg.base_params().max_tokens
    ev.backend.reserve([ev.conversation(i) for i in range(len(ev.prompts))], longest)
    with progress() as bar, warnings.catch_warnings():
        # heartbeats are "experimental" and "meant for Study.optimize": we record them ourselves
        # (see _Trials), so a killed worker's trial is still noticed and retried
        warnings.filterwarnings("ignore", message=".*(experimental|Heartbeat of storage).*")
        task = bar.add_task(f"sweep {cfg.name}", total=cfg.trials, completed=len(finished(study)), info="")
        waited = 0.0
        while True:
            optuna.storages.fail_stale_trials(study)  # a killed worker's trial is retried
            if len(finished(study)) >= cfg.trials:
                break
            # other workers' running trials count towards the total, unless they never finish
            ran = _Trials(study, cfg, ev, chunks, count_running=waited < STALE_WAIT,
                          on_finished=lambda best: bar.update(task, advance=1, info=f"best {best:.4f}" if best is not None else "")).run()
            bar.update(task, completed=len(finished(study)))  # other workers' trials too
            if ran:
                waited = 0.0
            else:
                time.sleep(5)
                waited += 5


# How long to wait for other workers' running trials before running more trials here: longer than
# the heartbeat grace period, after which a dead worker's trial is failed and retried.
STALE_WAIT = 60.0


class _Trials:
    """One stream of trials through the backend (see `run_trials`).

    A free slot takes, in this order: the next prompt of a chunk a trial is known to need (its
    previous chunk was scored and not pruned), oldest trial first; the first prompt of a newly
    asked trial, while the study wants more; a prompt of a trial's next chunk ahead of its pruning
    decision (the slot would idle otherwise), which is dropped, even mid-generation, if the trial
    is then pruned.
    """

    def __init__(self, study, cfg: SweepConfig, ev: Evaluator, chunks: list[list[int]], *, count_running: bool,
                 on_finished: Callable[[float | None], None]):
        self.study, self.cfg, self.ev, self.chunks = study, cfg, ev, chunks
        self.count_running, self.on_finished = count_running, on_finished
        self.base = cfg.base_params()
        self.live: dict[int, _Live] = {}  # trial number -> state, in the order asked
        self.asked = 0
        self.enough = False  # the study has all the trials it needs, as far as this run is concerned
        self.start = time.perf_counter()

    def run(self) -> int:
        """Run until no more trials are wanted and none is running here; the number asked."""
        from optuna.trial import TrialState

        try:
            stream = self.ev.backend.generate_stream(self.next_job, lambda key: key[0] not in self.live)
            for (n, step, i), gen in stream:
                self.ev.generations += 1
                t = self.live.get(n)
                if t is None:  # finished in the same decode step that got its trial pruned
                    continue
                t.got[step][i] = gen
                while n in self.live and len(t.got[t.scored]) == len(self.chunks[t.scored]):
                    self.chunk_done(n, t.scored)
        except BaseException:
            for n in list(self.live):  # not told yet: mark failed so no trial stays RUNNING
                self.end(n, TrialState.FAIL)
            raise
        return self.asked

    def next_job(self):
        """The next prompt to decode (see the class docstring), or None."""
        for n, t in self.live.items():
            if t.todo and t.todo[0][0] <= t.scored:
                return self.job(n)
        if not self.enough and self.wanted() > 0:
            return self.job(self.ask())
        ahead = [(t.todo[0][0], n) for n, t in self.live.items() if t.todo]
        return self.job(min(ahead)[1]) if ahead else None

    def job(self, n: int):
        t = self.live[n]
        step, i = t.todo.popleft()
        return (n, step, i), self.ev.conversation(i), t.params

    def wanted(self) -> int:
        """Trials still to ask; once none, none for the rest of this run (asked again by run_trials)."""
        from optuna.trial import TrialState

        running = len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        wanted = self.cfg.trials - len(finished(self.study)) - (running if self.count_running else len(self.live))
        self.enough = wanted <= 0
        return wanted

    def ask(self) -> int:
        from collections import deque

        from optuna.storages._heartbeat import get_heartbeat_thread

        trial = self.study.ask()
        beat = get_heartbeat_thread(trial._trial_id, self.study._storage)
        beat.__enter__()
        params = self.base.replace(**{name: dim.suggest(trial) for name, dim in self.cfg.space.items()})
        todo = deque((step, i) for step, idx in enumerate(self.chunks) for i in idx)
        self.live[trial.number] = _Live(trial, params, beat, todo, [{} for _ in self.chunks])
        self.asked += 1
        return trial.number

    def chunk_done(self, n: int, step: int) -> None:
        """Score a finished chunk; then prune the trial, finish it, or go on to its next chunk."""
        from optuna.trial import TrialState

        from toolkit.evaluate.stats import bootstrap_mean

        t, idx = self.live[n], self.chunks[step]
        chunk_scores, info = self.ev.score([t.got[step][i] for i in idx], idx)
        t.scores += chunk_scores
        t.tokens += info["tokens"]
        t.trial.set_user_attr("scores", t.scores)
        t.trial.set_user_attr("tokens", t.tokens)
        t.trial.set_user_attr("seconds", round(time.perf_counter() - self.start, 2))
        if step == len(self.chunks) - 1:
            ci = bootstrap_mean(t.scores, resamples=self.cfg.bootstrap, seed=n)
            t.trial.set_user_attr("ci", [ci.low, ci.high])
            self.end(n, TrialState.COMPLETE, ci.mean)
            return
        t.trial.report(sum(t.scores) / len(t.scores), step)
        if t.trial.should_prune():
            self.end(n, TrialState.PRUNED)
        else:
            t.scored = step + 1

    def end(self, n: int, state, value: float | None = None) -> None:
        from optuna.trial import TrialState

        t = self.live.pop(n)  # its queued prompts go with it; running ones are dropped (see run)
        t.beat.__exit__(None, None, None)
        self.study.tell(t.trial, value, state=state)
        if state != TrialState.FAIL:
            complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self.on_finished(max(c.value for c in complete) if complete else None)


@dataclass
class _Live:
    """A trial running in `_Trials`."""

    trial: Any
    params: DecodingParams
    beat: Any  # its heartbeat thread (a context manager)
    todo: Any  # deque of (chunk, prompt index) not started yet, in order
    got: list[dict]  # per chunk: prompt index -> Generation
    scored: int = 0  # chunks scored so far; the next chunk to score
    scores: list[float] = field(default_factory=list)
    tokens: int = 0


# ----------------------------------------------------------------------------------------------
# After the search: noise, outputs, report
# ----------------------------------------------------------------------------------------------


def noise_check(study, cfg: SweepConfig, ev: Evaluator) -> dict:
    """Re-run the default and the top trials with several seeds on every prompt; compare best vs default."""
    import optuna

    from toolkit.console import status
    from toolkit.evaluate.stats import bootstrap_mean, paired

    base = cfg.base_params()
    complete = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                      key=lambda t: (-t.value, t.number))[: cfg.rerun_top]
    candidates = [("default", base)] + [(f"trial {t.number}", base.replace(**trial_params(t))) for t in complete]
    everyone = list(range(len(ev.prompts)))
    rows = {}
    with status(f"re-running the default and the top {len(complete)} trials with seeds {cfg.rerun_seeds}"):
        runs = ev.evaluate_many([(params.replace(seed=s), everyone) for _, params in candidates for s in cfg.rerun_seeds])
        for c, (label, params) in enumerate(candidates):
            per_seed = [scores for scores, _ in runs[c * len(cfg.rerun_seeds):(c + 1) * len(cfg.rerun_seeds)]]
            per_prompt = [sum(col) / len(col) for col in zip(*per_seed)]
            rows[label] = {"params": params.to_dict(), "per_prompt": per_prompt,
                           "seed_means": [sum(s) / len(s) for s in per_seed],
                           "ci": bootstrap_mean(per_prompt, resamples=cfg.bootstrap, seed=0).to_dict()}
    best_label = max((k for k in rows if k != "default"), key=lambda k: rows[k]["ci"]["mean"], default="default")
    cmp = paired(rows["default"]["per_prompt"], rows[best_label]["per_prompt"], resamples=max(cfg.bootstrap, 2000))
    return {"candidates": rows, "best": best_label, "comparison": cmp.to_dict(), "verdict": verdict(cmp, best_label)}


def trial_params(trial) -> dict:
    """A trial's parameters as suggested: Optuna stores a stepped float as 0.30000000000000004."""
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in trial.params.items()}


def chosen_params(noise: dict, cfg: SweepConfig) -> tuple[str, dict]:
    """The searched parameters to use: the best's if it beats the default beyond noise, else the default's.

    Only the searched ones: the sweep's fixed parameters (a short max_tokens, its generation seed)
    are conditions of the search, not findings about the model.
    """
    c = noise["comparison"]
    label = noise["best"] if c["significant"] and c["diff"]["mean"] > 0 else "default"
    return label, {k: v for k, v in noise["candidates"][label]["params"].items() if k in cfg.space}


def verdict(cmp, best_label: str) -> str:
    """One plain sentence on whether the best beats the default beyond noise."""
    d = cmp.diff
    need = f"; about {cmp.prompts_needed} prompts would be needed to tell a difference this size apart" if cmp.prompts_needed else ""
    if best_label == "default":
        return "No trial completed, so there is nothing to compare with the default."
    if cmp.significant and d.mean > 0:
        return (f"{best_label} beats the default beyond noise: +{d.mean:.4f} [{d.low:+.4f}, {d.high:+.4f}] "
                f"over {cmp.n} prompts averaged over the re-run seeds (Wilcoxon p={cmp.p_value:.3g}).")
    if cmp.significant:
        return (f"the default beats {best_label} beyond noise: {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}] "
                f"(Wilcoxon p={cmp.p_value:.3g}); keep the default.")
    return (f"{best_label} does NOT beat the default beyond noise: difference {d.mean:+.4f} "
            f"[{d.low:+.4f}, {d.high:+.4f}] over {cmp.n} prompts includes zero (Wilcoxon p={cmp.p_value:.3g}){need}.")


def search_generations(study) -> int:
    """Generations the search ran, over every worker and resume (pruned trials count what they ran)."""
    return sum(len(t.user_attrs.get("scores", [])) for t in study.get_trials(deepcopy=False))


def write_outputs(study, cfg: SweepConfig, out: Path, noise: dict, *, generations: int, seconds: float,
                  storage: str = "", against: dict | None = None) -> dict:
    """trials.csv, best.json, best.yaml, per_prompt.csv, noise.json, plots and report.md."""
    import csv
    import io as _io

    import optuna
    import yaml

    from toolkit.io import write_json, write_text

    trials = study.get_trials(deepcopy=False)
    names = list(cfg.space)
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", *names, "value", "ci_low", "ci_high", "prompts_scored", "tokens", "seconds"])
    for t in trials:
        ci = t.user_attrs.get("ci", [None, None])
        w.writerow([t.number, t.state.name, *[trial_params(t).get(n) for n in names], t.value, ci[0], ci[1],
                    len(t.user_attrs.get("scores", [])), t.user_attrs.get("tokens"), t.user_attrs.get("seconds")])
    write_text(out / "trials.csv", buf.getvalue())
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_label = noise["best"]
    best_params = noise["candidates"][best_label]["params"]
    chosen_label, chosen = chosen_params(noise, cfg)
    best = {"study": study.study_name, "best": best_label, "params": best_params, "chosen": chosen_label,
            "search_best_trial": study.best_trial.number if complete else None,
            "search_best_value": study.best_value if complete else None,
            "rerun": {k: v["ci"] for k, v in noise["candidates"].items()},
            "comparison": noise["comparison"], "verdict": noise["verdict"],
            "search_trials": len(trials), "search_generations": search_generations(study), "storage": storage,
            "generations": generations, "seconds": round(seconds, 1)}
    write_json(out / "best.json", best)
    write_text(out / "best.yaml", f"# Decoding parameters chosen by `toolkit sweep` ({cfg.name}): {best['verdict']}\n"
               f"# Use: toolkit export MODEL_DIR --parameters {out / 'best.yaml'}\n"
               + yaml.safe_dump({"parameters": chosen}, sort_keys=False))
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["prompt", "default", best_label])
    for i, (a, b) in enumerate(zip(noise["candidates"]["default"]["per_prompt"], noise["candidates"][best_label]["per_prompt"])):
        w.writerow([i, a, b])
    write_text(out / "per_prompt.csv", buf.getvalue())
    write_json(out / "noise.json", noise)
    plots = make_plots(study, cfg, out / "plots", noise)
    write_text(out / "report.md", render_report(study, cfg, best, noise, plots, out, against))
    return best


def make_plots(study, cfg: SweepConfig, folder: Path, noise: dict) -> dict[str, str]:
    """Optuna's history, importances, slice and contour plots, and per-prompt score histograms."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    from toolkit.io import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    jobs = {"history": lambda: ovm.plot_optimization_history(study),
            "importances": lambda: ovm.plot_param_importances(study),
            "slice": lambda: ovm.plot_slice(study),
            "contour": lambda: ovm.plot_contour(study) if len(cfg.space) > 1 else None}
    for name, job in jobs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = job()
            except Exception:  # too few trials or no variation: skip that plot, say so in the report
                ax = None
        if ax is None:
            continue
        fig = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
        save_figure(fig, folder / f"{name}.png")
        made[name] = f"plots/{name}.png"
    fig, axis = plt.subplots(figsize=(7, 4))
    best = noise["best"]
    for label in dict.fromkeys(["default", best]):
        axis.hist(noise["candidates"][label]["per_prompt"], bins=12, alpha=0.6, label=f"{label} (mean {noise['candidates'][label]['ci']['mean']:.3f})")
    axis.set_xlabel("per-prompt score (mean over re-run seeds)")
    axis.set_ylabel("prompts")
    axis.set_title(f"{cfg.name}: default vs best")
    axis.legend()
    save_figure(fig, folder / "histogram.png")
    made["histogram"] = "plots/histogram.png"
    return made


def render_against(best: dict, other: dict) -> list[str]:
    """Report lines: this search's best and cost beside another sweep's on the same prompts and seed."""
    a, b = best["search_best_value"], other["search_best_value"]
    ga, gb = best["search_generations"], other["search_generations"]
    reached = "reaches" if a >= b else "does not reach"
    cheaper = "fewer" if ga < gb else "no fewer"
    return [f"## Against `{other['study']}`", "",
            "| study | best search value | trials | generations |", "|---|---|---|---|",
            f"| {best['study']} (this) | {a:.4f} | {best['search_trials']} | {ga} |",
            f"| {other['study']} | {b:.4f} | {other['search_trials']} | {gb} |", "",
            f"This search {reached} the best of `{other['study']}` ({a - b:+.4f}) with {cheaper} generations "
            f"({ga / max(1, gb):.0%} of them). Both are single-seed search values over the same prompts; "
            "the re-runs above say how much such a difference can be noise.", ""]


def render_report(study, cfg: SweepConfig, best: dict, noise: dict, plots: dict, out: Path,
                  against: dict | None = None) -> str:
    import optuna

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    lines = [f"# Sweep `{cfg.name}`", "", f"**Verdict:** {best['verdict']}", "",
             f"- metric: {', '.join(f'{k} x{v:g}' for k, v in cfg.metric.items())}; {cfg.prompts} prompts; generation seed {cfg.seed}",
             f"- sampler {cfg.sampler} (seed {cfg.sampler_seed}), pruner {cfg.pruner}" + (f" over {cfg.chunks} prompt chunks" if cfg.pruner != "none" else ""),
             f"- trials: {count[optuna.trial.TrialState.COMPLETE]} complete, {count[optuna.trial.TrialState.PRUNED]} pruned, "
             f"{count[optuna.trial.TrialState.FAIL]} failed; {best['generations']} generations in {best['seconds']} s",
             f"- storage: `{best['storage']}` (browse it with `optuna-dashboard {best['storage']}`)", "",
             "## Re-run with seeds " + ", ".join(map(str, cfg.rerun_seeds)), "",
             "| candidate | mean | 95% CI | " + " | ".join(cfg.space) + " |", "|---|---|---|" + "---|" * len(cfg.space)]
    for label, row in noise["candidates"].items():
        ci = row["ci"]
        lines.append(f"| {label} | {ci['mean']:.4f} | [{ci['low']:.4f}, {ci['high']:.4f}] | "
                     + " | ".join(str(row["params"][k]) for k in cfg.space) + " |")
    c = noise["comparison"]
    lines += ["", f"Best vs default (paired over prompts): difference {c['diff']['mean']:+.4f} "
              f"[{c['diff']['low']:+.4f}, {c['diff']['high']:+.4f}], Wilcoxon p={c['p_value']:.3g}, "
              f"win rate {c['win_rate']:.0%}, sd of differences {c['sd_diff']:.4f}"
              + (f"; prompts needed to detect this difference: {c['prompts_needed']}" if c["prompts_needed"] else "") + ".", ""]
    if against:
        lines += render_against(best, against)
    lines += ["## Top trials of the search", "", "| trial | value | 95% CI | " + " | ".join(cfg.space) + " |",
              "|---|---|---|" + "---|" * len(cfg.space)]
    complete = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: -t.value)
    for t in complete[:10]:
        ci = t.user_attrs.get("ci", [float("nan")] * 2)
        lines.append(f"| {t.number} | {t.value:.4f} | [{ci[0]:.4f}, {ci[1]:.4f}] | " + " | ".join(str(trial_params(t).get(k)) for k in cfg.space) + " |")
    lines.append("")
    for name, rel in plots.items():
        lines += [f"![{name}]({rel})", ""]
    lines += ["Files: `trials.csv`, `best.json`, `best.yaml` (for `toolkit export --parameters`), `per_prompt.csv`, `noise.json`.", ""]
    return "\n".join(lines)


def rewrite_modelfile(path: Path, params: DecodingParams, only: Iterable[str] | None = None) -> Path:
    """Rewrite a Modelfile's PARAMETER lines with `params` (or just the fields in `only`), keeping
    FROM, TEMPLATE, stops, SYSTEM, LICENSE and the other PARAMETERs."""
    from toolkit.export.convert.modelfile import build_modelfile, validate_file
    from toolkit.export.convert.modelfile import write as write_mf

    mf = validate_file(path)
    existing = {k: v for k, v in mf.parameters.items() if k != "stop"}
    options = params.to_ollama_options()
    options.pop("stop", None)
    if only is not None:
        options = {SPECS[k].ollama: options[SPECS[k].ollama] for k in only if SPECS[k].ollama}
    text = build_modelfile(from_=mf.model, template=mf.template, stops=mf.stops, system=mf.system,
                           parameters={**existing, **options}, license="\n".join(mf.licenses) or None)
    return write_mf(path, text)


def _without_password(url: str) -> str:
    """The storage URL for reports: a PostgreSQL password does not belong in a shared report."""
    import re

    return re.sub(r"://([^:/@]+):[^/]*@", r"://\1:***@", url)


def _load_against(folder: Path) -> dict:
    try:
        other = json.loads((folder / "best.json").read_text())
    except (OSError, ValueError):
        other = {}
    if not {"study", "search_best_value", "search_generations", "search_trials"} <= set(other):
        raise ConfigError(f"{folder / 'best.json'} is missing or from an older toolkit",
                          fix="pass the results directory of a finished sweep (run it without --no-noise)")
    return other


def _examples_with_references(data: Path, n: int) -> list:
    from toolkit.data.records.records import load_examples

    examples = load_examples(data)
    if not examples:
        raise DataError("the split has no examples", path=data, fix="build it with `toolkit data build`")
    missing = [ex.id for ex in examples[:n] if not ex.response.strip()]
    if missing:
        raise DataError(f"example {missing[0]} has no reference response ({len(missing)} of the first {n} lack one)",
                        path=data, fix="a sweep scores against references: use a built split or a QA file with answers")
    return examples[:n]


def sweep(sweep_file: Path, model: str = "smollm2", data: Path = Path("runs/demo/data/validation.jsonl"),
          backend: str = "llamacpp", url: str = "", out: Path | None = None, storage: str = "", study: str = "",
          trials: int = 0, prompts: int = 0, modelfile: Path | None = None, noise: bool = True,
          against: Path | None = None, parallel: int = 0) -> int:
    """Search decoding parameters with Optuna, scored by BERTScore (or ROUGE-L/BLEU) against references.

    Re-running the same command continues the study (completed trials are kept); several workers
    can share one study through --storage postgresql://... . Writes trials.csv, best.json,
    best.yaml, per_prompt.csv, plots/ and report.md, and with --modelfile rewrites its PARAMETERs.

    Args:
        sweep_file: a sweep YAML (see sweeps/), or the name of a shipped one (e.g. joint-tpe).
        model: the model: embedded name or .gguf (llamacpp), Ollama model name (ollama), served name (openai).
        data: a split with references (a built validation.jsonl, or a QA file).
        backend: llamacpp, ollama or openai.
        url: server URL for the ollama/openai backends.
        out: results directory (default: runs/sweeps/<sweep name>).
        storage: Optuna storage URL (default: sqlite:///OUT/study.db).
        study: study name (default: the sweep's name).
        trials: override the number of finished trials wanted.
        prompts: override the prompts per trial.
        modelfile: a Modelfile to rewrite with the chosen PARAMETER values.
        noise: re-run the top trials and the default with several seeds and compare them.
        against: another sweep's results directory (same prompts and seed): the report sets this
            search's best value and generation count beside its own.
        parallel: generations at once (0 = the backend's default: 16 llama.cpp slots, or one request
            at a time to a server; set it to the server's own parallel setting). The same
            command with the same --parallel gives the same trials.
    """
    from toolkit.console import err
    from toolkit.evaluate.metrics import MetricSuite
    from toolkit.runtime.backends import check_parallel, open_backend

    cfg = load_sweep(sweep_file)
    if parallel:
        check_parallel(parallel)  # before the study or any output exists
    cfg.trials = trials or cfg.trials
    cfg.prompts = prompts or cfg.prompts
    examples = _examples_with_references(Path(data), cfg.prompts)
    if modelfile is not None and not Path(modelfile).exists():
        raise ConfigError(f"Modelfile {modelfile} does not exist", fix="export the model first or drop --modelfile")
    other = _load_against(Path(against)) if against else None
    out = Path(out) if out else Path("runs") / "sweeps" / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    fingerprint = {"model": model, "backend": backend, "prompts": [ex.id for ex in examples], "sweep": cfg.to_dict() | {"trials": None}}
    optuna_study = open_study(cfg, storage, study or cfg.name, fingerprint=json.loads(json.dumps(fingerprint)))
    start = time.perf_counter()
    with open_backend(backend, model, n_ctx=cfg.base_params().num_ctx, url=url or None, parallel=parallel or None) as engine:
        ev = Evaluator(engine, [ex.prompt for ex in examples], [ex.response for ex in examples], cfg.metric,
                       MetricSuite(cfg.scorer))
        run_trials(optuna_study, cfg, ev)
        if not noise:
            err.print(f"{len(finished(optuna_study))} trials in {storage}")
            return 0
        result = noise_check(optuna_study, cfg, ev)
    best = write_outputs(optuna_study, cfg, out, result, generations=ev.generations, seconds=time.perf_counter() - start,
                         storage=_without_password(storage),
                         against=other)
    print_summary(optuna_study, cfg, result)
    if modelfile is not None:
        label, chosen = chosen_params(result, cfg)
        rewrite_modelfile(Path(modelfile), DEFAULTS.replace(**chosen), only=chosen)
        why = f"{label}'s values" if label != "default" else "the default values: no trial beat them beyond noise"
        err.print(f"{modelfile}: PARAMETER {', '.join(f'{k} {v}' for k, v in chosen.items())} ({why})")
    err.print(f"[bold]{best['verdict']}[/]", soft_wrap=True)
    err.print(f"report: {out / 'report.md'}")
    return 0


def print_summary(study, cfg: SweepConfig, noise: dict) -> None:
    from rich.table import Table

    from toolkit.console import out

    table = Table(title=f"sweep {cfg.name}: re-run with seeds {cfg.rerun_seeds}")
    table.add_column("candidate")
    for name in cfg.space:
        table.add_column(name, justify="right")
    table.add_column("mean", justify="right")
    table.add_column("95% CI", justify="right")
    for label, row in noise["candidates"].items():
        ci = row["ci"]
        style = "bold green" if label == noise["best"] else None
        table.add_row(label, *[str(row["params"][k]) for k in cfg.space], f"{ci['mean']:.4f}",
                      f"[{ci['low']:.4f}, {ci['high']:.4f}]", style=style)
    out.print(table)

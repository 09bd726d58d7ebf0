"""Running a sweep's study: Optuna storage (SQLite or PostgreSQL), sampler and pruner, and the
stream of trials through the backend.

The study lives in SQLite beside the results (or any Optuna storage URL, e.g. PostgreSQL for many
workers), so `kill -9` and re-running the same command continues it. Per trial the prompts are
generated in chunks; after each chunk the running mean is reported so Optuna's median pruner can
stop a trial that cannot beat the median.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import ConfigError
from toolkit.evaluate.metrics import objective_scores
from toolkit.evaluate.stats import bootstrap_mean
from toolkit.evaluate.sweep.config import SweepConfig
from toolkit.params import DecodingParams


@dataclass
class Evaluator:
    """Generates for a fixed prompt set and scores against its references; loaded once per worker."""

    backend: Any
    prompts: list[str]
    references: list[str]
    metric: dict[str, float]
    suite: Any
    generations: int = 0

    def evaluate_many(self, requests: list[tuple[DecodingParams, list[int]]]) -> list[list[float]]:
        """Several (parameters, prompt indices) requests decoded in one batch and scored in one call
        (a backend with parallel slots keeps them full across trials): each request's scores."""
        jobs = [(r, params, i) for r, (params, indices) in enumerate(requests) for i in indices]
        gens = self.backend.generate_batch([self.conversation(i) for _, _, i in jobs], [params for _, params, _ in jobs])
        self.generations += len(gens)
        scores = self.score(gens, [i for _, _, i in jobs])  # one scorer call for all
        return [[scores[k] for k, (owner, _, _) in enumerate(jobs) if owner == r] for r in range(len(requests))]

    def score(self, gens: list, indices: list[int]) -> list[float]:
        """Objective value per generation (against the references of prompts `indices`)."""
        return objective_scores(self.suite.score([g.text for g in gens], [self.references[i] for i in indices],
                                                 tuple(self.metric)), self.metric)

    def conversation(self, i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompts[i]}]


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
    """A race's WilcoxonPruner (per-prompt paired test, see race.py); else median pruning over
    prompt chunks after `startup_trials` complete ones, or none."""
    import optuna

    if cfg.mode == "race":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" since Optuna 3.6
            return optuna.pruners.WilcoxonPruner(p_threshold=cfg.race.prune_p)
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

        t, idx = self.live[n], self.chunks[step]
        gens = [t.got[step][i] for i in idx]
        t.scores += self.ev.score(gens, idx)
        t.tokens += sum(g.completion_tokens for g in gens)
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


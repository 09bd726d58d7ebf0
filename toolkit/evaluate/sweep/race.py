"""Racing a sweep (mode: race): every candidate against the default, paired, stopping as soon as the
answer to "does any setting beat the default beyond noise, and which?" is known.

The default (trial 0, role `default`) is scored on every prompt first. Candidates (a grid's cells in
an order fixed by the sampler seed, or a sampler's proposals) then run in waves: a wave's
candidates are scored chunk by chunk on the same prompts (an order fixed by the seed) with the same
generation seed, and after each chunk every candidate is judged against the default on the prompts
scored so far (see `judge`):

- beyond noise (diff > 0, its bootstrap interval above 0, Wilcoxon p below alpha/m: Holm's bar for
  the first rejection among the m candidates) and confirmed on the re-run seeds: *found*, the race
  stops;
- worse than the default by Optuna's WilcoxonPruner (one-sided, p < prune_p): out;
- futile: its conditional power of beating the default once every prompt is scored is below
  `futility` (or its upper bound is below `min_effect`): out.

Every judgement compares a candidate with the default only, so a candidate's fate depends on its
own scores alone: waves, workers and a `kill -9` and re-run cannot change it. When every candidate
is out the decision is *nothing to gain*; a budget stop says which way it was heading. The
decision is read back from the study (decision.py), so any worker or re-run gives the same one.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

from toolkit.evaluate.stats import paired
from toolkit.evaluate.sweep.config import SweepConfig
from toolkit.evaluate.sweep.decision import DEFAULT, decide, judge, prompt_order, spent
from toolkit.evaluate.sweep.study import STALE_WAIT, Evaluator


def grid_cells(cfg: SweepConfig) -> list[dict] | None:
    """A grid's (or value list's) cells in the race's order, or None for a sampled space."""
    if cfg.sampler != "grid":
        return None
    grid = cfg.grid_space()
    cells = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    random.Random(cfg.sampler_seed).shuffle(cells)
    return cells


@dataclass
class _Cand:
    """A candidate being raced in this process."""

    trial: Any
    params: Any  # DecodingParams
    index: int
    scores: list[float] = field(default_factory=list)  # in prompt order
    beat: Any = None


def run_race(study, cfg: SweepConfig, ev: Evaluator) -> dict:
    """Race until decided (or the budget runs out); the decision (decision.py) with what the report needs."""
    return _Race(study, cfg, ev).run()


class _Race:
    def __init__(self, study, cfg: SweepConfig, ev: Evaluator):
        self.study, self.cfg, self.ev = study, cfg, ev
        self.order = prompt_order(len(ev.prompts), cfg.sampler_seed)
        k = cfg.race.chunk
        self.chunks = [self.order[i:i + k] for i in range(0, len(self.order), k)]
        self.cells = grid_cells(cfg)
        self.m = len(self.cells) if self.cells is not None else cfg.trials
        self.start = time.perf_counter()
        self.budget_hit = ""  # which budget ran out, once one has

    def run(self) -> dict:
        import warnings

        from toolkit.console import progress

        longest = max([self.cfg.default_params().max_tokens]
                      + ([int(self.cfg.space["max_tokens"].largest())] if "max_tokens" in self.cfg.space else []))
        self.ev.backend.reserve([self.ev.conversation(i) for i in range(len(self.ev.prompts))], longest)
        self.await_killed()
        waited = 0.0
        with warnings.catch_warnings(), progress() as bar:
            warnings.filterwarnings("ignore", message=".*(experimental|Heartbeat of storage|GridSampler).*")
            task = bar.add_task(f"race {self.cfg.name}", total=self.m, info="")
            while not self.budget_hit:
                state = decide(self.study, self.cfg, len(self.ev.prompts), self.m)
                bar.update(task, completed=state["raced"], info=f"{state['generations']} generations")
                if state["decision"] in ("found", "nothing to gain"):
                    break
                wave = self.claim()
                if wave is None:  # another worker's (or a killed one's) trials hold the rest
                    if waited >= STALE_WAIT * 3:
                        break
                    time.sleep(5)
                    waited += 5
                    continue
                waited = 0.0
                self.race(wave)
        return decide(self.study, self.cfg, len(self.ev.prompts), self.m, budget_hit=self.budget_hit)

    # --- claiming work -------------------------------------------------------------------------

    def await_killed(self) -> None:
        """Before claiming anything, let the trials running when this run started end, or fail
        and come back as retries once their heartbeat is stale (a killed run's): the re-run then
        finishes the interrupted wave before starting the next, as the uninterrupted run did."""
        import optuna
        from optuna.trial import TrialState

        running = {t.number for t in self.trials(TrialState.RUNNING)}
        deadline = time.monotonic() + STALE_WAIT * 3
        while running and time.monotonic() < deadline:
            optuna.storages.fail_stale_trials(self.study)
            if not running & {t.number for t in self.trials(TrialState.RUNNING)}:
                return
            time.sleep(2)

    def trials(self, *states):
        return self.study.get_trials(deepcopy=False, states=states or None)

    def claim(self) -> list[_Cand] | None:
        """The next wave: up to `wave` candidates (after scoring the default if no trial holds it
        yet); None when nothing is free to claim (other workers hold the rest)."""
        import optuna
        from optuna.trial import TrialState

        optuna.storages.fail_stale_trials(self.study)  # a killed worker's trials are retried
        if self.default_trial() is None:
            self.score_default()
        live = [t for t in self.trials() if t.state != TrialState.FAIL]
        if not any(t.state == TrialState.WAITING for t in live):  # retried trials go first, as one wave
            self.enqueue_cells(live)
        wave: list[_Cand] = []
        while len(wave) < self.cfg.race.wave:
            waiting = self.trials(TrialState.WAITING)
            if not waiting and (self.cells is not None or self.candidates_asked() >= self.m):
                break
            wave.append(self.pop())
        return wave or None

    def enqueue_cells(self, live) -> None:
        """Queue the cells of a grid's first wave that still has cells no trial holds. Waves are
        fixed (cells [w*wave, (w+1)*wave) of the race order), so a re-run after a kill races the
        interrupted wave's remaining cells together, as the uninterrupted run did."""
        if self.cells is None:
            return
        taken = {t.user_attrs.get("candidate") for t in live}
        free = [i for i in range(len(self.cells)) if i not in taken]
        if not free:
            return
        w = free[0] // self.cfg.race.wave
        for i in free:
            if i // self.cfg.race.wave == w:
                self.study.enqueue_trial(self.cells[i], user_attrs={"role": "candidate", "candidate": i})

    def candidates_asked(self) -> int:
        from optuna.trial import TrialState

        return sum(t.user_attrs.get("role") == "candidate" for t in self.trials() if t.state != TrialState.FAIL)

    def pop(self) -> _Cand:
        """Ask the study for a candidate: a queued grid cell, a retried trial or the sampler's proposal."""
        from optuna.storages._heartbeat import get_heartbeat_thread

        trial = self.study.ask()
        beat = get_heartbeat_thread(trial._trial_id, self.study._storage)
        beat.__enter__()
        suggested = {name: dim.suggest(trial) for name, dim in self.cfg.space.items()}
        index = trial.user_attrs.get("candidate")
        if index is None:  # a sampler's proposal (or a grid cell a racing worker drew)
            index = self.cells.index(suggested) if self.cells is not None and suggested in self.cells else trial.number
            trial.set_user_attr("role", "candidate")
            trial.set_user_attr("candidate", index)
        return _Cand(trial, self.cfg.base_params().replace(**suggested), index, beat=beat)

    # --- scoring -------------------------------------------------------------------------------

    def score_default(self) -> None:
        """Score the default on every prompt and store it as a finished trial in one step (trial 0
        of a new study): a kill before that leaves nothing half-done."""
        import optuna

        scores = self.ev.evaluate_many([(self.cfg.default_params(), self.order)])[0]
        if self.default_trial() is not None:  # another worker stored it meanwhile (the same scores)
            return
        self.study.add_trial(optuna.trial.create_trial(
            value=sum(scores) / len(scores), intermediate_values=dict(zip(self.order, scores)),
            user_attrs={"role": DEFAULT, "scores": scores}))

    def race(self, wave: list[_Cand]) -> None:
        """Score the wave chunk by chunk, judging every candidate after each chunk."""
        default = self.default_trial()
        live = list(wave)
        try:
            for chunk in self.chunks:
                if not live:
                    return
                if self.stop_now():
                    for c in live:
                        self.end(c, "budget" if self.budget_hit else "stopped")
                    return
                results = self.ev.evaluate_many([(c.params, chunk) for c in live])
                for c, scores in zip(live, results):
                    for i, v in zip(chunk, scores):
                        c.trial.report(v, step=i)
                    c.scores += scores
                    c.trial.set_user_attr("scores", c.scores)
                for c in sorted(live, key=lambda c: c.index):
                    standing = judge(c.scores, default, self.cfg, self.m)
                    c.trial.set_user_attr("standing", standing)
                    outcome = standing["outcome"]
                    if outcome == "significant":
                        if self.confirm(c, default):
                            self.end(c, "found")
                            for other in live:
                                if other.trial is not None:
                                    self.end(other, "stopped")
                            return
                        outcome = "unconfirmed"
                    if outcome != "alive" or len(c.scores) == len(self.order):
                        self.end(c, outcome if outcome != "alive" else "not beyond noise")
                live = [c for c in live if c.trial is not None]
        except BaseException:
            from optuna.trial import TrialState

            for c in live:  # not told yet: failed, so no trial stays RUNNING (a re-run retries it)
                if c.trial is not None:
                    c.beat.__exit__(None, None, None)
                    self.study.tell(c.trial, state=TrialState.FAIL)
                    c.trial = None
            raise

    def default_trial(self):
        """The (first) stored default trial, or None."""
        from optuna.trial import TrialState

        return next((t for t in self.trials(TrialState.COMPLETE) if t.user_attrs.get("role") == DEFAULT), None)

    def confirm(self, c: _Cand, default) -> bool:
        """Re-score the candidate on the prompts scored so far with the re-run seeds, seeds it was
        not selected on (the default was not selected, so its scores stand); confirmed when the
        paired test of the candidate's mean over those seeds against the default still says better."""
        prompts = self.order[: len(c.scores)]
        seeds = [s for s in self.cfg.rerun_seeds if s != self.cfg.seed] or [self.cfg.seed + 1]
        runs = self.ev.evaluate_many([(c.params.replace(seed=s), prompts) for s in seeds])
        mean = [sum(col) / len(col) for col in zip(*runs)]
        base = default.user_attrs["scores"][: len(prompts)]
        cmp = paired(base, mean, resamples=max(self.cfg.bootstrap, 2000))
        ok = cmp.significant and cmp.diff.mean > 0
        c.trial.set_user_attr("confirm", {"seeds": seeds, "prompts": len(prompts), "default": base, "candidate": mean,
                                          "comparison": cmp.to_dict(), "generations": len(seeds) * len(prompts),
                                          "confirmed": ok})
        return ok

    def end(self, c: _Cand, outcome: str) -> None:
        """Tell a candidate's trial: COMPLETE when found or scored on every prompt, PRUNED when out
        or stopped, FAIL when the budget stopped it (a re-run with more budget races it again)."""
        from optuna.trial import TrialState

        c.trial.set_user_attr("outcome", outcome)
        c.beat.__exit__(None, None, None)
        mean = sum(c.scores) / len(c.scores) if c.scores else None
        if outcome == "budget":
            self.study.tell(c.trial, state=TrialState.FAIL)
        elif outcome == "found" or len(c.scores) == len(self.order):
            self.study.tell(c.trial, mean, state=TrialState.COMPLETE)
        else:
            self.study.tell(c.trial, state=TrialState.PRUNED)
        c.trial = None

    def stop_now(self) -> bool:
        """Another worker found a winner, or this run's budget is spent."""
        trials = self.trials()
        if any(t.user_attrs.get("outcome") == "found" for t in trials):
            return True
        budget = self.cfg.race
        if budget.max_generations and spent(trials) >= budget.max_generations:
            self.budget_hit = f"{budget.max_generations} generations"
        elif budget.max_seconds and time.perf_counter() - self.start >= budget.max_seconds:
            self.budget_hit = f"{budget.max_seconds:g} s of wall time"
        return bool(self.budget_hit)

"""`toolkit train search`: Optuna over LoRA settings. Each trial is a short training run whose
final validation loss is the objective; trials trailing the median are pruned; the study lives in
SQLite so a re-run continues it; the best trial's settings are written as a train config.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError
from toolkit.io import write_text
from toolkit.space import Dimension, parse_space
from toolkit.train.config import TrainConfig, coerce, field_type, load_config, read_yaml, recipe_path
from toolkit.train.loop import run_training

SEARCHABLE = ("lr", "r", "alpha", "dropout", "weight_decay", "warmup_ratio", "batch_size", "grad_accum", "lr_scheduler", "max_grad_norm")


def load_space(spec: str | os.PathLike) -> list[Dimension]:
    """The search space from YAML: `option: {low, high, log?, step?}` or `option: {choices: [...]}`;
    values typed as the option (whole numbers for r, floats unrounded)."""
    path = recipe_path(spec)
    # numbers by their type; a Literal option (lr_scheduler) is searched over named choices
    types = {name: field_type(name) if field_type(name) in (int, float) else str for name in SEARCHABLE}
    dims = parse_space(read_yaml(path), where=str(path), types=types, key="",
                       valid_hint=f"searchable options: {', '.join(SEARCHABLE)}", check=_check_value)
    return list(dims.values())


def _check_value(name: str, value: Any, *, where: str) -> None:
    """A searched value must be one the option itself accepts (a known scheduler name, say)."""
    try:
        coerce(name, value)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc.message}", fix=exc.fix) from None


def search(
    space: str = "search-space",
    config: str | None = None,
    trials: int = 8,
    trial_steps: int = 30,
    eval_every: int = 10,
    out: str = "runs/search",
    study: str = "lora",
    seed: int = 0,
    model: str | None = None,
    train_data: str | None = None,
    validation_data: str | None = None,
    max_length: int | None = None,
) -> dict:
    """Search LoRA settings (lr, r, alpha, dropout, ...) with Optuna; write the best as a train config.

    Each trial is a short `toolkit train` run on the base config with sampled values; its objective
    is the final validation loss, and trials whose intermediate validation losses trail the median
    are pruned. The study lives in OUT/study.db (SQLite): re-running continues it up to --trials
    finished trials without losing any. The best trial's settings, with the base config's full step
    budget, go to OUT/best.yaml, ready for `toolkit train --config OUT/best.yaml`.

    Args:
        space: YAML search space (file or recipe name): option: {low, high, log} or {choices: [...]}.
        config: base train config (YAML file or recipe name); its values fill everything not searched.
        trials: finished trials (complete or pruned) the study should hold when done.
        trial_steps: optimizer steps per trial.
        eval_every: validation loss (reported to the pruner) every N steps of a trial.
        out: search directory: study.db, trials/, best.yaml.
        study: study name inside study.db.
        seed: seed of the sampler and of every trial's training.
        model: base model (overrides the config).
        train_data: training examples (overrides the config).
        validation_data: validation examples, the objective (overrides the config).
        max_length: longest tokenized example (overrides the config).
    """
    import optuna

    from toolkit.console import err

    dims = load_space(space)
    base = load_config(config, model=model, train_data=train_data, validation_data=validation_data, max_length=max_length, seed=seed)
    if not base.validation_data:
        raise ConfigError("the search needs validation data (its objective)", fix="pass --validation-data FILE")
    if trial_steps < 1 or trials < 1 or eval_every < 1:
        raise ConfigError("trials, trial_steps and eval_every must be >= 1", fix="pass positive values")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(root / 'study.db').resolve()}")
    study_obj = optuna.create_study(
        study_name=study, storage=storage, direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=eval_every))
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for stale in study_obj.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # left RUNNING by a killed search (one search per study at a time): it will never finish
        storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
    done = len(study_obj.get_trials(deepcopy=False, states=finished_states))
    if done:
        err.print(f"study {study!r} in {root / 'study.db'} already has {done} finished trials")

    def objective(trial: optuna.Trial) -> float:
        values = {d.name: d.suggest(trial) for d in dims}
        run_dir = root / "trials" / f"trial-{trial.number:04d}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a trial cut short by a kill is redone, not resumed
        cfg = base.replace(**values, out=str(run_dir), max_steps=trial_steps, eval_every=eval_every, save_every=0, stop_after=0)
        err.print(f"[bold]trial {trial.number}[/]: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        trial.set_user_attr("run_dir", str(run_dir))

        def report(step: int, val_loss: float) -> None:
            if step == 0:
                return
            trial.report(val_loss, step)
            if trial.should_prune():
                err.print(f"  trial {trial.number} pruned at step {step} (val loss {val_loss:.4f})")
                raise optuna.TrialPruned()

        result = run_training(cfg, on_eval=report, show_progress=True)
        final = result.val_losses[max(result.val_losses)]
        err.print(f"  trial {trial.number}: val loss {final:.4f}")
        return final

    remaining = trials - done
    if remaining > 0:
        study_obj.optimize(objective, n_trials=remaining, catch=())
    return _write_best(study_obj, base, root, trials)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _write_best(study_obj, base: TrainConfig, root: Path, trials: int) -> dict:
    import optuna

    from toolkit.console import out as stdout

    complete = study_obj.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    all_trials = study_obj.get_trials(deepcopy=False)
    if not complete:
        raise ConfigError(f"no trial of study {study_obj.study_name!r} completed (all pruned or failed)",
                          fix="run more --trials or widen the space")
    best = study_obj.best_trial
    cfg = base.replace(**best.params, out=str(root / "best"))
    header = (f"Best of {len(complete)} completed trials (study {study_obj.study_name!r} in {root / 'study.db'}):\n"
              f"trial {best.number}, validation loss {best.value:.4f}.\n"
              f"Train it with: toolkit train --config {root / 'best.yaml'}")
    write_text(root / "best.yaml", cfg.to_yaml(header))
    for t in sorted(all_trials, key=lambda t: t.number):
        state = t.state.name.lower()
        value = f"{t.value:.4f}" if t.value is not None else "-"
        stdout.print(f"trial {t.number:>3}  {state:<8}  val {value:<8}  " + ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()),
                     highlight=False)
    stdout.print(f"best: trial {best.number} (val loss {best.value:.4f}) -> {root / 'best.yaml'}", highlight=False)
    return {"best_trial": best.number, "best_value": best.value, "params": dict(best.params), "best_config": str(root / "best.yaml"),
            "trials": len(all_trials), "complete": len(complete)}

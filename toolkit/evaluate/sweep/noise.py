"""After a sweep's search: re-run the default and the best trials with several seeds, compare them
pairwise, and say plainly whether the best beats the default beyond noise.
"""

from __future__ import annotations

from toolkit.evaluate.stats import bootstrap_mean, paired
from toolkit.evaluate.sweep.config import SweepConfig
from toolkit.evaluate.sweep.study import Evaluator


def noise_check(study, cfg: SweepConfig, ev: Evaluator) -> dict:
    """Re-run the default and the top trials with several seeds on every prompt; compare best vs default."""
    import optuna

    from toolkit.console import status

    base = cfg.default_params()
    complete = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                      key=lambda t: (-t.value, t.number))[: cfg.rerun_top]
    candidates = [("default", base)] + [(f"trial {t.number}", cfg.base_params().replace(**trial_params(t))) for t in complete]
    everyone = list(range(len(ev.prompts)))
    rows = {}
    with status(f"re-running the default and the top {len(complete)} trials with seeds {cfg.rerun_seeds}"):
        runs = ev.evaluate_many([(params.replace(seed=s), everyone) for _, params in candidates for s in cfg.rerun_seeds])
        for c, (label, params) in enumerate(candidates):
            per_seed = runs[c * len(cfg.rerun_seeds):(c + 1) * len(cfg.rerun_seeds)]
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
    if "race" in noise:  # a race's decision, Holm-corrected and confirmed, says it
        label = noise["best"] if noise["race"]["decision"] == "found" else "default"
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


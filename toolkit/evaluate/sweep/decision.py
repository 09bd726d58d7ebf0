"""A race's judgements and decision (see race.py): how one candidate stands against the default
after a chunk, the decision read back from the study's trials, and the results the report shows.

Everything here is read from stored trials, so every worker and every re-run of a study reaches the
same decision from the same trials.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

from toolkit.evaluate.stats import bootstrap_mean, conditional_power, paired, prompts_needed
from toolkit.evaluate.sweep.config import SweepConfig

DEFAULT = "default"  # the role of trial 0, the baseline
DECIDED = ("found", "nothing to gain")


def prompt_order(n: int, seed: int) -> list[int]:
    """The prompts in the order every trial of a race scores them (fixed by the seed)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def judge(scores: list[float], default, cfg: SweepConfig, m: int) -> dict:
    """How a candidate scored on the first len(scores) prompts of the race order stands against the
    default trial (scored on all of them): significant, worse, futile or alive, with the numbers.

    significant: better beyond noise, Holm's bar for the first rejection among m (p < alpha/m);
    worse: Optuna's WilcoxonPruner (one-sided, p < prune_p) against the default;
    futile: conditional power below `futility` at alpha/m, or its 95% upper bound below min_effect.
    """
    import optuna

    base = default.user_attrs["scores"]
    n, settings = len(scores), cfg.race
    cmp = paired(base[:n], scores, resamples=cfg.bootstrap)
    alpha = settings.alpha / m
    power = conditional_power([b - a for a, b in zip(base, scores)], len(base), alpha=alpha)
    order = prompt_order(len(base), cfg.sampler_seed)
    me = SimpleNamespace(number=-1, intermediate_values=dict(zip(order, scores)))
    against = SimpleNamespace(best_trial=SimpleNamespace(number=default.number, intermediate_values=dict(zip(order, base))),
                              direction=optuna.study.StudyDirection.MAXIMIZE)
    worse = optuna.pruners.WilcoxonPruner(p_threshold=settings.prune_p).prune(against, me)
    if cmp.diff.mean > 0 and cmp.diff.low > 0 and cmp.p_value < alpha:
        outcome = "significant"
    elif worse:
        outcome = "worse"
    elif power < settings.futility or (settings.min_effect > 0 and cmp.diff.high < settings.min_effect):
        outcome = "futile"
    else:
        outcome = "alive"
    return {"prompts": n, "diff": cmp.diff.mean, "low": cmp.diff.low, "high": cmp.diff.high, "sd": cmp.sd_diff,
            "p": cmp.p_value, "power": power, "outcome": outcome}


def spent(trials) -> int:
    """Generations spent on a study's trials (every worker, run and retry, confirmations too)."""
    return sum(len(t.user_attrs.get("scores", [])) + t.user_attrs.get("confirm", {}).get("generations", 0) for t in trials)


def exhaustive_generations(cfg: SweepConfig, prompts: int, m: int) -> int:
    """What the exhaustive run of the same question costs: the default and every candidate on every
    prompt, then the default and the best re-run with the re-run seeds."""
    return (m + 1) * prompts + 2 * len(cfg.rerun_seeds) * prompts


def decide(study, cfg: SweepConfig, prompts: int, m: int, *, budget_hit: str = "") -> dict:
    """The race's decision as its stored trials say: found, nothing to gain, budget or undecided."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.user_attrs.get("role") == "candidate" and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and t.user_attrs.get("outcome") not in (None, "stopped")]
    found = sorted((t for t in done if t.user_attrs["outcome"] == "found"),
                   key=lambda t: (t.user_attrs["confirm"]["comparison"]["p_value"], t.user_attrs["candidate"]))
    raced = {t.user_attrs["candidate"] for t in done}
    generations = spent(trials)
    exhaustive = exhaustive_generations(cfg, prompts, m)
    result = {"decision": "undecided", "candidates": m, "raced": len(raced), "sampled": cfg.sampler != "grid",
              "prompts": prompts, "generations": generations, "exhaustive_generations": exhaustive,
              "share": generations / exhaustive, "alpha": cfg.race.alpha, "alpha_each": cfg.race.alpha / m,
              "futility": cfg.race.futility, "prune_p": cfg.race.prune_p, "min_effect": cfg.race.min_effect,
              "outcomes": {o: sum(t.user_attrs["outcome"] == o for t in done) for o in sorted({t.user_attrs["outcome"] for t in done})}}
    if found:
        t = found[0]
        result |= {"decision": "found", "trial": t.number, "params": _searched(t), "standing": t.user_attrs["standing"],
                   "confirm": {k: v for k, v in t.user_attrs["confirm"].items() if k not in ("default", "candidate")}}
    elif len(raced) >= m:
        result["decision"] = "nothing to gain"
    elif budget_hit:
        result |= {"decision": "budget", "budget": budget_hit} | _heading(trials, raced, cfg, m, prompts)
    result["sentence"] = sentence(result)
    return result


def _searched(trial) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in trial.params.items()}


def _heading(trials, raced: set, cfg: SweepConfig, m: int, prompts: int) -> dict:
    """Where a budget-stopped race was going: its leader (highest conditional power) and how many
    more prompts that leader needs."""
    open_ = [t for t in trials if t.user_attrs.get("outcome") == "budget" and t.user_attrs.get("candidate") not in raced
             and "standing" in t.user_attrs]
    if not open_:
        return {"heading": "nothing to gain", "open": 0, "still_needed": None}
    lead = max(open_, key=lambda t: (t.user_attrs["standing"]["power"], -t.number))
    s = lead.user_attrs["standing"]
    heading = "found" if s["power"] >= 0.5 else "nothing to gain"
    need = prompts_needed(s["diff"], s["sd"], alpha=cfg.race.alpha / m) if heading == "found" else None
    return {"heading": heading, "open": len({t.user_attrs["candidate"] for t in open_}), "leader": lead.number,
            "leader_power": s["power"], "leader_prompts": s["prompts"],
            "still_needed": max(0, need - s["prompts"]) if need else prompts - s["prompts"]}


def sentence(r: dict) -> str:
    """The decision and its cost, in one sentence: what the report leads with."""
    cost = f"after {r['generations']} generations ({r['share']:.0%} of an exhaustive run of this space on these prompts)"
    scope = (f" The decision covers the {r['raced']} candidates the sampler tried within the trial budget, not the whole space."
             if r["sampled"] else "")
    if r["decision"] == "found":
        s, c = r["standing"], r["confirm"]["comparison"]
        return (f"decided *found* {cost}: trial {r['trial']} ({_params(r['params'])}) beats the default by {s['diff']:+.4f} "
                f"[{s['low']:+.4f}, {s['high']:+.4f}] over {s['prompts']} prompts (Wilcoxon p={s['p']:.3g} < alpha/m="
                f"{r['alpha_each']:.3g}), confirmed on seeds {r['confirm']['seeds']} ({c['diff']['mean']:+.4f}, p={c['p_value']:.3g})."
                + scope)
    if r["decision"] == "nothing to gain":
        o = r["outcomes"]
        return (f"decided *nothing to gain* {cost}: none of the {r['raced']} candidates beats the default beyond noise "
                f"({o.get('worse', 0)} worse by WilcoxonPruner p<{r['prune_p']:g}, {o.get('futile', 0)} futile: conditional "
                f"power below {r['futility']:.0%} at alpha/m={r['alpha_each']:.3g}"
                + (f" or below min_effect {r['min_effect']:g}" if r["min_effect"] else "")
                + f", {o.get('not beyond noise', 0)} scored on every prompt, {o.get('unconfirmed', 0)} not confirmed on the re-run seeds)."
                + scope)
    if r["decision"] == "budget":
        need = (f"about {r['still_needed']} more prompts for its leader (trial {r['leader']}, conditional power "
                f"{r['leader_power']:.0%} after {r['leader_prompts']} prompts)" if r.get("leader") is not None else "no candidate open")
        return (f"stopped by the budget ({r['budget']}) {cost}, undecided: heading for *{r['heading']}* with "
                f"{r['open']} candidates open; {need}.")
    return f"undecided {cost}: {r['raced']} of {r['candidates']} candidates raced (other workers may still be racing)."


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def race_results(study, cfg: SweepConfig, decision: dict) -> dict:
    """The race in the shape the report reads (noise.py's): default and best per prompt with
    intervals, their paired comparison, the verdict (the decision sentence), and the decision."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    default = next(t for t in trials if t.user_attrs.get("role") == DEFAULT and t.state == TrialState.COMPLETE)
    base = default.user_attrs["scores"]
    if decision["decision"] == "found":
        best = next(t for t in trials if t.number == decision["trial"])
        a, b = best.user_attrs["confirm"]["default"], best.user_attrs["confirm"]["candidate"]
    else:
        scored = [t for t in trials if t.user_attrs.get("role") == "candidate" and t.user_attrs.get("scores")
                  and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        best = max(scored, key=lambda t: (len(t.user_attrs["scores"]), t.user_attrs["standing"]["diff"]), default=None)
        b = best.user_attrs["scores"] if best else []
        a = base[: len(b)]
    rows = {DEFAULT: {"params": cfg.default_params().to_dict(), "per_prompt": a}}
    label = DEFAULT
    if best is not None:
        label = f"trial {best.number}"
        rows[label] = {"params": cfg.base_params().replace(**_searched(best)).to_dict(), "per_prompt": b}
    for row in rows.values():
        row["ci"] = bootstrap_mean(row["per_prompt"], resamples=cfg.bootstrap, seed=0).to_dict()
    cmp = paired(a, b if best else a, resamples=max(cfg.bootstrap, 2000))
    return {"candidates": rows, "best": label, "comparison": cmp.to_dict(), "verdict": decision["sentence"], "race": decision}

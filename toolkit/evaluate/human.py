"""The human result in `toolkit compare`: what the blind ratings of `toolkit rate` say.

For each rated pair of systems: the second system's win rate against the first with a bootstrap
interval over prompts (a tie or "both unusable" counts half; several raters of one prompt are
averaged), a two-sided sign test on the prompts where the humans preferred one side, Cohen's kappa
for every two raters who rated the same pairs, and how often the headline metric's per-prompt
preference (`PRIMARY` in toolkit/evaluate/metrics.py, BERTScore F1) agrees with the humans' where
they preferred one side.

Ratings made on texts that differ from this run's outputs (the systems were regenerated) are left
out and counted as stale.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

from toolkit.evaluate.metrics import METRICS, PRIMARY
from toolkit.evaluate.ratings import DB_NAME, RatingStore
from toolkit.evaluate.stats import beats_chance, bootstrap_mean, cohen_kappa, sign_test

SCORE = {"second": 1.0, "tie": 0.5, "unusable": 0.5, "first": 0.0}


def canonical(rating: dict) -> str:
    """A rating in the plan's terms: `first` or `second` system better, `tie` or `unusable`."""
    choice = rating["choice"]
    if choice in ("tie", "unusable"):
        return choice
    shown = rating["shown_a"] if choice == "A" else rating["shown_b"]
    return "first" if shown == rating["system_1"] else "second"


def human_summary(folder: Path, result: dict, seed: int = 0) -> list[dict]:
    """The human result for every rated pair of systems in `result` (empty when nothing is rated)."""
    if not (Path(folder) / DB_NAME).is_file():
        return []
    rows = RatingStore(Path(folder)).ratings()
    labels = {s["label"] for s in result["systems"]}
    outputs = {ex["id"]: ex for ex in result["per_example"]}
    plans: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if {r["system_1"], r["system_2"]} <= labels:
            plans.setdefault((r["system_1"], r["system_2"]), []).append(r)
    return [_plan_summary(s1, s2, plan, outputs, seed) for (s1, s2), plan in plans.items()]


def _current(r: dict, outputs: dict) -> bool:
    ex = outputs.get(r["example_id"])
    return ex is not None and ex["outputs"][r["system_1"]]["text"] == r["text_1"] and ex["outputs"][r["system_2"]]["text"] == r["text_2"]


def _plan_summary(s1: str, s2: str, rows: list[dict], outputs: dict, seed: int) -> dict:
    fresh = [r for r in rows if _current(r, outputs)]
    labels: dict[str, dict[str, str]] = {}  # example id -> rater -> canonical label
    for r in fresh:
        labels.setdefault(r["example_id"], {})[r["rater"]] = canonical(r)
    per_prompt = {ex: statistics.fmean(SCORE[v] for v in by.values()) for ex, by in labels.items()}
    scores = list(per_prompt.values())
    wins = sum(s > 0.5 for s in scores)
    losses = sum(s < 0.5 for s in scores)
    counts = {k: sum(canonical(r) == k for r in fresh) for k in ("second", "tie", "first", "unusable")}
    # the headline metric's preference on the prompts where the humans preferred one side
    decisive = [(ex, s) for ex, s in per_prompt.items() if s != 0.5]
    agree = sum(_metric_prefers_second(outputs[ex]["outputs"], s1, s2) == (s > 0.5) for ex, s in decisive)
    raters = sorted({r["rater"] for r in fresh})
    return {
        "systems": [s1, s2], "ratings": len(fresh), "stale": len(rows) - len(fresh), "prompts": len(per_prompt),
        "raters": {name: sum(r["rater"] == name for r in fresh) for name in raters},
        "counts": {"wins": counts["second"], "ties": counts["tie"], "losses": counts["first"], "unusable": counts["unusable"]},
        "win_rate": bootstrap_mean(scores, seed=seed).to_dict(),
        "sign_test": {"wins": wins, "losses": losses, "p_value": sign_test(wins, losses)},
        "kappa": [_kappa(a, b, labels) for a, b in itertools.combinations(raters, 2)],
        # the key keeps its name whatever PRIMARY is: results.json readers look it up
        "bertscore_agreement": {"prompts": len(decisive), "agree": agree,
                                "rate": agree / len(decisive) if decisive else float("nan"),
                                "p_value": beats_chance(agree, len(decisive))},
        "labels": labels,
    }


def _metric_prefers_second(outputs: dict, s1: str, s2: str) -> bool:
    """Whether the headline metric scores `s2`'s answer strictly better than `s1`'s."""
    return METRICS[PRIMARY].better(outputs[s1][PRIMARY], outputs[s2][PRIMARY])


def _kappa(a: str, b: str, labels: dict[str, dict[str, str]]) -> dict:
    both = [(by[a], by[b]) for by in labels.values() if a in by and b in by]
    x, y = [p[0] for p in both], [p[1] for p in both]
    return {"raters": [a, b], "pairs": len(both), "kappa": cohen_kappa(x, y),
            "agreement": sum(p == q for p, q in both) / len(both) if both else float("nan")}


def _pct(ci: dict) -> str:
    return f"{ci['mean']:.0%} [{ci['low']:.0%}, {ci['high']:.0%}]"


def describe(h: dict) -> list[str]:
    """The human result of one pair of systems as sentences (shared by report.md and report.html)."""
    s1, s2 = h["systems"]
    c, st, ba = h["counts"], h["sign_test"], h["bertscore_agreement"]
    raters = ", ".join(f"{k} ({v})" for k, v in h["raters"].items())
    lines = [f"{s2} vs {s1}: {h['ratings']} blind ratings of {h['prompts']} prompts by {raters}.",
             f"Human win rate of {s2}: {_pct(h['win_rate'])} (95% bootstrap CI over prompts; ties and 'both unusable' count half); "
             f"{c['wins']} wins, {c['ties']} ties, {c['losses']} losses, {c['unusable']} both unusable.",
             f"Sign test over prompts: {st['wins']} preferred {s2}, {st['losses']} preferred {s1}, p={st['p_value']:.2g}"
             + (" (beyond chance)." if st["p_value"] < 0.05 else " (not beyond chance).")]
    for k in h["kappa"]:
        lines.append(f"Inter-rater agreement {k['raters'][0]} vs {k['raters'][1]}: Cohen's kappa {k['kappa']:.2f} "
                     f"on {k['pairs']} shared pairs (raw agreement {k['agreement']:.0%}).")
    if ba["prompts"]:
        lines.append(f"{METRICS[PRIMARY].label} picks the side the humans preferred on {ba['agree']} of {ba['prompts']} prompts ({ba['rate']:.0%}; "
                     f"one-sided binomial p={ba['p_value']:.2g} against a coin flip).")
    if h["stale"]:
        lines.append(f"{h['stale']} ratings were made on outputs that have since changed and are left out.")
    return lines


def render_markdown(humans: list[dict]) -> list[str]:
    lines = ["## Human ratings (blind, `toolkit rate`)", ""]
    for h in humans:
        lines += [f"- {line}" for line in describe(h)] + [""]
    return lines


def render_html(humans: list[dict]) -> str:
    import html

    items = "".join("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in describe(h)) + "</ul>" for h in humans)
    return f"<h2>Human ratings (blind, <code>toolkit rate</code>)</h2>{items}"

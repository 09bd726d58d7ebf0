"""The judge's numbers and how compare's report shows them.

Per system against the first: win / tie / loss (each prompt judged in both orders; a flip is a tie)
with a bootstrap interval on the win rate (ties half), the order-consistency rate, how often the
judge picked the answer shown first, a length-controlled win rate, and agreement with the blind
human ratings where they exist.

Length control (after AlpacaEval-LC): a logistic regression of the per-prompt verdict (1, ½, 0) on
tanh(token-length difference / its standard deviation), read at a length difference of zero, with a
bootstrap interval over prompts. A positive slope means the judge prefers the longer answer.
"""

from __future__ import annotations

import math
import statistics

from toolkit.evaluate.stats import bootstrap_mean, cohen_kappa, logistic_at_zero

LC_METHOD = ("logistic regression of the per-prompt verdict (win 1, tie ½, loss 0) on tanh(length difference in tokens / its SD), "
             "read at equal length; bootstrap 95% CI over prompts")
SCORE = {"second": 1.0, "tie": 0.5, "first": 0.0}


def combine(orders: list[str | None]) -> str:
    """One verdict from both orders: the same winner twice wins; anything else is a tie."""
    v1, v2 = orders
    return v1 if v1 == v2 and v1 in ("first", "second") else "tie"


def length_controlled(scores: list[float], lengths: list[tuple[int, int]], seed: int, resamples: int = 400) -> dict:
    """The win rate the judge would give at equal answer lengths, with its bootstrap interval."""
    import numpy as np

    diffs = [b - a for a, b in lengths]
    sd = statistics.pstdev(diffs) if len(diffs) > 1 else 0.0
    x = [math.tanh(d / sd) if sd > 0 else 0.0 for d in diffs]
    rate, slope = logistic_at_zero(x, scores)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(resamples if len(x) > 1 else 0):
        idx = rng.integers(0, len(x), len(x))
        boots.append(logistic_at_zero([x[i] for i in idx], [scores[i] for i in idx])[0])
    low, high = (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))) if boots else (rate, rate)
    return {"win_rate": {"mean": rate, "low": low, "high": high, "level": 0.95}, "slope": slope,
            "mean_length_difference": statistics.fmean(diffs) if diffs else 0.0, "method": LC_METHOD}


def human_agreement(ref: str, label: str, verdicts: dict[str, str], humans: list[dict]) -> dict | None:
    """Judge vs each human rating of the same prompt and systems: raw agreement and Cohen's kappa
    over three outcomes (ref better, tie, system better; 'both unusable' is a tie)."""
    plan = next((h for h in humans if set(h["systems"]) == {ref, label}), None)
    if plan is None:
        return None
    s1, s2 = plan["systems"]
    to_winner = {"first": s1, "second": s2, "tie": "tie", "unusable": "tie"}
    judge_winner = {"first": ref, "second": label, "tie": "tie"}
    pairs = [(judge_winner[verdicts[ex]], to_winner[h]) for ex, by in plan["labels"].items() if ex in verdicts for h in by.values()]
    if not pairs:
        return None
    j, h = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"ratings": len(pairs), "agreement": sum(a == b for a, b in pairs) / len(pairs), "kappa": cohen_kappa(j, h)}


def system_result(ref: str, label: str, judged: list[dict], lengths: list[tuple[int, int]], ids: list[str],
                  humans: list[dict], seed: int) -> dict:
    """The judge's verdicts on `label` against `ref` (items: first = ref, second = label)."""
    verdicts = [combine(j["orders"]) for j in judged]
    scores = [SCORE[v] for v in verdicts]
    letters = [x for j in judged for x in j["letters"] if x in ("A", "B")]
    return {
        "label": label, "vs": ref, "prompts": len(judged),
        "wins": verdicts.count("second"), "ties": verdicts.count("tie"), "losses": verdicts.count("first"),
        "win_rate": bootstrap_mean(scores, seed=seed).to_dict(),
        "order_consistency": sum(j["orders"][0] == j["orders"][1] for j in judged) / len(judged) if judged else float("nan"),
        "first_shown_picked": letters.count("A") / len(letters) if letters else float("nan"),
        "unreadable": sum(v is None for j in judged for v in j["letters"]),
        "length_controlled": length_controlled(scores, lengths, seed),
        "human_agreement": human_agreement(ref, label, dict(zip(ids, verdicts)), humans),
        "examples": [{"id": i, "verdict": v, "replies": j["raw"]} for i, v, j in list(zip(ids, verdicts, judged))[:3]],
    }


def _pct(ci: dict) -> str:
    return f"{ci['mean']:.0%} [{ci['low']:.0%}, {ci['high']:.0%}]"


def calibration_line(j: dict) -> str:
    c = j["calibration"]
    kinds = ", ".join(f"{v} {k}" for k, v in c["corruptions"].items())
    verdict = "passed" if c["passed"] else "FAILED"
    return (f"Calibration {verdict}: against a corrupted copy of the reference ({kinds}), judged in both orders, the judge preferred "
            f"the reference in {c['prefers_reference']} of {c['pairs']} pairs (score {c['score']:.0%}), the corrupted copy in "
            f"{c['prefers_corrupted']}, undecided in {c['undecided']}; one-sided sign test p={c['p_value']:.2g} "
            "(pass: p < 0.05 and the reference preferred in at least half the pairs).")


def warning(j: dict) -> str | None:
    """The plain statement shown when the judge is too weak to trust."""
    if j["trusted"]:
        return None
    few = " (too few prompts for the test to pass at all: at least 5 are needed)" if j["calibration"]["pairs"] < 5 else ""
    return (f"The judge {j['model']} is too weak to trust: it does not tell a reference answer from a corrupted copy beyond chance{few}. "
            "Its verdicts below are shown for diagnosis only and are not evidence either way.")


def rows(j: dict) -> list[list[str]]:
    out = []
    for s in j["systems"]:
        h = s["human_agreement"]
        lc = s["length_controlled"]
        out.append([f"{s['label']} vs {s['vs']}", f"{s['wins']} / {s['ties']} / {s['losses']}", _pct(s["win_rate"]),
                    f"{_pct(lc['win_rate'])} (slope {lc['slope']:+.2f})", f"{s['order_consistency']:.0%}",
                    f"{s['first_shown_picked']:.0%}", str(s["unreadable"]),
                    f"{h['agreement']:.0%}, κ {h['kappa']:.2f} ({h['ratings']})" if h else "no ratings"])
    return out


HEADER = ["system", "win / tie / loss", "win rate (ties ½)", "length-controlled win rate", "order consistency",
          "shown-first picked", "unreadable replies", "agreement with humans"]


def _intro(j: dict) -> str:
    where = f" at {j['url']}" if j["url"] else ""
    return (f"Judge: `{j['model']}` ({j['backend']}{where}), prompt {j['template']}, greedy, at most {j['params']['max_tokens']} tokens. "
            "Each pair is judged in both orders; a verdict that flips with the order counts as a tie.")


def render_markdown(j: dict) -> list[str]:
    lines = ["## Pairwise judge", "", _intro(j), "", calibration_line(j), ""]
    if warning(j):
        lines += [f"**{warning(j)}**", ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(j)]
    lines += ["", f"Length-controlled win rate: {LC_METHOD}; a positive slope means the judge prefers the longer answer.", ""]
    return lines


def render_html(j: dict) -> str:
    import html

    esc = html.escape
    warn = f"<p class=warn><b>{esc(warning(j))}</b></p>" if warning(j) else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows(j))
    return (f"<h2>Pairwise judge</h2><p>{esc(_intro(j))}</p><p>{esc(calibration_line(j))}</p>{warn}"
            f"<table><tr>{head}</tr>{body}</table><p>Length-controlled win rate: {esc(LC_METHOD)}; "
            "a positive slope means the judge prefers the longer answer.</p>")

"""A finished sweep's outputs: trials.csv, best.json, best.yaml, per_prompt.csv, noise.json, plots
and report.md, and the summary table on the terminal.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.evaluate.machine import measured_line
from toolkit.evaluate.sweep.config import SweepConfig
from toolkit.evaluate.sweep.noise import chosen_params, search_generations, trial_params
from toolkit.io import save_figure, write_json, write_text


def write_outputs(study, cfg: SweepConfig, out: Path, noise: dict, *, generations: int, seconds: float,
                  storage: str = "", against: dict | None = None, machine: dict | None = None) -> dict:
    """trials.csv, best.json, best.yaml, per_prompt.csv, noise.json, plots and report.md
    (`machine`: where the numbers were measured, see toolkit.evaluate.machine)."""
    import csv
    import io as _io

    import optuna
    import yaml

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
    if machine is not None:
        best["machine"] = machine
    if "race" in noise:
        best["race"] = noise["race"]
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
    write_text(out / "report.md", render_report(study, cfg, best, noise, plots, against))
    return best


def make_plots(study, cfg: SweepConfig, folder: Path, noise: dict) -> dict[str, str]:
    """Optuna's history, importances, slice and contour plots, and per-prompt score histograms."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

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


def race_lines(race: dict, cfg: SweepConfig) -> list[str]:
    """The race's stopping rules with their numbers, under the decision."""
    outcomes = ", ".join(f"{v} {k}" for k, v in race["outcomes"].items()) or "none yet"
    return [f"- race: {race['raced']} of {race['candidates']} candidates judged ({outcomes}) against the default "
            f"on the same {race['prompts']} prompts and generation seed {cfg.seed}; {race['generations']} generations, an "
            f"exhaustive run {race['exhaustive_generations']} (every candidate and the default on every prompt, and "
            f"{len(cfg.rerun_seeds)} re-run seeds for the default and the best)",
            f"- rules: *found* when a candidate beats the default with Wilcoxon p < alpha/m = {race['alpha']:g}/{race['candidates']}"
            f" (Holm's first step) and an interval above 0, confirmed on seeds {cfg.rerun_seeds}; out when WilcoxonPruner "
            f"finds it worse (p < {race['prune_p']:g}) or its conditional power of beating the default on all prompts is below "
            f"{race['futility']:.0%}" + (f" or its upper bound is below min_effect {race['min_effect']:g}" if race["min_effect"] else "")
            + "; *nothing to gain* when every candidate is out", ""]


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


def render_report(study, cfg: SweepConfig, best: dict, noise: dict, plots: dict, against: dict | None = None) -> str:
    import optuna

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    lines = [f"# Sweep `{cfg.name}`", "", f"**{'Decision' if 'race' in noise else 'Verdict'}:** {best['verdict']}", "",
             *(race_lines(noise["race"], cfg) if "race" in noise else []),
             f"- metric: {', '.join(f'{k} x{v:g}' for k, v in cfg.metric.items())}; {cfg.prompts} prompts; generation seed {cfg.seed}",
             f"- sampler {cfg.sampler} (seed {cfg.sampler_seed}), " + (f"raced in chunks of {cfg.race.chunk} prompts" if cfg.mode == "race" else
                                                                        f"pruner {cfg.pruner}" + (f" over {cfg.chunks} prompt chunks" if cfg.pruner != "none" else "")),
             f"- trials: {count[optuna.trial.TrialState.COMPLETE]} complete, {count[optuna.trial.TrialState.PRUNED]} pruned, "
             f"{count[optuna.trial.TrialState.FAIL]} failed; {best['generations']} generations in {best['seconds']} s",
             f"- storage: `{best['storage']}` (browse it with `optuna-dashboard {best['storage']}`)",
             *([f"- {measured_line(best['machine'])}"] if "machine" in best else []), "",
             ("## Default and best (confirmation seeds when found, else the race's seed)" if "race" in noise
              else "## Re-run with seeds " + ", ".join(map(str, cfg.rerun_seeds))), "",
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



def print_summary(study, cfg: SweepConfig, noise: dict) -> None:
    from rich.table import Table

    from toolkit.console import out

    table = Table(title=f"sweep {cfg.name}: " + ("the default and the best of the race" if "race" in noise
                                                 else f"re-run with seeds {cfg.rerun_seeds}"))
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

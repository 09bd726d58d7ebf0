"""What `toolkit gaps` shows and writes: the terminal table, the 2-D map (PNG), Markdown and HTML.

Everything renders from the `gaps.json` dictionary (plus the fitted analysis for the map), so the
report never shows a number that the JSON does not hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.io import save_figure

MAP_POINTS = 20000  # most points drawn on the map (a seeded sample beyond that)


def make_map(fit, gaps: list[dict], dest: Path, seed: int = 0) -> Path:
    """The corpus in 2-D (the first two principal axes of the reduced space), coloured by cluster,
    with the top gaps drawn as dashed links between cluster centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cl = fit.clustering
    Z = cl.reduced
    mean = Z.mean(0)
    _, _, vt = np.linalg.svd(Z - mean, full_matrices=False)
    axes2 = vt[:2].T
    pts = (Z - mean) @ axes2
    centres = np.stack([pts[cl.labels == c].mean(0) for c in range(cl.k)])  # where each cloud sits on the map
    shown = np.arange(len(Z))
    if len(shown) > MAP_POINTS:
        shown = np.random.default_rng(seed).choice(shown, MAP_POINTS, replace=False)
    fig, ax = plt.subplots(figsize=(10, 7.5))
    cmap = plt.get_cmap("tab20")
    noise = shown[cl.labels[shown] < 0]  # HDBSCAN's: grey, under the clusters
    shown = shown[cl.labels[shown] >= 0]
    ax.scatter(pts[noise, 0], pts[noise, 1], color="lightgrey", s=4, alpha=0.5, linewidths=0)
    ax.scatter(pts[shown, 0], pts[shown, 1], c=[cmap(c % 20) for c in cl.labels[shown]], s=6, alpha=0.45, linewidths=0)
    for rank, g in enumerate(gaps, 1):
        (x0, y0), (x1, y1) = centres[g["a"]], centres[g["b"]]
        ax.plot([x0, x1], [y0, y1], linestyle="--", color="crimson", linewidth=2.2 if rank == 1 else 1.3, alpha=0.9)
        ax.annotate(f"gap {rank}", ((x0 + x1) / 2, (y0 + y1) / 2), color="crimson", fontsize=9, ha="center", weight="bold")
    for c in range(cl.k):
        x, y = centres[c]
        ax.scatter([x], [y], color=cmap(c % 20), edgecolors="black", s=70, zorder=3)
        marker = "" if fit.stable(c) else " (unstable)"
        ax.annotate(f"{c}: {fit.label(c, 2)}{marker}", (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    links = f"dashed: the top {len(gaps)} candidate gaps" if gaps else "no candidate gaps"
    left = f" ({cl.noise} left as noise, grey)" if cl.noise else ""
    ax.set_title(f"{len(Z)} abstracts in {cl.k} clusters{left}; {links}")
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2")
    return save_figure(fig, dest)


# --------------------------------------------------------------------------------- text


def _growth(g: dict | None) -> str:
    if not g or g.get("relative_growth_per_year") is None:
        return "-"
    text = f"{g['relative_growth_per_year']:+.0%}/yr"
    if g.get("ci95"):
        lo, hi = g["ci95"]
        text += f" [{lo:+.0%}, {hi:+.0%}]"
    return text


def _stab(c: dict) -> str:
    j = c["stability_jaccard"]
    return "-" if j is None else f"{j:.2f}" + ("" if c["stable"] else " unstable")


def gap_title(result: dict, g: dict) -> str:
    names = {c["id"]: c["label"] for c in result["cluster_list"]}
    return f"{names[g['a']]}  <->  {names[g['b']]}"


def summary_lines(result: dict) -> list[str]:
    """The one-line facts every report starts with."""
    c = result["corpus"]
    lines = [f"{c['papers']} distinct abstracts from {c['path']} ({c['duplicates']} duplicates and {c['empty']} empty dropped); "
             f"{c['dated']} dated{_sources(c)}, years {c['years'] or 'none'}.",
             f"Clusters: {result['criterion']}. Stability: {result['stability']['bootstrap_rounds']} bootstrap re-clusterings, "
             f"mean adjusted Rand {result['stability']['mean_adjusted_rand']}; clusters with best-match Jaccard below "
             f"{result['stability']['unstable_below_jaccard']} are marked unstable and never ranked.",
             *noise_lines(result),
             f"Bridging papers: the {result['bridges']['quantile']:.0%} of papers nearest to a tie between their two closest "
             f"clusters ({result['bridges']['bridging_papers']} papers); expected counts share them out by cluster sizes."]
    if result.get("growth_skipped"):
        lines.append(f"Growth skipped: {result['growth_skipped']}; pairs are ranked with growth unknown, by nearness and atypicality.")
    return lines


def _sources(corpus: dict) -> str:
    """Where the dates came from: " (first version 1990, update_date (last update, not submission) 10)"."""
    sources = corpus.get("dates_from")
    return f" (from {sources})" if sources and sources != "none" else ""


def noise_lines(result: dict) -> list[str]:
    """How many abstracts HDBSCAN left in no cluster (nothing for k-means, which places every one)."""
    if result.get("method") != "hdbscan":
        return []
    n, papers = result["noise"], result["papers"]
    return [f"Noise: HDBSCAN left {n} of {papers} abstracts ({n / max(papers, 1):.0%}) in no cluster; they are never labelled, "
            "sized or ranked, and count as bridging papers by their two nearest clusters."]


def print_table(result: dict, top: int = 10) -> None:
    from rich.table import Table

    from toolkit.console import out

    table = Table(title=f"research gaps: {len(result['gaps'])} candidates among {len(result['pairs'])} cluster pairs")
    for col in ("#", "gap (cluster labels)", "score", "similarity", "bridges obs/exp", "lift", "growth A / B"):
        table.add_column(col, justify="left" if col.startswith("gap") else "right")
    for rank, g in enumerate(result["gaps"][:top], 1):
        growth = "unknown" if g["growth_a"] is None else f"{g['growth_a']:+.0%} / {g['growth_b']:+.0%}"
        table.add_row(str(rank), gap_title(result, g), f"{g['score']:.3f}", f"{g['similarity']:.2f}",
                      f"{g['observed_bridges']}/{g['expected_bridges']:.1f}", f"{g['lift']:.2f}", growth)
    out.print(table)
    if not result["gaps"]:
        growing = " and growing on both sides" if not result.get("growth_skipped") else ""
        out.print(f"no pair is near in meaning{',' if growing else ' and'} bridged less than chance{growing}; see gaps.json for every pair")
    bt = result.get("backtest")
    if bt and "methods" in bt:
        out.print(backtest_line(bt), soft_wrap=True)


def backtest_line(bt: dict) -> str:
    ks = [k for k in bt["methods"]["gap score"] if k.startswith("precision@")]
    k = ks[0] if ks else None

    def fmt(m: dict) -> str:
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.2f}"
        return f"AUC {auc}" + (f", {k} {m[k]:.2f}" if k else "")

    parts = [f"{name}: {fmt(m if name != 'random' else m['expected'])}" for name, m in bt["methods"].items()]
    return (f"backtest fit <= {bt['year']}, checked on {bt['later_papers']} later papers: {bt['gained_pairs']} of {bt['pairs']} pairs "
            f"gained bridges; " + "; ".join(parts))


def _cluster_table_md(result: dict) -> list[str]:
    lines = ["| # | label (c-TF-IDF) | size | growth (95% CI) | stability | nearest titles |", "|---|---|---|---|---|---|"]
    for c in result["cluster_list"]:
        titles = "<br>".join(f"`{n['id']}` {n['title'][:90]}" for n in c["nearest"])
        lines.append(f"| {c['id']} | {', '.join(c['terms'][:6])} | {c['size']} | {_growth(c['growth'])} | {_stab(c)} | {titles} |")
    return lines


def _backtest_md(bt: dict) -> list[str]:
    if "skipped" in bt:
        return ["## Backtest", "", f"Skipped: {bt['skipped']}.", ""]
    metrics = [k for k in bt["methods"]["gap score"] if k != "expected"]
    lines = ["## Backtest", "", f"Fit on {bt['fit_papers']} papers up to {bt['year']}; checked on {bt['later_papers']} papers of "
             f"{bt['later_years'][0]}..{bt['later_years'][1]}. {bt['rule']}: {bt['gained_pairs']} of {bt['pairs']} pairs.", "",
             "| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, m in bt["methods"].items():
        shown = m["expected"] if name == "random" else m
        cells = ["n/a" if shown[x] is None else f"{shown[x]:.3f}" for x in metrics]
        lines.append(f"| {name}{' (expected)' if name == 'random' else ''} | " + " | ".join(cells) + " |")
    return lines + [""]


def _draft_md(result: dict, d: dict) -> list[str]:
    g = d["grounding"]
    flag = "grounded" if g["grounded"] else "**FLAG: not closer to its sources than to random abstracts**"
    cites = ", ".join(f"`{i}`" for i in d["cites"]["a"] + d["cites"]["b"])
    return [f"### {gap_title(result, d)}", "", f"**Problem:** {d['problem']}", "", f"**Approach:** {d['approach']}", "",
            f"Sources: {cites}. Grounding: cosine to sources {g['cited_similarity']:.3f} vs random {g['random_similarity']:.3f} ({flag}).", ""]


def render_markdown(result: dict, map_rel: str | None) -> str:
    lines = ["# Research gaps", "", *summary_lines(result), ""]
    if map_rel:
        lines += [f"![map of the corpus]({map_rel})", ""]
    rule = ("A gap: a pair of clusters near in meaning, bridged less than chance, both growing. "
            "Score = nearness x atypicality x momentum (each in (0, 1]).")
    if result.get("growth_skipped"):
        rule = ("A gap: a pair of clusters near in meaning, bridged less than chance; growth unknown. "
                "Score = nearness x atypicality (each in (0, 1]); momentum is left out.")
    lines += ["## Candidate gaps", "", rule, ""]
    for rank, g in enumerate(result["gaps"], 1):
        lines += [f"{rank}. **{gap_title(result, g)}**: score {g['score']:.3f}; {g['reasons']}"]
    if not result["gaps"]:
        lines.append("No candidate gaps (see gaps.json for every pair's numbers).")
    lines += ["", "## Clusters", "", *_cluster_table_md(result), ""]
    if result.get("backtest"):
        lines += _backtest_md(result["backtest"])
    if result.get("drafts"):
        lines += ["## Drafts", ""]
        for d in result["drafts"]:
            lines += _draft_md(result, d)
    return "\n".join(lines) + "\n"


def render_html(result: dict, map_png: Path | None) -> str:
    """A self-contained page: the Markdown's content as HTML tables, the map embedded as a data URI."""
    import base64
    import html

    esc = html.escape
    facts = "".join(f"<p>{esc(x)}</p>" for x in summary_lines(result))
    img = (f'<figure><img alt="map" src="data:image/png;base64,{base64.b64encode(map_png.read_bytes()).decode()}"></figure>'
           if map_png else "")
    gaps = "".join(f"<tr><td>{r}</td><td>{esc(gap_title(result, g))}</td><td>{g['score']:.3f}</td><td>{esc(g['reasons'])}</td></tr>"
                   for r, g in enumerate(result["gaps"], 1)) or "<tr><td colspan=4>no candidate gaps</td></tr>"
    clusters = "".join(
        f"<tr><td>{c['id']}</td><td>{esc(', '.join(c['terms'][:6]))}</td><td>{c['size']}</td><td>{esc(_growth(c['growth']))}</td>"
        f"<td>{esc(_stab(c))}</td><td>{_nearest_html(c)}</td></tr>"
        for c in result["cluster_list"])
    extra = ""
    bt = result.get("backtest")
    if bt:
        extra += "<h2>Backtest</h2>" + "".join(f"<p>{esc(x)}</p>" for x in _backtest_md(bt)[2:3]) + _md_table_html(_backtest_md(bt)[4:-1])
    for d in result.get("drafts") or []:
        g = d["grounding"]
        flag = "grounded" if g["grounded"] else "<b style=color:crimson>FLAG: not closer to its sources than to random abstracts</b>"
        extra += (f"<section><h3>{esc(gap_title(result, d))}</h3><p><b>Problem:</b> {esc(d['problem'])}</p>"
                  f"<p><b>Approach:</b> {esc(d['approach'])}</p><p>Sources: {esc(', '.join(d['cites']['a'] + d['cites']['b']))}. "
                  f"Grounding: {g['cited_similarity']:.3f} vs random {g['random_similarity']:.3f} ({flag}).</p></section>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
             "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Research gaps</title><style>{style}</style></head><body>"
            f"<h1>Research gaps</h1>{facts}{img}<h2>Candidate gaps</h2>"
            f"<table><tr><th>#</th><th>clusters</th><th>score</th><th>reasons</th></tr>{gaps}</table>"
            f"<h2>Clusters</h2><table><tr><th>#</th><th>label (c-TF-IDF)</th><th>size</th><th>growth (95% CI)</th><th>stability</th>"
            f"<th>nearest titles</th></tr>{clusters}</table>{extra}</body></html>")


def _nearest_html(cluster: dict) -> str:
    import html

    return "<br>".join(f"<code>{html.escape(n['id'])}</code> {html.escape(n['title'][:90])}" for n in cluster["nearest"])


def _md_table_html(rows: list[str]) -> str:
    """A Markdown table (header, separator, rows) as an HTML table."""
    import html

    if len(rows) < 2:
        return ""
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows if not r.startswith("|---")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"

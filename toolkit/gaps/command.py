"""`toolkit gaps CORPUS`: the command that ties reading, embedding, analysis, backtest, drafts and reports.

Every number is computed before anything is written, and each output is written atomically, so a
bad corpus or an interrupted run leaves no half-written report; the embedding and draft caches are
the only files written along the way, and they are what makes a re-run resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toolkit.errors import ConfigError
from toolkit.gaps.corpus import check_size, load_corpus
from toolkit.io import write_json, write_text
from toolkit.options import option
from toolkit.params import DEFAULTS, DecodingParams
from toolkit.runtime.backends import BackendName
from toolkit.runtime.generation import check_parallel


@dataclass(frozen=True)
class CorpusOptions:
    """reading the corpus"""

    format: str = option("auto", "input format (auto, arxiv, papers).")
    abstract_col: str = option("abstract", "the field holding the abstract.")
    categories: str = option("", "keep only these arXiv categories (e.g. cs.LG,cs.CL or a prefix like cs.).")


@dataclass(frozen=True)
class AnalysisOptions:
    """embedding, clustering, growth and bridges"""

    encoder: str = option("minilm", "minilm (embedded all-MiniLM-L6-v2), a local HF encoder directory, or words (model-free, fast).")
    clusters: int = option(0, "number of clusters (0 = the k with the highest silhouette over 4..24).")
    cluster: Literal["kmeans", "hdbscan"] = option("kmeans", "kmeans (every abstract in one of k clusters) or hdbscan (density clusters, "
                                                   "as in BERTopic: no k to pick; abstracts in no dense area are left out as noise, never ranked).")
    min_cluster_size: int = option(0, "HDBSCAN's smallest cluster (0 = 1% of the abstracts, at least 10 as in BERTopic: a smaller group is no "
                                      "area worth ranking, and it keeps the pairs few); lower it if HDBSCAN finds fewer than 2 clusters.")
    dims: int = option(50, "PCA dimensions before clustering.")
    bootstrap: int = option(5, "bootstrap re-clusterings for the stability check (0 = skip).")
    window: int = option(5, "growth is the trend over this many last years.")
    bridge_quantile: float = option(0.1, "the fraction of papers nearest a tie between two clusters that count as bridging.")
    top: int = option(10, "how many candidate gaps to report.")
    backtest: int = option(0, "fit on papers up to this YEAR and check which pairs gain bridging papers later (0 = no backtest).")
    fit_seed: int = option(0, "seed for PCA, k-means, the bootstrap and the random baseline (HDBSCAN needs none; --seed is the drafts' sampling seed).")


@dataclass(frozen=True)
class DraftOptions:
    """drafts (--draft)"""

    draft: bool = option(False, "ask a local model for a problem -> approach draft for each top gap, citing its sources.")
    drafts: int = option(5, "how many top gaps get a draft.")
    backend: BackendName = option("llamacpp", "which backend runs the drafting model: llamacpp (in process), ollama or openai.")
    model: str = option("smollm2", "the drafting model: embedded name (smollm2), a .gguf file, an exported directory, or a server's model name.")
    url: str = option("", "server URL for the ollama (default: OLLAMA_HOST) and openai backends.")
    parallel: int = option(0, "drafts generated at once (0 = the backend's default).")


def _check_options(a: AnalysisOptions, drafts: int) -> None:
    checks = [
        (a.clusters == 0 or a.clusters >= 2, f"--clusters {a.clusters}", "give 0 (choose by silhouette) or 2 or more"),
        (a.dims >= 2, f"--dims {a.dims}", "give 2 or more PCA dimensions (50 is the default)"),
        (0 <= a.bootstrap <= 100, f"--bootstrap {a.bootstrap}", "give 0 (no stability check) to 100 resamples"),
        (a.window >= 2, f"--window {a.window}", "growth needs a window of 2 or more years"),
        (0 < a.bridge_quantile < 0.5, f"--bridge-quantile {a.bridge_quantile}", "give a fraction between 0 and 0.5 (0.1 is the default)"),
        (a.top >= 1, f"--top {a.top}", "show 1 or more gaps"),
        (drafts >= 1, f"--drafts {drafts}", "draft 1 or more gaps"),
    ]
    for ok, what, fix in checks:
        if not ok:
            raise ConfigError(f"{what} is out of range", fix=fix)


def _check_cluster_options(cluster: str, clusters: int, min_cluster_size: int) -> None:
    """--clusters is k-means's and --min-cluster-size HDBSCAN's: one given to the other is a mistake."""
    from toolkit.gaps.cluster import check_method

    check_method(cluster)
    if min_cluster_size != 0 and min_cluster_size < 2:
        raise ConfigError(f"--min-cluster-size {min_cluster_size} is out of range", fix="give 0 (1% of the abstracts, at least 10) or 2 or more")
    if cluster == "hdbscan" and clusters:
        raise ConfigError(f"--clusters {clusters} sets k-means's k; HDBSCAN finds the number of clusters itself",
                          fix="drop --clusters (--min-cluster-size steers HDBSCAN), or use --cluster kmeans")
    if cluster == "kmeans" and min_cluster_size:
        raise ConfigError(f"--min-cluster-size {min_cluster_size} is HDBSCAN's", fix="add --cluster hdbscan, or drop --min-cluster-size")


def _clean(obj):
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers, private keys dropped."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def gaps(corpus: Path, out: Path = Path("runs/gaps"), reading: CorpusOptions = CorpusOptions(),
         analysis: AnalysisOptions = AnalysisOptions(), drafting: DraftOptions = DraftOptions(), params: DecodingParams = DEFAULTS) -> int:
    """Find under-explored areas in a corpus of abstracts: clusters, growth, bridges, ranked gaps.

    Embeds title + abstract (cached by content hash in $TOOLKIT_HOME/gaps, so a re-run or a grown
    corpus embeds only new papers), clusters with PCA + k-means (or HDBSCAN), labels clusters by
    c-TF-IDF, checks their stability by bootstrap, measures each cluster's growth from dates or
    arXiv ids, and ranks pairs of clusters that are near in meaning, bridged less than chance and
    growing. Writes gaps.json (every number), map.png, report.md and report.html (self-contained) to OUT.

    Args:
        corpus: abstracts: Kaggle arXiv metadata (JSON/JSONL), the scientific_papers JSONL, or any file the data readers take.
        out: where the report goes.
    """
    from toolkit.console import err, status
    from toolkit.gaps.analysis import Settings, analyse
    from toolkit.gaps.cluster import MIN_CLUSTER_FLOOR, require_sklearn
    from toolkit.gaps.embed import embed_papers, open_encoder

    a = analysis
    _check_options(a, drafting.drafts)
    _check_cluster_options(a.cluster, a.clusters, a.min_cluster_size)
    if drafting.parallel:
        check_parallel(drafting.parallel)
    require_sklearn()
    data = load_corpus(Path(corpus), reading.format, reading.categories, reading.abstract_col)
    if a.cluster == "hdbscan":
        check_size(data, 0, a.min_cluster_size or MIN_CLUSTER_FLOOR, hdbscan=True)
    else:
        check_size(data, a.clusters)
    if a.backtest and data.dated:  # a YEAR outside the corpus is an error before any work, not after
        from toolkit.gaps.backtest import split

        split(data.papers, a.backtest, data.path)
    enc = open_encoder(a.encoder)
    X, computed = embed_papers(data.papers, enc)
    err.print(f"embedded {computed} new abstracts ({len(data.papers) - computed} from the cache)")
    settings = Settings(clusters=a.clusters, cluster=a.cluster, min_cluster_size=a.min_cluster_size, dims=a.dims, seed=a.fit_seed,
                        bootstrap=a.bootstrap, window=a.window, bridge_quantile=a.bridge_quantile)
    with status(f"clustering {len(data.papers)} abstracts, {a.bootstrap} bootstrap rounds, bridges"):
        fit = analyse(data.papers, X, settings)
    if fit.clustering.method == "hdbscan":
        err.print(f"HDBSCAN: {fit.k} clusters, {fit.noise} of {len(data.papers)} abstracts left as noise (never ranked)")
    result = fit.to_dict(a.top)
    result["corpus"] = {"path": str(corpus), "papers": len(data.papers), "records": data.read, "duplicates": data.duplicates,
                        "empty": data.empty, "dated": data.dated, "dates_from": data.dates_from,
                        "years": f"{data.years[0]}..{data.years[-1]}" if data.years else None, "encoder": a.encoder}
    if result["growth_skipped"]:
        err.print(f"[yellow]growth skipped:[/] {result['growth_skipped']}")
    if a.backtest:
        result["backtest"] = _backtest(data, X, a.backtest, settings)
    if drafting.draft:
        result["drafts"] = _drafts(fit, X, result, enc, drafting, params, Path(out))
    _write(Path(out), fit, result)
    return 0


def _backtest(data, X, year: int, settings) -> dict:
    from toolkit.console import err, status
    from toolkit.gaps.backtest import backtest as run_backtest

    if not data.dated:
        reason = "no paper has a date or an arXiv id, so the backtest was skipped"
        err.print(f"[yellow]backtest skipped:[/] {reason}")
        return {"skipped": reason}
    with status(f"backtest: fit up to {year}, check the later papers"):
        return run_backtest(data.papers, X, year, settings, path=data.path)


def _drafts(fit, X, result: dict, enc, d: DraftOptions, params: DecodingParams, out: Path) -> list[dict]:
    from toolkit.console import err
    from toolkit.gaps.draft import draft_gaps

    if not result["gaps"]:
        err.print("[yellow]drafts skipped:[/] there are no candidate gaps to draft for")
        return []
    return draft_gaps(fit, X, result["gaps"][:d.drafts], enc, d.backend, d.model, d.url, params, out / "drafts.sqlite", d.parallel or None)


def _write(out: Path, fit, result: dict) -> None:
    """map.png, gaps.json, report.md, report.html (each atomic), then the terminal table."""
    from toolkit.console import err
    from toolkit.gaps.report import make_map, print_table, render_html, render_markdown

    result = _clean(result)
    map_png = make_map(fit, result["gaps"], out / "map.png", seed=fit.settings.seed)
    write_json(out / "gaps.json", result)
    write_text(out / "report.md", render_markdown(result, "map.png"))
    write_text(out / "report.html", render_html(result, map_png))
    print_table(result)
    err.print(f"report: {out / 'report.html'} (every number in {out / 'gaps.json'})")

"""The research-gap finder: years from ids, clustering, growth, bridges, the backtest on a corpus with
a planted gap, the embedding cache, and the whole command on small corpora (model-free encoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit.gaps.corpus import Paper, paper_year, year_of_arxiv_id, year_of_date


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def planted():
    """The synthetic corpus (seed 0, ~950 abstracts) with its model-free embeddings."""
    from toolkit.gaps.embed import WordsEncoder, embed_texts
    from toolkit.gaps.synthetic import generate

    rows = generate(seed=0, scale=0.3)
    papers = [Paper(r["id"], r["title"], r["abstract"], paper_year(r["id"], r["update_date"])) for r in rows]
    X, _ = embed_texts([p.text for p in papers], [p.key for p in papers], WordsEncoder(), None)
    return rows, papers, X


# ----------------------------------------------------------------------------------- years


@pytest.mark.parametrize("pid,year", [("0704.0001", 2007), ("2401.12345", 2024), ("2401.12345v2", 2024), ("arXiv:1501.00001", 2015),
                                      ("hep-th/9901001", 1999), ("math.GT/0309136", 2003), ("cond-mat/0703999v1", 2007),
                                      ("0703.0001", None), ("1713.00001", None), ("paper-7", None), ("12345", None)])
def test_year_of_arxiv_id(pid, year):
    assert year_of_arxiv_id(pid) == year


def test_year_of_date_and_priority():
    assert year_of_date("2019-05-14") == 2019 and year_of_date("2019") == 2019
    assert year_of_date("") is None and year_of_date("May 2019") is None and year_of_date("0001-01-01") is None
    # the id is the submission month; update_date may be years later
    assert paper_year("1501.00001", "2020-01-01") == 2015
    assert paper_year("doc-1", "2020-01-01") == 2020


# ------------------------------------------------------------------------------ clustering


def blobs(k: int = 5, per: int = 40, dim: int = 32, seed: int = 0, spread: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    labels = np.repeat(np.arange(k), per)
    return centres[labels] + spread * rng.normal(size=(k * per, dim)), labels


def test_silhouette_recovers_k_and_clusters_are_stable():
    from sklearn.metrics import adjusted_rand_score

    from toolkit.gaps.cluster import fit_clusters, stability

    X, truth = blobs(k=6, per=30)
    cl = fit_clusters(X, k=0, dims=10, seed=0)
    assert cl.k == 6 and "silhouette" in cl.criterion and set(cl.silhouettes) >= {4, 5, 6, 7}
    assert adjusted_rand_score(truth, cl.labels) > 0.99
    jaccard, ari = stability(cl, rounds=3, seed=0)
    assert min(jaccard) > 0.9 and ari > 0.9


def test_unstable_clusters_are_marked_on_structureless_data():
    from toolkit.gaps.cluster import fit_clusters, stability

    X = np.random.default_rng(1).normal(size=(300, 16))  # no clusters at all
    cl = fit_clusters(X, k=8, dims=16, seed=0)
    jaccard, _ = stability(cl, rounds=4, seed=0)
    assert min(jaccard) < 0.5  # some clusters dissolve in resamples


def test_ctfidf_labels_pick_distinctive_terms():
    from toolkit.gaps.cluster import ctfidf_terms

    texts = ["protein folding residue structure method"] * 5 + ["galaxy redshift halo survey method"] * 5
    terms = ctfidf_terms(texts, np.array([0] * 5 + [1] * 5), 2, top=3)
    assert set(terms[0]) <= {"protein", "folding", "residue", "structure", "protein folding", "folding residue", "residue structure"}
    assert "method" not in terms[0] + terms[1]  # shared by both: not distinctive
    assert ctfidf_terms(["a b", "c d"], np.array([0, 1]), 2) == [[], []]  # nothing occurs twice: no labels, no error


# --------------------------------------------------------------------------------- growth


def test_growth_slope_and_interval():
    from toolkit.gaps.trends import cluster_growth, growth

    g = growth(np.array([0.10, 0.12, 0.14, 0.16, 0.18]), [2019, 2020, 2021, 2022, 2023])
    assert g.slope == pytest.approx(0.02) and g.relative == pytest.approx(0.02 / 0.14)
    assert g.low == pytest.approx(g.relative) and g.high == pytest.approx(g.relative)  # a perfect line: no width
    noisy = growth(np.array([0.1, 0.3, 0.1, 0.3]), [2020, 2021, 2022, 2023])
    assert noisy.low < 0 < noisy.high
    assert growth(np.array([0.1, 0.2]), [2020, 2021]).low is None  # two years: a slope, no interval
    labels = np.array([0, 1] * 20)
    assert cluster_growth(labels, [None] * 40, 2)[2].startswith("no paper has a date")
    assert "fewer than 2 years" in cluster_growth(labels, [2020] * 40, 2)[2]
    growths, table, reason = cluster_growth(labels, [2020] * 20 + [2021] * 20, 2)
    assert reason == "" and table[2020] == [0.5, 0.5] and growths[0].slope == pytest.approx(0)


# -------------------------------------------------------------------------------- bridges


def test_bridges_count_ties_between_two_nearest_centres():
    from toolkit.gaps.bridges import count_bridges, expected_bridges, score_pairs, top_two

    sims = np.array([[0.9, 0.1, 0.0], [0.5, 0.49, 0.0], [0.0, 0.48, 0.5], [0.2, 0.0, 0.9], [0.45, 0.0, 0.46]])
    first, second, margin = top_two(sims)
    assert first.tolist() == [0, 0, 2, 2, 2] and second.tolist() == [1, 1, 1, 0, 0]
    b = count_bridges(sims, threshold=0.05, sizes=np.array([10, 10, 20]))
    assert b.bridging == 3 and b.observed[0, 1] == b.observed[1, 0] == 1 and b.observed[1, 2] == 1 and b.observed[0, 2] == 1
    e = expected_bridges(4, np.array([1, 1, 2]))
    assert e[0, 1] == pytest.approx(4 * 1 / 5) and e[0, 2] == pytest.approx(4 * 2 / 5) and e.trace() == 0
    rows = score_pairs(np.eye(3) + 0.5, b, [0.1, 0.2, -0.1])
    assert [r["rank"] for r in rows] == [1, 2, 3] and all(0 < r["score"] <= 1 for r in rows)
    assert not any(r["candidate"] for r in rows if -0.1 in (r["growth_a"], r["growth_b"]))  # both sides must grow


# ------------------------------------------------------------------------------- backtest


def test_backtest_ranks_the_planted_gap_where_baselines_do_not(planted):
    """Fit up to 2021; the protein/drug bridge appears only in 2022-24. The gap score puts that pair in
    its top 3; random, size product and similarity alone do not. k is fixed at the generator's 10
    topics so that this checks the ranking, not the choice of k."""
    from toolkit.gaps.analysis import Settings
    from toolkit.gaps.backtest import backtest, pairs
    from toolkit.gaps.synthetic import PLANTED

    rows, papers, X = planted
    res = backtest(papers, X, 2021, Settings(clusters=10, bootstrap=2))
    fit = res["_fit"]
    topic = {r["id"]: r["topics"] for r in rows}

    def cluster_of(name: str) -> int:
        return int(np.bincount([lab for p, lab in zip(fit.papers, fit.clustering.labels) if topic[p.id] == [name]], minlength=fit.k).argmax())

    pair = tuple(sorted(map(cluster_of, PLANTED)))
    assert pair[0] != pair[1]
    index = pairs(fit.k).index(pair)
    top3 = {name: list(np.lexsort((np.arange(len(s)), -s))[:3]) for name, s in res["_scores"].items()}
    assert index in top3["gap score"]
    for name in ("random", "size product", "similarity"):
        assert index not in top3[name], name
    outcome = next(o for o in res["pair_outcomes"] if (o["a"], o["b"]) == pair)
    assert outcome["gained"] and outcome["bridges_after"] > outcome["bridges_before"]
    m = res["methods"]
    assert m["gap score"]["auc"] > max(m["similarity"]["auc"], m["size product"]["auc"], m["random"]["expected"]["auc"])
    assert m["gap score"]["precision@3"] > m["similarity"]["precision@3"]


def test_auc_and_precision():
    from toolkit.gaps.backtest import auc, precision_at

    hit = np.array([True, False, False, True])
    assert auc(np.array([4.0, 1.0, 2.0, 3.0]), hit) == 1.0
    assert auc(np.array([1.0, 1.0, 1.0, 1.0]), hit) == 0.5
    assert auc(np.array([1.0, 2.0]), np.array([True, True])) is None
    assert precision_at(np.array([4.0, 1.0, 2.0, 3.0]), hit, 2) == 1.0


# -------------------------------------------------------------------------------- embedding


class CountingEncoder:
    """A fake encoder: counts what it is asked to embed; fails after `fail_after` batches."""

    id = "fake-v1"
    batch_size = 4

    def __init__(self, fail_after: int | None = None):
        self.seen: list[str] = []
        self.fail_after = fail_after

    def encode(self, texts):
        if self.fail_after is not None and len(self.seen) >= self.fail_after * self.batch_size:
            raise KeyboardInterrupt
        self.seen += texts
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


def test_embedding_cache_embeds_only_new_texts_and_resumes(tmp_path):
    from toolkit.gaps.embed import EmbeddingCache, embed_texts

    texts = [f"abstract number {i} " + "a" * i for i in range(10)]
    keys = [f"k{i}" for i in range(10)]
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    enc = CountingEncoder(fail_after=1)
    with pytest.raises(KeyboardInterrupt):  # interrupted after the first batch of 4
        embed_texts(texts, keys, enc, cache)
    enc = CountingEncoder()
    X, computed = embed_texts(texts, keys, enc, cache)
    assert computed == 6 and len(enc.seen) == 6  # the first batch was kept
    assert X.shape == (10, 3) and X[3, 0] == len(texts[3])
    grown = texts + ["one more abstract"]
    _, computed = embed_texts(grown, keys + ["k10"], CountingEncoder(), cache)
    assert computed == 1
    cache.close()


def test_minilm_embeddings_are_unit_and_semantic():
    from toolkit.gaps.embed import HFEncoder

    enc = HFEncoder("minilm", batch_size=4)
    X = enc.encode(["protein folding with deep networks", "predicting protein structure", "galaxy redshift surveys"])
    assert X.shape == (3, 384) and np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    assert X[0] @ X[1] > X[0] @ X[2] + 0.2


# ------------------------------------------------------------------------------- the command


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_gaps_command_writes_every_output(tmp_path, capsys):
    from toolkit.cli import main
    from toolkit.gaps.synthetic import generate

    corpus = write_rows(tmp_path / "abstracts.jsonl", generate(seed=1, scale=0.2, planted_after=2024))
    out = tmp_path / "report"
    assert main(["gaps", str(corpus), "--out", str(out), "--encoder", "words", "--bootstrap", "2", "--backtest", "2021",
                 "--clusters", "10"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["gaps.json", "map.png", "report.html", "report.md"]
    result = json.loads((out / "gaps.json").read_text())
    assert result["papers"] == result["corpus"]["papers"] > 500 and result["clusters"] >= 4
    assert len(result["pairs"]) == result["clusters"] * (result["clusters"] - 1) // 2
    assert all({"label", "terms", "nearest", "growth", "stability_jaccard", "share_by_year"} <= set(c) for c in result["cluster_list"])
    assert result["gaps"] and all(g["candidate"] and "lift" in g["reasons"] for g in result["gaps"])
    assert {"gap score", "random", "size product", "similarity"} == set(result["backtest"]["methods"])
    md = (out / "report.md").read_text()
    assert "## Candidate gaps" in md and "## Backtest" in md and "![map of the corpus](map.png)" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "src=\"map.png\"" not in html  # self-contained
    assert (out / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "research gaps" in capsys.readouterr().out


def test_drafts_cite_sources_are_checked_and_cached(tmp_path, default_gguf, monkeypatch):
    """The embedded model drafts for the top gap; a re-run takes the draft from the cache."""
    from toolkit.cli import main
    from toolkit.gaps.draft import parse_draft
    from toolkit.gaps.synthetic import generate

    corpus = write_rows(tmp_path / "abstracts.jsonl", generate(seed=2, scale=0.15, planted_after=2024))
    out = tmp_path / "report"
    args = ["gaps", str(corpus), "--out", str(out), "--encoder", "words", "--bootstrap", "1", "--clusters", "10",
            "--draft", "--drafts", "1", "--model", str(default_gguf), "--max-tokens", "48", "--temperature", "0"]
    assert main(args) == 0
    result = json.loads((out / "gaps.json").read_text())
    (d,) = result["drafts"]
    ids = {p["id"] for p in generate(seed=2, scale=0.15, planted_after=2024)}
    assert len(d["cites"]["a"]) == 2 and len(d["cites"]["b"]) == 2 and set(d["cites"]["a"] + d["cites"]["b"]) <= ids
    assert d["text"] and {"cited_similarity", "random_similarity", "grounded"} <= set(d["grounding"])
    assert "## Drafts" in (out / "report.md").read_text()

    def no_model(*a, **k):
        raise AssertionError("the draft should come from the cache")

    monkeypatch.setattr("toolkit.runtime.backends.open_backend", no_model)
    assert main(args) == 0
    assert json.loads((out / "gaps.json").read_text())["drafts"][0]["text"] == d["text"]
    assert parse_draft("Problem: P one.\nApproach: A two. B three.") == ("P one.", "A two. B three.")
    assert parse_draft("First sentence here. Then the rest.")[0] == "First sentence here."


# -------------------------------------------------------------------------------- HDBSCAN


def topics_found(rows: list[dict], labels: np.ndarray) -> set[str]:
    """The generator's topics a clustering recovers: most of the topic's single-topic papers that are
    clustered (not noise) share one cluster, that cluster is mostly this topic, and it is no other
    topic's cluster."""
    single = [(r["topics"][0], int(lab)) for r, lab in zip(rows, labels) if len(r["topics"]) == 1 and lab >= 0]
    home = {}
    for topic in {t for t, _ in single}:
        mine = np.array([lab for t, lab in single if t == topic])
        c = int(np.bincount(mine).argmax())
        members = [t for t, lab in single if lab == c]
        if (mine == c).mean() >= 0.8 and members.count(topic) / len(members) >= 0.8:
            home[topic] = c
    return {t for t, c in home.items() if list(home.values()).count(c) == 1}


def test_hdbscan_finds_the_planted_topics_as_well_as_kmeans(planted):
    """Both methods on the same embeddings in the same run: HDBSCAN, with no k to pick, recovers at
    least the topics that k-means with k chosen by silhouette does, and agrees with the truth as well
    on the papers it clusters."""
    from sklearn.metrics import adjusted_rand_score

    from toolkit.gaps.cluster import fit_clusters

    rows, _, X = planted
    km = fit_clusters(X, k=0, dims=50, seed=0)
    hdb = fit_clusters(X, dims=50, seed=0, method="hdbscan")
    assert hdb.method == "hdbscan" and "HDBSCAN" in hdb.criterion and not hdb.silhouettes
    found_km, found_hdb = topics_found(rows, km.labels), topics_found(rows, hdb.labels)
    assert len(found_hdb) >= max(len(found_km), 5), (found_hdb, found_km)
    single = np.array([len(r["topics"]) == 1 for r in rows])
    truth = np.array([r["topics"][0] for r in rows])
    clustered = single & (hdb.labels >= 0)
    assert adjusted_rand_score(truth[clustered], hdb.labels[clustered]) >= adjusted_rand_score(truth[single], km.labels[single]) - 0.02
    assert hdb.sizes.sum() + hdb.noise == len(rows) and hdb.sizes.min() >= hdb.min_cluster_size


def test_hdbscan_noise_is_never_ranked(planted):
    from toolkit.gaps.analysis import Settings, analyse

    _, papers, X = planted
    fit = analyse(papers, X, Settings(cluster="hdbscan", bootstrap=2))
    cl = fit.clustering
    assert cl.noise > 0 and set(np.unique(cl.labels)) == {-1, *range(fit.k)}
    assert len(fit.terms) == len(fit.jaccard) == len(fit.growth) == fit.k
    assert len(fit.pairs) == fit.k * (fit.k - 1) // 2 and all(0 <= r["a"] < r["b"] < fit.k for r in fit.pairs)
    assert fit.bridges.observed.shape == (fit.k, fit.k)
    d = fit.to_dict()
    assert d["noise"] == cl.noise and d["method"] == "hdbscan" and [c["id"] for c in d["cluster_list"]] == list(range(fit.k))
    assert sum(c["size"] for c in d["cluster_list"]) == len(papers) - cl.noise
    for year, shares in fit.shares.items():  # a year's shares leave its noise out
        noise = sum(1 for p, lab in zip(papers, cl.labels) if p.year == year and lab < 0)
        total = sum(1 for p in papers if p.year == year)
        assert sum(shares) == pytest.approx(1 - noise / total)


def test_hdbscan_stability_reclusters_with_hdbscan(planted, monkeypatch):
    from toolkit.gaps import cluster as cluster_mod

    _, _, X = planted
    cl = cluster_mod.fit_clusters(X, method="hdbscan")
    sizes = []
    real = cluster_mod._hdbscan
    monkeypatch.setattr(cluster_mod, "_hdbscan", lambda Z, size: sizes.append((len(Z), size)) or real(Z, size))
    monkeypatch.setattr(cluster_mod, "_kmeans", lambda *a, **k: pytest.fail("HDBSCAN's stability must not re-cluster with k-means"))
    jaccard, ari = cluster_mod.stability(cl, rounds=3, seed=0)
    assert len(sizes) == 3 and all(n < len(X) and size < cl.min_cluster_size for n, size in sizes)  # distinct points, scaled size
    assert len(jaccard) == cl.k and all(0 <= j <= 1 for j in jaccard)
    assert np.median(jaccard) > 0.8 and ari > 0.5  # the planted topics survive resampling


def test_hdbscan_fewer_than_two_clusters_is_a_clear_error():
    from toolkit.errors import ConfigError
    from toolkit.gaps.cluster import fit_clusters, stability

    X = np.random.default_rng(1).normal(size=(300, 16))  # no dense areas at all
    with pytest.raises(ConfigError, match="HDBSCAN found 0 clusters among 300 abstracts with min cluster size 20") as info:
        fit_clusters(X, dims=16, method="hdbscan", min_cluster_size=20)
    assert "--min-cluster-size below 20" in info.value.fix and "--cluster kmeans" in info.value.fix
    crumbs = fit_clusters(X, dims=16, method="hdbscan")  # smaller ones find chance crumbs, which the bootstrap dissolves
    assert crumbs.noise > len(X) / 2 and max(stability(crumbs, rounds=3, seed=0)[0]) < 0.5
    X, _ = blobs(k=3, per=10)
    with pytest.raises(ConfigError, match="HDBSCAN found 0 clusters among 30 abstracts with min cluster size 20"):
        fit_clusters(X, dims=10, method="hdbscan", min_cluster_size=20)  # too few points to run it at all


def test_noise_is_in_no_cluster_label_or_share():
    from toolkit.gaps.cluster import ctfidf_terms
    from toolkit.gaps.trends import cluster_growth

    texts = ["protein folding residue structure"] * 5 + ["galaxy redshift halo survey"] * 5 + ["zebra giraffe savanna"] * 4
    terms = ctfidf_terms(texts, np.array([0] * 5 + [1] * 5 + [-1] * 4), 2, top=10)
    assert len(terms) == 2 and terms[0] and terms[1] and not {"zebra", "giraffe", "savanna"} & set(terms[0] + terms[1])
    labels = np.array([0, 1, -1, -1] * 10)
    growths, table, reason = cluster_growth(labels, [2020] * 20 + [2021] * 20, 2)
    assert reason == "" and table[2020] == [0.25, 0.25] and len(growths) == 2


def test_hdbscan_command_twice_gives_the_same_clusters(tmp_path, capsys):
    from toolkit.cli import main
    from toolkit.gaps.synthetic import generate

    corpus = write_rows(tmp_path / "abstracts.jsonl", generate(seed=1, scale=0.2))
    results = []
    for run in ("one", "two"):
        out = tmp_path / run
        assert main(["gaps", str(corpus), "--out", str(out), "--encoder", "words", "--bootstrap", "2", "--backtest", "2021",
                     "--cluster", "hdbscan"]) == 0
        results.append(json.loads((out / "gaps.json").read_text()))
    first, second = results
    assert first == second
    assert first["method"] == "hdbscan" and first["noise"] > 0 and first["settings"]["cluster"] == "hdbscan"
    assert sum(c["size"] for c in first["cluster_list"]) + first["noise"] == first["papers"]
    assert all(0 <= g["a"] < first["clusters"] and 0 <= g["b"] < first["clusters"] for g in first["pairs"])
    assert first["backtest"]["clusters"] >= 2
    line = f"HDBSCAN left {first['noise']} of {first['papers']} abstracts"
    assert line in (tmp_path / "one" / "report.md").read_text() and line in (tmp_path / "one" / "report.html").read_text()
    assert f"{first['noise']} of {first['papers']} abstracts left as noise" in capsys.readouterr().err

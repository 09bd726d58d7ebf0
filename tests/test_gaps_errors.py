"""Bad corpora and bad options for `toolkit gaps`: one clear line each, no traceback, nothing written."""

from __future__ import annotations

import json

import pytest

from toolkit.cli import main


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_HOME", str(tmp_path / "home"))


def rows_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def distinct(n: int, with_dates: bool = True) -> list[dict]:
    topics = ["protein folding residue", "galaxy redshift halo", "speech acoustic phoneme", "graph vertex coloring"]
    rows = []
    for i in range(n):
        row = {"id": f"{15 + i % 8:02d}{1 + i % 12:02d}.{i:05d}" if with_dates else f"doc-{i}",
               "title": f"Study {i}", "abstract": f"We study {topics[i % 4]} number {i} with method {i * 7 % 13}."}
        rows.append(row)
    return rows


def run_error(capsys, tmp_path, corpus, *extra) -> str:
    out = tmp_path / "out"
    code = main(["gaps", str(corpus), "--out", str(out), "--encoder", "words", "--bootstrap", "1", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert not out.exists(), "nothing may be written for a bad corpus"
    return lines[0]


def test_no_abstracts(tmp_path, capsys):
    corpus = rows_file(tmp_path / "c.jsonl", [{"id": str(i), "title": "t", "abstract": ""} for i in range(30)])
    assert "no abstracts" in run_error(capsys, tmp_path, corpus)


def test_not_abstracts_at_all(tmp_path, capsys):
    corpus = rows_file(tmp_path / "qa.jsonl", [{"question": "q?", "answer": "a"}] * 3)
    assert "qa records, not abstracts" in run_error(capsys, tmp_path, corpus)


def test_all_duplicates(tmp_path, capsys):
    corpus = rows_file(tmp_path / "c.jsonl", [{"id": str(i), "title": "Same", "abstract": "The same text."} for i in range(50)])
    assert "all 50 records are duplicates" in run_error(capsys, tmp_path, corpus)


def test_fewer_papers_than_clusters(tmp_path, capsys):
    corpus = rows_file(tmp_path / "c.jsonl", distinct(12))
    line = run_error(capsys, tmp_path, corpus, "--clusters", "5")
    assert "only 12 distinct abstracts" in line and "5 clusters" in line


def test_too_few_papers_for_automatic_k(tmp_path, capsys):
    corpus = rows_file(tmp_path / "c.jsonl", distinct(6))
    assert "only 6 distinct abstracts" in run_error(capsys, tmp_path, corpus)


def test_non_utf8(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"id": "1", "title": "t", "abstract": "caf\xe9 au lait"}\n')
    assert "not UTF-8" in run_error(capsys, tmp_path, corpus)


def test_missing_file(tmp_path, capsys):
    assert "file not found" in run_error(capsys, tmp_path, tmp_path / "nope.jsonl")


@pytest.mark.parametrize("option", [["--clusters", "1"], ["--bridge-quantile", "0.7"], ["--window", "1"], ["--dims", "1"]])
def test_bad_options(tmp_path, capsys, option):
    corpus = rows_file(tmp_path / "c.jsonl", distinct(60))
    assert "out of range" in run_error(capsys, tmp_path, corpus, *option)


def test_backtest_year_outside_the_corpus(tmp_path, capsys):
    corpus = rows_file(tmp_path / "c.jsonl", distinct(80))
    line = run_error(capsys, tmp_path, corpus, "--backtest", "2030")
    assert "--backtest 2030 leaves" in line and "0 to check" in line


def test_no_dates_skips_growth_and_backtest_but_runs(tmp_path, capsys):
    corpus = rows_file(tmp_path / "c.jsonl", distinct(80, with_dates=False))
    out = tmp_path / "out"
    assert main(["gaps", str(corpus), "--out", str(out), "--encoder", "words", "--bootstrap", "1", "--backtest", "2020"]) == 0
    err = capsys.readouterr().err
    assert "growth skipped: no paper has a date" in err and "backtest skipped: no paper has a date" in err
    result = json.loads((out / "gaps.json").read_text())
    assert result["growth_skipped"].startswith("no paper has a date") and "skipped" in result["backtest"]
    assert all(c["growth"] is None for c in result["cluster_list"]) and result["pairs"]
    assert "Growth skipped" in (out / "report.md").read_text()


@pytest.mark.parametrize("option,message", [
    (["--cluster", "hdbscan", "--clusters", "5"], "HDBSCAN finds the number of clusters itself"),
    (["--min-cluster-size", "20"], "--min-cluster-size 20 is HDBSCAN's"),
    (["--cluster", "hdbscan", "--min-cluster-size", "1"], "out of range"),
    (["--cluster", "hdbscan", "--min-cluster-size", "40"], "only 60 distinct abstracts, fewer than the 80 needed for 2 HDBSCAN clusters of 40"),
])
def test_bad_hdbscan_options(tmp_path, capsys, option, message):
    corpus = rows_file(tmp_path / "c.jsonl", distinct(60))
    assert message in run_error(capsys, tmp_path, corpus, *option)


def test_hdbscan_finding_fewer_than_two_clusters(tmp_path, capsys):
    """Abstracts of random words have no dense areas: after the embedding's progress, one error line
    saying what to change, no traceback, nothing written."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [{"id": f"doc-{i}", "title": f"Paper {i}", "abstract": " ".join(f"w{w}" for w in rng.integers(0, 20000, 40))} for i in range(200)]
    out = tmp_path / "out"
    code = main(["gaps", str(rows_file(tmp_path / "c.jsonl", rows)), "--out", str(out), "--encoder", "words", "--cluster", "hdbscan",
                 "--min-cluster-size", "20"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    assert not out.exists()
    line = errors[0]
    assert "HDBSCAN found 0 clusters among 200 abstracts" in line and "--min-cluster-size below 20" in line and "--cluster kmeans" in line

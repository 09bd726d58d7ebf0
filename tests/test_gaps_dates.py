"""Where a paper's date comes from (first version, arXiv id, update_date), the same for `data check`
and `gaps`, and gaps on Kaggle-shaped corpora: dated by versions, by update_date only, or not at all."""

from __future__ import annotations

import csv
import json

import pytest

from toolkit.cli import main
from toolkit.data.dates import dated, restore_arxiv_id, versions_date


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_HOME", str(tmp_path / "home"))


V1 = [{"version": "v1", "created": "Tue, 3 Apr 2007 10:00:00 GMT"}, {"version": "v2", "created": "Fri, 9 May 2008 10:00:00 GMT"}]


@pytest.mark.parametrize("versions", [V1, list(reversed(V1)), json.dumps(V1), repr(V1)], ids=["list", "v2 first", "json text", "repr text"])
def test_versions_date_is_the_first_versions(versions):
    assert str(versions_date(versions)) == "2007-04-03"


def test_date_sources_in_order():
    assert dated("2019-05-01", "0704.0001", V1) == (versions_date(V1), "version")
    date, source = dated("2019-05-01", "hep-th/9901001", None)
    assert (str(date), source) == ("1999-01", "id")
    date, source = dated("5/1/2019", "doc-7", "[]")
    assert (str(date), source) == ("2019-05-01", "update_date")
    assert dated("2019", "doc-7", None, column="published")[1] == "column"
    assert dated("", "doc-7", None) == (None, "")
    # new-style ids began in April 2007, old-style ones ended in March 2007
    assert dated("", "0703.0001")[0] is None and dated("", "math/0704001")[0] is None
    assert str(dated("", "math/0703123")[0]) == "2007-03"


def test_a_spreadsheet_id_gets_its_zero_back_when_the_version_date_agrees():
    assert restore_arxiv_id("704.0001", versions_date(V1)) == "0704.0001"
    assert restore_arxiv_id("704.0001", versions_date([{"created": "Mon, 3 Mar 2008 10:00:00 GMT"}])) == "704.0001"
    assert restore_arxiv_id("704.0001", None) == "704.0001"
    assert restore_arxiv_id("0704.0001", versions_date(V1)) == "0704.0001"


def kaggle_csv(path, rows, *, versions: bool = True, ids: bool = True, update_date: str | None = None):
    """`rows` as a spreadsheet exports the Kaggle snapshot: versions as text (Python's repr, as
    pandas writes a list), update_date as M/D/YYYY."""
    fields = ["id", "title", "abstract", "categories", "update_date"] + (["versions"] if versions else [])
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for n, r in enumerate(rows):
            y, m, d = r["update_date"].split("-")
            w.writerow(r | {"id": r["id"] if ids else f"doc-{n}", "versions": repr(r["versions"]),
                            "update_date": update_date or f"{int(m)}/{int(d)}/{y}"})
    return path


def run_gaps(tmp_path, corpus) -> tuple[dict, str, str]:
    out = tmp_path / "report"
    assert main(["gaps", str(corpus), "--out", str(out), "--encoder", "words", "--bootstrap", "1", "--clusters", "10"]) == 0
    return json.loads((out / "gaps.json").read_text()), (out / "report.md").read_text(), (out / "report.html").read_text()


@pytest.fixture(scope="module")
def rows():
    from toolkit.gaps.synthetic import generate

    return generate(seed=1, scale=0.2, planted_after=2024)


def test_gaps_on_a_kaggle_csv_dates_by_versions_and_data_check_agrees(tmp_path, rows, capsys):
    from toolkit.data.check import check

    # ids that say nothing and an update_date of the snapshot: only the versions date the papers
    corpus = kaggle_csv(tmp_path / "arxiv.csv", rows, ids=False, update_date="6/1/2025")
    result, md, _ = run_gaps(tmp_path, corpus)
    papers = result["corpus"]["papers"]
    assert result["corpus"]["dates_from"] == f"first version {papers}" and result["corpus"]["years"] == "2015..2024"
    assert result["growth_skipped"] is None and result["gaps"]
    assert all("growth" in g["reasons"] and "unknown" not in g["reasons"] for g in result["gaps"])
    assert f"{papers} dated (from first version {papers})" in md
    checked = check(corpus)
    assert checked["date_range"][:4] == "2015" and checked["date_range"][-10:-6] == "2024"
    assert checked["dates_from"] == f"first version {len(rows)}"
    capsys.readouterr()


def test_update_date_alone_dates_papers_and_is_named_as_such(tmp_path, rows, capsys):
    corpus = kaggle_csv(tmp_path / "arxiv.csv", rows, versions=False, ids=False)
    result, md, html = run_gaps(tmp_path, corpus)
    papers = result["corpus"]["papers"]
    assert result["corpus"]["dates_from"] == f"update_date (last update, not submission) {papers}"
    assert result["growth_skipped"] is None
    assert "last update, not submission" in md and "last update, not submission" in html
    capsys.readouterr()


def test_no_dates_still_ranks_near_underbridged_pairs_with_growth_unknown(tmp_path, rows, capsys):
    corpus = tmp_path / "nodates.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"doc-{n}", "title": r["title"], "abstract": r["abstract"]}) + "\n"
                              for n, r in enumerate(rows)), encoding="utf-8")
    result, md, _ = run_gaps(tmp_path, corpus)
    assert result["corpus"]["dated"] == 0 and result["growth_skipped"]
    assert result["gaps"], "pairs near in meaning and bridged less than chance are ranked without dates"
    for g in result["gaps"]:
        assert g["candidate"] and g["lift"] < 1 and g["momentum"] == 1 and "growth unknown" in g["reasons"]
        assert g["score"] == pytest.approx(g["nearness"] * g["atypicality"])
    assert "growth unknown" in md and "No candidate gaps" not in md
    out = capsys.readouterr().out
    assert "unknown" in out


def test_the_reader_restores_a_spreadsheet_id_and_dates_it_by_its_version(tmp_path):
    from toolkit.data.readers import read_arxiv

    path = tmp_path / "ids.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "abstract", "versions", "update_date"])
        w.writerow(["704.0001", "A", "An abstract.", repr(V1), "2009-01-01"])
        w.writerow(["704.0002", "B", "Another abstract.", repr([{"version": "v1", "created": "Mon, 5 Jan 2009 10:00:00 GMT"}]), ""])
        w.writerow(["math/0703123", "C", "A third abstract.", "", "2012-02-02"])
    records = list(read_arxiv(path))
    assert [r.id for r in records] == ["0704.0001", "704.0002", "math/0703123"]
    assert [(str(r.date), r.date_source) for r in records] == [("2007-04-03", "version"), ("2009-01-05", "version"), ("2007-03", "id")]

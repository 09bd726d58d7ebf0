"""The streaming `data build` (issue 13): same splits as the in-memory shuffle, any container, skip
reasons per record in skipped.jsonl, over-long records skipped, the exact token-count shortcut, and
an arXiv CSV built with no options. Every input is written here by the test itself."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import toolkit.data.pipeline as pipeline
from toolkit.data.build import BuildOptions, build
from toolkit.data.check import check
from toolkit.data.pipeline import assign_splits, largest_remainder
from toolkit.data.textsplit import split_sentences
from toolkit.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")


def abstract(i: int, sentences: int = 4, words: int = 12) -> str:
    return " ".join(f"Sentence {s} of abstract {i} " + " ".join(f"w{i}x{s}x{k}" for k in range(words - 5)) + "."
                    for s in range(sentences))


def rows_of(n: int, dup_every: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        text = abstract(i - 1 if dup_every and i % dup_every == 0 and i else i)
        rows.append({"id": f"2101.{i:05d}", "title": f"Paper {i}", "abstract": text, "categories": "cs.LG",
                     "update_date": "2021-01-01"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def build_words(inputs, out, **kw):
    kw.setdefault("tokenizer", "words")
    kw.setdefault("min_approach_tokens", 10)
    return build(inputs, out=out, options=BuildOptions(**kw))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# ------------------------------------------------------------------------------- split assignment


@pytest.mark.parametrize("n, seed", [(0, 0), (1, 0), (7, 3), (148, 0), (1000, 1), (20011, 42)])
def test_assign_splits_replays_the_list_shuffle(n, seed):
    """The compact shuffle gives exactly the splits the earlier in-memory build gave."""
    percents = [90, 5, 5]
    order = list(range(n))
    random.Random(seed).shuffle(order)
    expected = [0] * n
    start = 0
    for s, count in enumerate(largest_remainder(n, percents)):
        for idx in order[start : start + count]:
            expected[idx] = s
        start += count
    assert list(assign_splits(n, percents, seed)) == expected


def test_output_does_not_depend_on_the_chunk_size(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "a.jsonl", rows_of(300, dup_every=7))
    build_words([path], tmp_path / "big")
    monkeypatch.setattr(pipeline, "CHUNK", 7)
    build_words([path], tmp_path / "small")
    assert snapshot(tmp_path / "big") == snapshot(tmp_path / "small")


def test_duplicates_across_files_and_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "CHUNK", 5)
    a = write_jsonl(tmp_path / "a.jsonl", rows_of(40))
    b = write_jsonl(tmp_path / "b.jsonl", [{**r, "id": r["id"] + "b", "abstract": r["abstract"].upper()} for r in rows_of(40)])
    stats = build_words([a, b], tmp_path / "out", split="100")
    assert stats["total"]["kept"] == 40 and stats["total"]["skipped"]["duplicate"] == 40
    skipped = read_rows(tmp_path / "out" / "skipped.jsonl")
    assert {r["reason"] for r in skipped} == {"duplicate"} and len(skipped) == 40
    assert skipped[0] == {"id": "2101.00000b", "source": "b.jsonl:1", "split": "train", "reason": "duplicate",
                          "detail": "same text as a.jsonl:1"}


# ---------------------------------------------------------------------------- every container


def test_build_reads_every_container_the_same(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    rows = rows_of(60, dup_every=9)
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=8)
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "a_hf"))
    results = {}
    for path in (jsonl, tmp_path / "a.csv", tmp_path / "a.parquet", tmp_path / "a_hf"):
        out = tmp_path / f"out_{path.name}"
        stats = build_words([path], out, seed=5)
        assert stats["inputs"][0]["records"] == 60 and len(stats["inputs"][0]["sha256"]) == 64
        results[path.name] = [[(r["id"], r["prompt"], r["response"]) for r in read_rows(out / f"{s}.jsonl")] for s in SPLITS]
    first = results["a.jsonl"]
    assert sum(len(s) for s in first) == 60 - 6
    assert all(r == first for r in results.values())


def test_build_from_a_saved_scientific_papers_dataset(tmp_path):
    from datasets import Dataset

    rows = [{"article": "body text", "section_names": "intro\nmethods",
             "abstract": "".join(f"<S> {s.lower()} </S>" for s in split_sentences(abstract(i)))} for i in range(12)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "papers"))
    stats = build_words([tmp_path / "papers"], tmp_path / "out", split="100")
    assert stats["inputs"][0]["format"] == "papers" and stats["total"]["kept"] == 12
    first = read_rows(tmp_path / "out" / "train.jsonl")[0]
    assert first["prompt"] == split_sentences(abstract(0))[0].lower() and first["source"] == "papers:1"


# ------------------------------------------------------------------- skip reasons, over-long


def test_skipped_jsonl_lists_every_skipped_record(tmp_path):
    rows = rows_of(30, dup_every=10)  # rows 10 and 20 repeat 9 and 19
    rows[3]["abstract"] = "Only one sentence here."
    rows[5]["abstract"] = "A first sentence. Too short."
    rows[7]["abstract"] = ""
    rows[11]["categories"] = "math.CO"
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    out = tmp_path / "out"
    stats = build_words([path], out, split="60,20,20", categories="cs.LG")
    skipped = read_rows(out / "skipped.jsonl")
    by_reason = {}
    for row in skipped:
        assert set(row) <= {"id", "source", "split", "reason", "detail"} and row["split"] in SPLITS
        by_reason.setdefault(row["reason"], []).append(row["id"])
    assert by_reason == {"too_few_sentences": ["2101.00003"], "approach_too_short": ["2101.00005"], "empty": ["2101.00007"],
                         "duplicate": ["2101.00010", "2101.00020"]}
    assert stats["total"]["skipped"]["category"] == 1  # counted, not listed: it was asked for
    assert stats["outputs"]["skipped"] == "skipped.jsonl"
    for name in SPLITS:  # the per-split counts and the listed records agree
        listed = [r for r in skipped if r["split"] == name]
        assert len(listed) == sum(v for k, v in stats["splits"][name]["skipped"].items() if k != "category")
    short = next(r for r in skipped if r["reason"] == "approach_too_short")
    assert short["source"] == "a.jsonl:6" and short["detail"] == "2 tokens < --min-approach-tokens 10"
    # a clean rebuild into the same folder leaves no stale skipped.jsonl
    build_words([write_jsonl(tmp_path / "clean.jsonl", rows_of(30))], out)
    assert not (out / "skipped.jsonl").exists()


def test_an_over_long_record_is_skipped_and_counted(tmp_path):
    rows = rows_of(10)
    rows[4]["abstract"] = "A huge abstract starts here. " + "This sentence repeats forever. " * 170_000  # ~5 MB
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    stats = build_words([path], tmp_path / "out", split="100")
    assert stats["total"]["skipped"]["too_long"] == 1 and stats["total"]["kept"] == 9
    assert stats["options"]["max_chars"] == 20000
    (row,) = read_rows(tmp_path / "out" / "skipped.jsonl")
    assert row["id"] == "2101.00004" and row["reason"] == "too_long" and "> --max-chars 20000" in row["detail"]
    assert "over_max_chars" in check(path) and check(path, max_chars=0).get("over_max_chars") is None
    # the limit is an option
    limit = len(rows[0]["abstract"]) - 1
    with pytest.raises(DataError) as info:
        build_words([path], tmp_path / "out2", split="100", max_chars=limit)
    assert "nothing kept from 10 records (over max chars 10)" in str(info.value)
    assert f"raise --max-chars (now {limit})" in str(info.value)
    proc = subprocess.run([sys.executable, "-m", "toolkit", "data", "build", str(path), "--out", str(tmp_path / "cli"),
                           "--tokenizer", "words", "--min-approach-tokens", "10", "--split", "100"],
                          capture_output=True, text=True, cwd=ROOT, env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 0 and "over max chars" in proc.stdout and "skipped.jsonl" in proc.stdout


def test_qa_over_long_counts_question_and_answer(tmp_path):
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nShort?,Fine.\nLong?," + "x" * 50 + "\n", encoding="utf-8")
    stats = build([qa], out=tmp_path / "out", options=BuildOptions(tokenizer="words", split="100", max_chars=40))
    assert stats["total"]["kept"] == 1 and stats["total"]["skipped"]["too_long"] == 1


# ------------------------------------------------------------------------- no options needed


def test_cli_builds_an_arxiv_csv_with_no_options(tmp_path):
    """title,abstract,categories,update_date (the Kaggle metadata CSV): `toolkit data build FILE`."""
    rows = []
    for i in range(30):
        sentences = [f"Graph neural networks struggle with long-range dependencies in molecule {i} property prediction."]
        sentences += [f"We propose a hierarchical message passing scheme that routes information through learned cluster "
                      f"summaries at level {k}, which shortens paths between distant atoms without adding many parameters."
                      for k in range(4)]
        rows.append({"title": f"Hierarchical Message Passing {i}", "abstract": " ".join(sentences),
                     "categories": "['cs.LG', 'q-bio.BM']" if i % 2 else "cs.LG stat.ML", "update_date": f"{1 + i % 12}/3/2019"})
    with open(tmp_path / "arxiv.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["title", "abstract", "categories", "update_date"])
        writer.writeheader()
        writer.writerows(rows)
    proc = subprocess.run([sys.executable, "-m", "toolkit", "data", "build", "arxiv.csv"], capture_output=True, text=True,
                          cwd=tmp_path, env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "data" / "built" / "stats.json").read_text())
    assert stats["inputs"][0]["format"] == "arxiv" and stats["total"]["kept"] == 30
    row = read_rows(tmp_path / "data" / "built" / "train.jsonl")[0]
    assert row["title"].startswith("Hierarchical Message Passing") and row["categories"] in (["cs.LG", "q-bio.BM"], ["cs.LG", "stat.ML"])
    assert row["prompt"].startswith("Graph neural networks") and row["response"].startswith("We propose")


# ---------------------------------------------------------------------- the token shortcut


def test_word_count_is_a_lower_bound_of_the_real_tokenizer(default_hf_dir):
    from toolkit.data.tokens import token_counter

    counter = token_counter("smollm2")
    assert counter.words_bound
    rng = random.Random(0)
    alphabet = [chr(i) for i in range(0x20, 0x7F)] + list("\x04\x06\x13 \t\n\u00a0\u2028\u3000é字😀\x1c\x1d\u200b") + [chr(0x40000)]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(5000)]
    texts += [abstract(i) for i in range(200)]
    for text, n in zip(texts, counter(texts)):
        assert counter.lower_bound(text) <= n, repr(text)


def test_the_shortcut_decides_exactly_as_counting(tmp_path, default_hf_dir, monkeypatch):
    from toolkit.data.tokens import TokenCounter

    rng = random.Random(1)
    rows = [{"id": f"x{i}", "abstract": abstract(i, sentences=rng.randint(2, 5), words=rng.randint(6, 30))} for i in range(200)]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    with_bound = build([path], out=tmp_path / "bound", options=BuildOptions(min_approach_tokens=120))
    monkeypatch.setattr(TokenCounter, "lower_bound", lambda self, text: 0)  # count every response
    counted = build([path], out=tmp_path / "counted", options=BuildOptions(min_approach_tokens=120))
    assert with_bound == {**counted, "inputs": with_bound["inputs"]}
    assert 0 < with_bound["total"]["skipped"]["approach_too_short"] < 200
    for name in SPLITS:
        assert (tmp_path / "bound" / f"{name}.jsonl").read_bytes() == (tmp_path / "counted" / f"{name}.jsonl").read_bytes()

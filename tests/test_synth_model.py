"""toolkit data synth on the real embedded model: each seed kind end to end, and kill -9 mid-run.

Sampled texts differ between CPUs, so nothing here expects a given text or a given number of kept
pairs: each run either writes a dataset whose every row passes the filters and whose counts add up,
or stops in one line having written nothing; a killed run's generations are all kept and none is
made again."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synth_plant import SAMPLE, lines, reply, run_planted

from toolkit.errors import BackendError, DataError
from toolkit.params import DEFAULTS
from toolkit.synth.command import SynthOptions, synth

SEEDS = {"abstracts": {"abstracts": SAMPLE / "abstracts.jsonl"}, "topics": {"topics": "learning-rate warmup,random seeds in evaluation"},
         "imitate": {"imitate": SAMPLE / "qa.csv"}}


@pytest.mark.parametrize("kind", list(SEEDS))
def test_each_seed_kind_on_the_default_model_writes_a_screened_dataset_or_stops_in_one_line(default_gguf, tmp_path, kind):
    from toolkit.data.tokens import token_counter

    out = tmp_path / kind
    options = SynthOptions(count=1, max_attempts=4, **SEEDS[kind])
    try:
        result = synth(out, options, model=str(default_gguf), params=DEFAULTS.replace(max_tokens=160))
    except (DataError, BackendError) as exc:
        assert "\n" not in str(exc) and ("was dropped" in str(exc) or "nothing parseable" in str(exc))
        assert not (out / "synthetic.jsonl").exists() and not (out / "stats.json").exists()
        return
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] + sum(stats["drops"].values()) == stats["attempts"] <= 4
    rows = lines(out / "synthetic.jsonl")
    assert len(rows) == result["written"] == stats["kept"] >= 1
    count = token_counter("smollm2")
    for r in rows:
        assert r["source"] == "synthetic" and r["seed_item"]["kind"] == kind and r["generator"]["backend"] == "llamacpp"
        assert 6 <= count([r["question"]])[0] <= 80 and 30 <= count([r["answer"]])[0] <= 400
    assert len(lines(out / "dropped.jsonl")) == sum(stats["drops"].values())


def _cached(out: Path) -> dict[str, str]:
    if not (out / "generations.sqlite").exists():
        return {}
    with sqlite3.connect(out / "generations.sqlite") as db:
        return dict(db.execute("SELECT key, value FROM generations"))


def test_kill_9_mid_run_loses_no_generation_and_the_rerun_repeats_none(default_gguf, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "toolkit", "data", "synth", "--topics", "data leakage,ablation studies", "--count", "2",
           "--max-attempts", "4", "--max-tokens", "48", "--model", str(default_gguf), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 1200
    while not _cached(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    before = _cached(out)
    assert before, "the run was killed before its first generation was stored"
    # the re-run asks for the same 4 attempts: it makes only those missing and leaves the stored ones as they were
    subprocess.run(cmd, capture_output=True, timeout=1800)
    after = _cached(out)
    assert len(after) == 4
    assert {k: after[k] for k in before} == before  # a regenerated entry would carry a new timing


def test_the_default_model_as_judge_is_applied_or_reported_too_weak(default_gguf, tmp_path, capsys):
    """`--judge` on a real model (the embedded default; planted generator replies, so only the judge
    runs): it is calibrated on the bundled sample QA and either applied (every kept row carries its
    score, every other pair is dropped for its score) or reported too weak (said on the terminal and
    in stats.json, and no pair is dropped for a score). Which one depends on the CPU's sampling, so
    the test asserts one of the two with its evidence."""
    replies = [reply("How should a learning-rate sweep be set up for fine-tuning a small model?"),
               reply("Which statistical test suits comparing two models on the same evaluation prompts?",
                     "Score both models on the same prompts and compare the per-prompt differences with a paired bootstrap "
                     "interval or a Wilcoxon signed-rank test; report the interval, not only the p-value.")]
    topics = "learning rates,evaluation"
    assert run_planted(tmp_path / "plain", replies, topics=topics, count=2)["kept"] == 2  # without a judge both pass
    out = tmp_path / "judged"
    try:
        result = run_planted(out, replies, topics=topics, count=2, judge=str(default_gguf), min_score=4)
    except DataError as exc:  # the judge dropped both: only an applied judge drops for a score
        printed = capsys.readouterr()
        assert "was dropped" in str(exc) and "too weak" not in printed.err
        assert "dropped: judge score below 4" in printed.out and not (out / "stats.json").exists()
        return
    stats, rows = json.loads((out / "stats.json").read_text()), lines(out / "synthetic.jsonl")
    calibration = stats["judge"]["calibration"]
    assert stats["judge"]["calibrated_on"] == "the bundled sample QA" and calibration["pairs"] == 24
    assert stats["judge"]["applied"] == calibration["passed"] == result["judge"]["applied"]
    if stats["judge"]["applied"]:
        assert calibration["p_value"] < 0.05 and all(r["judge_score"] >= 4 for r in rows)
        assert stats["drops"].get("judge score below 4", 0) == 2 - len(rows)
    else:
        assert "too weak to trust" in capsys.readouterr().err
        assert len(rows) == 2 and not any("judge_score" in r for r in rows) and stats["drops"] == {}

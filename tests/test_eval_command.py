"""`toolkit eval`: every data layout read alike, the one-line errors, presets and the seeded sample
(fast); the zero-shot preset on the default model with its table, results JSON and a resume after
kill -9, and base-vs-tuned and quantization tables on the default model (slow)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_tasks import ARC, write_alternates, write_tasks

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.harness.layouts import TASKS, read_mmlu, read_task
from toolkit.evaluate.harness.tasks import PRESETS, expand


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return write_tasks(root / "original"), write_alternates(root / "alternate")


@pytest.mark.parametrize("task", ["arc_easy", "hellaswag", "piqa", "winogrande", "openbookqa"])
def test_every_layout_gives_the_same_rows(layouts, task):
    """The original release's files and the dataset's exports (save_to_disk, JSON Lines) give the
    same documents in the dataset's fields."""
    original, alternate = (read_task(TASKS[task], root) for root in layouts)
    split = TASKS[task].eval_split
    assert original[split] == alternate[split]
    assert len(original[split]) >= 4


def test_arc_parquet_export_and_mmlu_csvs_with_and_without_header(layouts):
    original, alternate = layouts
    arc = read_task(TASKS["arc_challenge"], original)["test"]
    assert arc[1]["answerKey"] == "B" and arc[1]["choices"]["label"] == ["A", "B", "C", "D"]
    headless, with_header = read_mmlu(original), read_mmlu(alternate)
    assert sorted(headless) == sorted(with_header) == ["abstract_algebra", "astronomy"]
    for subject in headless:
        assert headless[subject]["test"] == with_header[subject]["test"]
        assert [r["answer"] for r in headless[subject]["test"]] == [2, 0, 2] if subject == "abstract_algebra" else True
    assert len(headless["astronomy"]["dev"]) == 2  # the few-shot split of the release


def _one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_a_missing_file_names_the_file_expected_and_where_to_get_it(tmp_path):
    (tmp_path / "piqa").mkdir()
    with pytest.raises(DataError) as exc:
        read_task(TASKS["piqa"], tmp_path)
    text = _one_line(exc.value)
    assert "validation.jsonl" in text and "yonatanbisk.com/piqa" in text
    with pytest.raises(DataError) as exc:
        read_task(TASKS["hellaswag"], tmp_path)
    assert "hellaswag" in _one_line(exc.value) and "validation.jsonl" in str(exc.value)


def test_a_bad_row_names_file_and_line(layouts, tmp_path):
    folder = tmp_path / "piqa"
    folder.mkdir()
    rows = [{"goal": "a", "sol1": "b", "sol2": "c"}, {"goal": "d", "sol1": "e", "sol2": "f"}, {"goal": "g", "sol1": "h"}]
    (folder / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "valid-labels.lst").write_text("0\n1\n0\n")
    with pytest.raises(DataError) as exc:
        read_task(TASKS["piqa"], tmp_path)
    assert f"{folder / 'valid.jsonl'}:3:" in _one_line(exc.value) and "sol2" in str(exc.value)


def test_an_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError) as exc:
        expand(["arc_easy", "hellaswagg"], None)
    text = _one_line(exc.value)
    assert "hellaswagg" in text and all(name in text for name in [*TASKS, *PRESETS])


def test_presets_and_shots():
    assert expand(["study"], None) == [("arc_challenge", 25), ("hellaswag", 10), ("mmlu", 5)]
    assert [t for t, _ in expand(["zeroshot"], None)] == ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "openbookqa", "mmlu"]
    assert dict(expand(["leaderboard"], None))["winogrande"] == 5
    assert expand(["study", "arc_easy"], 3) == [("arc_challenge", 3), ("hellaswag", 3), ("mmlu", 3), ("arc_easy", 3)]


def test_limit_is_a_seeded_random_sample():
    from toolkit.evaluate.harness.tasks import sample

    class Task:
        eval_docs = list(range(50))

    first = sample({"t": Task()}, 10, seed=1)
    assert first == sample({"t": Task()}, 10, seed=1)
    assert first != sample({"t": Task()}, 10, seed=2)
    assert first["t"] != list(range(10)) and len(set(first["t"])) == 10


def test_the_harness_bars_are_off_while_it_runs():
    """Only the toolkit's progress shows: tqdm bars made while the harness runs print nothing, even
    with `disable=False` passed (as the harness does), and tqdm is itself again afterwards."""
    import io

    from tqdm import tqdm

    from toolkit.evaluate.harness.command import _harness_bars_off

    hidden, shown = io.StringIO(), io.StringIO()
    with _harness_bars_off():
        assert list(tqdm(range(3), desc="Tokenizing inputs", disable=False, file=hidden)) == [0, 1, 2]
    list(tqdm(range(3), desc="afterwards", disable=False, file=shown))
    assert hidden.getvalue() == "" and "afterwards" in shown.getvalue()


# -- slow: real models ------------------------------------------------------------------------


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def _per_item(out: Path, label: str) -> dict:
    rows = [json.loads(line) for line in (out / label / "samples.jsonl").read_text().splitlines()]
    return {(r["task"], r["doc_id"]): (r["acc"], r.get("acc_norm")) for r in rows}


@pytest.mark.slow
def test_zeroshot_preset_on_the_default_model_and_resume_after_kill(default_gguf, layouts, tmp_path, monkeypatch, capfd):
    from toolkit.evaluate.harness.command import evaluate
    from toolkit.runtime import scoring

    data = layouts[0]
    full = tmp_path / "full"
    assert evaluate(["zeroshot"], model=["default"], data_dir=data, out=full) == 0
    err = capfd.readouterr().err  # the harness's and datasets' own tqdm bars stay off
    assert "Tokenizing inputs" not in err and "examples/s" not in err
    report = (full / "report.md").read_text()
    for task in ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "openbookqa", "mmlu"):
        assert f"| {task} | 0 |" in report
    assert "MMLU subjects scored: abstract_algebra, astronomy" in report
    results = json.loads((full / "default" / "results.json").read_text())
    assert {"arc_easy", "mmlu_astronomy", "winogrande"} <= set(results["results"])

    # kill -9 mid-run, then re-run: only the requests not yet cached are scored, and the answers are the uninterrupted run's
    cut, subset = tmp_path / "cut", ["arc_easy", "hellaswag", "openbookqa"]
    env = dict(os.environ, TOOLKIT_THREADS="1")
    # decodes of 16 tokens: items finish one by one (512 packs most of them into the same last decodes)
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "eval", *subset, "--data-dir", str(data), "--out", str(cut), "--n-batch", "16"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while _rows(cut / "requests.sqlite") < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = _rows(cut / "requests.sqlite")
    scored = []
    original = scoring.Scorer.score_many  # every scoring path goes through it (`score` too)
    monkeypatch.setattr(scoring.Scorer, "score_many",
                        lambda self, items, **kw: original(self, ((ctx, scored.extend(conts) or conts) for ctx, conts in items), **kw))
    assert evaluate(subset, model=["default"], data_dir=data, out=cut) == 0
    total = _rows(cut / "requests.sqlite")
    assert 0 < kept < total
    assert len(scored) == total - kept
    full_items = _per_item(full, "default")
    assert _per_item(cut, "default") == {k: v for k, v in full_items.items() if k[0] in subset}


def _resps(out: Path, label: str) -> list:
    return [json.loads(line)["resps"] for line in (out / label / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def default_models(tmp_path_factory, default_hf_dir):
    """The default model as f16, Q8_0 and Q4_K_M GGUFs, and a LoRA trained two steps on it shipped
    as an ADAPTER Modelfile over the f16 GGUF: one `export --adapter` converts them all."""
    from toolkit.export.convert import export
    from toolkit.train.command import TrainOverrides, train

    root = tmp_path_factory.mktemp("eval-default")
    rows = [{"prompt": f"Question: {q}", "response": f"Answer: {c[a]}"} for q, c, a in ARC]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train(options=TrainOverrides(model=str(default_hf_dir), train_data=str(data), validation_data="", out=str(root / "run"),
                                          max_steps=2, batch_size=2, grad_accum=1, max_length=64, lr=5e-2, eval_every=0, save_every=0))
    out = root / "gguf"
    assert export(str(default_hf_dir), out=out, outtype="f16", quant=["Q8_0", "Q4_K_M"], adapter=result.adapter) == 0
    models = {q: out / f"SmolLM2-135M-Instruct-{q}.gguf" for q in ("f16", "Q8_0", "Q4_K_M")}
    return {**models, "tuned": next(out.glob("*-F16.Modelfile"))}


@pytest.mark.slow
def test_base_vs_tuned_paired_and_quantization_table_on_the_default_model(default_models, layouts, tmp_path):
    """The issue's comparisons on the default model, at --limit 4 to keep CI short: base vs a LoRA
    trained in the test (McNemar, bootstrap) and f16 / Q8_0 / Q4_K_M, each against f16."""
    from toolkit.evaluate.harness.command import evaluate

    data, tasks = layouts[0], ["arc_easy", "hellaswag", "piqa", "winogrande"]
    out = tmp_path / "tuned"
    models = [f"base={default_models['f16']}", f"tuned={default_models['tuned']}"]
    assert evaluate(tasks, model=models, data_dir=data, out=out, limit=4) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [c["task"] for c in summary["comparisons"]] == tasks
    for c in summary["comparisons"]:
        assert c["base"] == "base" and c["other"] == "tuned" and c["n"] >= 4
        assert c["low"] <= c["diff"] <= c["high"] and 0 <= c["mcnemar_p"] <= 1
        assert c["diff"] == pytest.approx(c["acc_other"] - c["acc_base"])
    # the LoRA really changes the scores (its log-likelihoods differ from the base's)
    assert _resps(out, "base") != _resps(out, "tuned")
    assert "McNemar" in (out / "report.md").read_text()

    quant = tmp_path / "quant"
    models = [f"{q}={default_models[q]}" for q in ("f16", "Q8_0", "Q4_K_M")]
    assert evaluate(tasks[:2], model=models, data_dir=data, out=quant, limit=4) == 0
    pairs = [(c["other"], c["base"], c["task"]) for c in json.loads((quant / "summary.json").read_text())["comparisons"]]
    assert pairs == [(q, "f16", t) for q in ("Q8_0", "Q4_K_M") for t in tasks[:2]]
    assert "Q4_K_M vs f16" in (quant / "report.md").read_text()
    # the quantized files really are other weights: their log-likelihoods differ from f16's
    assert _resps(quant, "f16") != _resps(quant, "Q4_K_M")


def test_model_labels():
    from toolkit.evaluate.harness.command import parse_models

    assert parse_models(["base=a/b.gguf", "runs/x/tuned-Q4_K_M.gguf", "http://127.0.0.1:11434"]) == [
        ("base", "a/b.gguf"), ("tuned-Q4_K_M", "runs/x/tuned-Q4_K_M.gguf"), ("server", "http://127.0.0.1:11434")]
    with pytest.raises(ConfigError):
        parse_models(["x=a.gguf", "x=b.gguf"])

"""Sweeps: validation before any generation, a real tiny study, resume after kill -9, two workers."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from sweep_files import ROOT, run_workers, shared_trials, storages, sweep_cmd, validation_split, write_sweep_file

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.sweep.command import sweep
from toolkit.evaluate.sweep.config import load_sweep, parse_sweep

# the search (mode: search): TPE with median pruning, then re-runs; the race is tested in test_sweep_race.py
TINY = {"name": "tiny", "mode": "search", "sampler": {"type": "tpe", "seed": 0}, "pruner": {"type": "median", "chunks": 2, "startup_trials": 1},
        "trials": 3, "prompts": 4, "seed": 7, "fixed": {"max_tokens": 16},
        "noise": {"rerun_top": 1, "rerun_seeds": [1, 2], "bootstrap": 200},
        "space": {"temperature": {"low": 0.1, "high": 1.2, "step": 0.05}, "top_p": {"low": 0.6, "high": 1.0, "step": 0.05}}}


def write_sweep(path: Path, **changes) -> Path:
    return write_sweep_file(path, "test sweep", {**TINY, **changes})


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return validation_split(tmp_path_factory)


def test_every_shipped_sweep_loads_and_says_what_it_is_for():
    files = sorted((ROOT / "sweeps").glob("*.yaml"))
    assert len(files) >= 7
    for f in files:
        head = f.read_text().splitlines()[:3]
        assert head[0].startswith("# ") and any("toolkit sweep" in line for line in head), f
        cfg = load_sweep(f)
        assert cfg.space and cfg.trials > 0
    assert load_sweep(ROOT / "sweeps" / "temperature-top-p-grid.yaml").trials == 25


@pytest.mark.parametrize("change,match", [
    ({"space": {"temprature": {"low": 0.1, "high": 1.0}}}, "unknown parameter 'temprature'"),
    ({"space": {"top_p": {"low": 0.5, "high": 1.5}}}, r"top_p=1.5 is outside its valid range"),
    ({"space": {"temperature": {"low": 1.0, "high": 0.5}}}, "must be below high"),
    ({"space": {"temperature": {"low": 0.0, "high": 1.0, "log": True}}}, "log needs low above 0"),
    ({"space": {"max_tokens": {"values": []}}}, r"space\.max_tokens\.values must be a non-empty list"),
    ({"space": {"max_tokens": {"values": [64, 96.5]}}}, "max_tokens takes whole numbers"),
    ({"sampler": "annealing"}, "sampler 'annealing' is unknown"),
    ({"metric": "meteor"}, "unknown metric 'meteor'"),
    ({"bogus": 1}, "unknown key 'bogus'"),
])
def test_bad_sweep_files_fail_in_one_line(change, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_sweep({**TINY, **change}, where="s.yaml")
    assert "\n" not in str(info.value) and "s.yaml" in str(info.value)


def test_empty_split_missing_references_and_bad_parallel_fail_before_generation(tmp_path):
    f = write_sweep(tmp_path / "s.yaml")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        sweep(f, data=empty, out=tmp_path / "o")
    noref = tmp_path / "noref.jsonl"
    noref.write_text("\n".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) for i in range(5)) + "\n")
    with pytest.raises(DataError, match="no reference response"):
        sweep(f, data=noref, out=tmp_path / "o")
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"id": str(i), "prompt": f"q{i}", "response": f"a{i}"}) for i in range(5)) + "\n")
    with pytest.raises(ConfigError, match=r"parallel=65 is outside 1\.\.64"):
        sweep(f, data=good, out=tmp_path / "o", parallel=65)
    assert not (tmp_path / "o" / "study.db").exists()


def _study(out: Path, name: str = "tiny"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def test_tiny_sweep_end_to_end_and_reproducible(tmp_path, split, default_gguf):
    from toolkit.export.modelfile.checks import validate_file

    f = write_sweep(tmp_path / "s.yaml")
    mf = tmp_path / "m.Modelfile"
    mf.write_text(f'FROM {default_gguf}\nTEMPLATE """{{{{ .Prompt }}}}"""\nPARAMETER stop <|im_end|>\nPARAMETER temperature 0.123\n')
    assert sweep(f, data=split, out=tmp_path / "a", modelfile=mf) == 0
    out = tmp_path / "a"
    for name in ("trials.csv", "best.json", "best.yaml", "per_prompt.csv", "noise.json", "report.md", "plots/history.png", "plots/histogram.png"):
        assert (out / name).exists(), name
    best = json.loads((out / "best.json").read_text())
    assert "beat" in best["verdict"] or "nothing to compare" in best["verdict"]
    assert set(best["rerun"]) >= {"default"}
    assert best["chosen"] in best["rerun"]  # the candidate whose values best.yaml holds
    import csv

    temps = [r["temperature"] for r in csv.DictReader((out / "trials.csv").open())]
    assert all(len(t.split(".")[-1]) <= 6 for t in temps), temps  # stepped values, not 0.30000000000000004
    assert best["search_trials"] == 3 and 0 < best["search_generations"] <= 3 * 4
    assert "Verdict" in (out / "report.md").read_text()
    assert best["machine"]["cpu"] and "extra_bufts" in best["machine"]  # where the numbers were measured
    assert "Measured on: " in (out / "report.md").read_text()
    params = validate_file(mf).parameters
    assert params["temperature"] != 0.123 and "top_p" in params  # the searched parameters rewritten ...
    assert "num_predict" not in params and "seed" not in params  # ... not the sweep's fixed conditions
    assert set(yaml.safe_load((out / "best.yaml").read_text())["parameters"]) == {"temperature", "top_p"}
    assert validate_file(mf).stops == ["<|im_end|>"]
    # a fresh study with the same sweep proposes the same trials and scores them the same
    sweep(f, data=split, out=tmp_path / "b", noise=False)
    first = [(t.params, t.value) for t in _study(out).trials]
    second = [(t.params, t.value) for t in _study(tmp_path / "b").trials]
    assert first == second


def test_report_sets_the_search_beside_another_sweep(tmp_path):
    from toolkit.evaluate.sweep.command import _load_against
    from toolkit.evaluate.sweep.report import render_against

    tpe = {"study": "tpe", "search_best_value": 0.57, "search_generations": 200, "search_trials": 30}
    grid = {"study": "grid", "search_best_value": 0.56, "search_generations": 300, "search_trials": 25}
    assert "reaches the best of `grid` (+0.0100) with fewer generations (67% of them)" in "\n".join(render_against(tpe, grid))
    assert "does not reach" in "\n".join(render_against({**tpe, "search_best_value": 0.5}, grid))
    with pytest.raises(ConfigError, match="best.json"):
        _load_against(tmp_path)


def test_reports_never_show_a_storage_password():
    from toolkit.evaluate.sweep.command import _without_password

    assert _without_password("postgresql://u:s3cr@t@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert _without_password("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"


def _cmd(sweep_file: Path, split: Path, out: Path, *extra: str) -> list[str]:
    return sweep_cmd(sweep_file, split, out, "--no-noise", *extra)


@pytest.mark.slow
def test_kill_and_rerun_continues_the_study(tmp_path, split):
    import optuna

    f = write_sweep(tmp_path / "s.yaml", trials=4, pruner="none")
    out = tmp_path / "o"
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(_cmd(f, split, out), stdout=log, stderr=log)
    deadline = time.time() + 600
    done: list = []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        try:
            done = [t for t in _study(out).trials if t.state == optuna.trial.TrialState.COMPLETE]
        except Exception:
            continue
        if done:
            break
    assert done, "no trial completed before the kill: " + (tmp_path / "worker.log").read_text()[-1500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t.value for t in _study(out).trials if t.state == optuna.trial.TrialState.COMPLETE}
    subprocess.run(_cmd(f, split, out), check=True, capture_output=True)
    trials = _study(out).trials
    after = {t.number: t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(after) >= 4
    assert all(after[n] == v for n, v in before.items()), "completed trials must survive the kill intact"


@pytest.mark.slow
@pytest.mark.parametrize("storage", storages())
def test_two_workers_share_one_study_without_losing_or_duplicating(tmp_path, split, storage):
    import uuid

    import optuna

    f = write_sweep(tmp_path / "g.yaml", sampler="grid", pruner="none", prompts=2, fixed={"max_tokens": 8},
                    space={"temperature": {"values": [0.2, 0.6, 1.0]}, "top_p": {"values": [0.8, 1.0]}})
    out = tmp_path / "o"
    out.mkdir()
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    extra = ["--storage", storage, "--study", name] if storage else ["--study", name]
    url = storage or f"sqlite:///{out / 'study.db'}"
    run_workers([_cmd(f, split, out, *extra)] * 2)
    trials = shared_trials(name, url, server=bool(storage))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    covered = {(t.params["temperature"], t.params["top_p"]) for t in complete}
    assert covered == {(a, b) for a in (0.2, 0.6, 1.0) for b in (0.8, 1.0)}, "every grid point evaluated"
    assert all(len(t.user_attrs["scores"]) == 2 for t in complete)

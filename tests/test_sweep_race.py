"""Racing sweeps (mode: race): every candidate against the default on the same prompts and seeds,
stopping when the decision is known. Fast tests drive the race with a scripted backend; the slow
ones run the real default model on a few prompts."""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sweep_files import run_workers, shared_trials, storages, sweep_cmd, validation_split, write_sweep_file

from toolkit.errors import ConfigError
from toolkit.evaluate.sweep.config import parse_sweep

WORDS = "the model reads an abstract and writes a summary of its main result in plain words for readers".split()


class ScriptedBackend:
    """Replies with the first `max_tokens` words of the prompt, a few of them dropped at random by
    the seed (so seeds differ, and a longer reply scores higher against the prompt as reference)."""

    def reserve(self, conversations, max_tokens):
        pass

    def generate_batch(self, conversations, params):
        params = params if isinstance(params, list) else [params] * len(conversations)
        out = []
        for conv, p in zip(conversations, params):
            words = conv[-1]["content"].split()[: p.max_tokens]
            rng = random.Random(f"{conv[-1]['content']}|{p.seed}|{p.temperature}")
            kept = [w for w in words if rng.random() > 0.1 + 0.05 * p.temperature]
            out.append(SimpleNamespace(text=" ".join(kept), completion_tokens=len(words)))
        return out


def evaluator(n: int = 16):
    from toolkit.evaluate.metrics import MetricSuite, ScorerConfig
    from toolkit.evaluate.sweep.study import Evaluator

    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(n)]
    return Evaluator(ScriptedBackend(), prompts, prompts, {"rouge_l": 1.0}, MetricSuite(ScorerConfig()))


PLANTED = {"name": "planted", "metric": "rouge_l", "sampler": {"type": "grid", "seed": 0}, "prompts": 16, "seed": 7,
           "default": {"max_tokens": 6, "temperature": 0.5}, "race": {"chunk": 4, "wave": 3},
           "noise": {"rerun_seeds": [1, 2], "bootstrap": 200},
           "space": {"max_tokens": {"values": [5, 6, 30]}, "temperature": {"values": [0.4, 0.5]}}}
# near-identical settings: temperature barely changes which words are dropped
SAME = {**PLANTED, "name": "same", "default": {"temperature": 0.5}, "fixed": {"max_tokens": 12},
        "space": {"temperature": {"values": [0.5, 0.52, 0.54, 0.56]}}}


def race(raw: dict, storage: str, name: str | None = None, ev=None):
    from toolkit.evaluate.sweep.race import run_race
    from toolkit.evaluate.sweep.study import open_study

    cfg = parse_sweep(raw)
    study = open_study(cfg, storage, name or cfg.name, fingerprint={"sweep": cfg.to_dict()})
    return study, run_race(study, cfg, ev or evaluator(cfg.prompts))


def outcomes(study) -> dict:
    """Candidate index -> (params, outcome, scores) of every judged trial."""
    return {t.user_attrs["candidate"]: (t.params, t.user_attrs["outcome"], t.user_attrs["scores"])
            for t in study.trials if t.user_attrs.get("outcome") not in (None, "stopped", "budget")}


def test_race_settings_default_block_and_mode_are_checked_in_one_line():
    cfg = parse_sweep(PLANTED)
    assert cfg.mode == "race" and cfg.race.chunk == 4 and cfg.default_params().max_tokens == 6
    assert parse_sweep({**PLANTED, "mode": "search"}).mode == "search"
    for change, match in [({"mode": "fast"}, "mode 'fast' is unknown"), ({"race": {"chunks": 2}}, r"race\.chunks is unknown"),
                          ({"race": {"alpha": 2}}, r"race\.alpha must be between 0 and 1"),
                          ({"default": {"temprature": 1}}, r"default\.temprature is not a decoding parameter"),
                          ({"default": {"top_p": 3}}, "default: top_p=3")]:
        with pytest.raises(ConfigError, match=match) as info:
            parse_sweep({**PLANTED, **change}, where="s.yaml")
        assert "\n" not in str(info.value) and "s.yaml" in str(info.value)


def test_conditional_power_follows_the_trend():
    from toolkit.evaluate.stats import conditional_power

    assert conditional_power([0.0] * 4, 20) == 0.0  # identical replies: nothing can change
    assert conditional_power([0.1, 0.12, 0.09, 0.11], 20, alpha=0.01) > 0.99
    small = conditional_power([0.01, -0.02, 0.015, 0.0], 20, alpha=0.01)
    assert 0 < small < 0.05
    assert conditional_power([0.01, -0.02, 0.015, 0.0], 20, alpha=0.01) < conditional_power([0.03, -0.02, 0.035, 0.02], 20, alpha=0.01)


def test_planted_better_setting_is_found_before_every_prompt_is_scored(tmp_path):
    study, decision = race(PLANTED, f"sqlite:///{tmp_path / 'a.db'}")
    assert decision["decision"] == "found"
    assert decision["params"]["max_tokens"] == 30  # the planted setting
    assert decision["confirm"]["comparison"]["significant"] and decision["confirm"]["seeds"] == [1, 2]
    assert decision["generations"] < decision["exhaustive_generations"] / 2
    assert "decided *found* after" in decision["sentence"] and "of an exhaustive run" in decision["sentence"]
    default = study.trials[0]
    assert default.user_attrs["role"] == "default" and len(default.user_attrs["scores"]) == 16  # trial 0, every prompt


def test_near_identical_settings_end_nothing_to_gain_early_and_a_rerun_changes_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study, decision = race(SAME, url)
    assert decision["decision"] == "nothing to gain" and decision["raced"] == 4
    assert all(len(scores) < 16 for _, _, scores in outcomes(study).values()), "stopped early"
    assert decision["generations"] < decision["exhaustive_generations"] / 3
    again, second = race(SAME, url)  # continuing a decided study runs nothing
    assert second["generations"] == decision["generations"] and second["decision"] == decision["decision"]


def test_killed_race_resumes_to_the_same_trials_and_decision(tmp_path):
    from toolkit.evaluate.sweep.study import Evaluator

    class Killed(Exception):
        pass

    class DiesAfter(Evaluator):
        """Evaluates normally, then dies (as kill -9 would) in the middle of the race."""

        calls = 0

        def evaluate_many(self, requests):
            DiesAfter.calls += 1
            if DiesAfter.calls == 4:
                raise Killed
            return super().evaluate_many(requests)

    whole, expected = race(PLANTED, f"sqlite:///{tmp_path / 'whole.db'}")
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    base = evaluator()
    with pytest.raises(Killed):
        race(PLANTED, url, ev=DiesAfter(base.backend, base.prompts, base.references, base.metric, base.suite))
    resumed, decision = race(PLANTED, url)
    assert outcomes(resumed) == outcomes(whole)
    assert (decision["decision"], decision["params"]) == (expected["decision"], expected["params"])


def test_a_sampled_space_races_the_candidates_tpe_proposes_and_says_so(tmp_path):
    raw = {**SAME, "name": "tpe", "sampler": {"type": "tpe", "seed": 0}, "trials": 5,
           "space": {"temperature": {"low": 0.4, "high": 0.6, "step": 0.01}}}
    study, decision = race(raw, f"sqlite:///{tmp_path / 't.db'}")
    assert decision["decision"] == "nothing to gain" and decision["raced"] == decision["candidates"] == 5
    assert "the 5 candidates the sampler tried within the trial budget" in decision["sentence"]


def test_budget_stop_says_where_the_race_was_heading(tmp_path):
    study, decision = race({**SAME, "race": {"chunk": 4, "wave": 4, "max_generations": 17}}, f"sqlite:///{tmp_path / 'b.db'}")
    assert decision["decision"] == "budget" and decision["budget"] == "17 generations"
    assert decision["heading"] in ("found", "nothing to gain") and "heading for" in decision["sentence"]


# --- the real default model -------------------------------------------------------------------

def write(path: Path, raw: dict) -> Path:
    return write_sweep_file(path, "a test race: does any setting beat the default?", raw)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return validation_split(tmp_path_factory)


REAL = {"name": "real", "metric": "rouge_l", "sampler": {"type": "grid", "seed": 0}, "prompts": 8, "seed": 7,
        "race": {"chunk": 4, "wave": 4}, "noise": {"rerun_seeds": [1, 2], "bootstrap": 200}}


def test_real_model_planted_short_default_is_found(tmp_path, split, default_gguf):
    from toolkit.evaluate.sweep.command import sweep

    f = write(tmp_path / "p.yaml", {**REAL, "default": {"max_tokens": 2}, "fixed": {"temperature": 0.3},
                                    "space": {"max_tokens": {"values": [2, 24]}}})
    assert sweep(f, model=str(default_gguf), data=split, out=tmp_path / "o") == 0
    best = json.loads((tmp_path / "o" / "best.json").read_text())
    assert best["race"]["decision"] == "found" and best["race"]["params"] == {"max_tokens": 24}
    assert best["chosen"] != "default" and best["race"]["generations"] < best["race"]["exhaustive_generations"]
    report = (tmp_path / "o" / "report.md").read_text()
    assert report.splitlines()[2].startswith("**Decision:** decided *found* after")


def test_real_model_near_identical_settings_end_nothing_to_gain_early(tmp_path, split, default_gguf):
    from toolkit.evaluate.sweep.command import sweep

    f = write(tmp_path / "n.yaml", {**REAL, "fixed": {"max_tokens": 12, "temperature": 0.0},
                                    "space": {"top_p": {"values": [0.9, 0.95]}}})
    assert sweep(f, model=str(default_gguf), data=split, out=tmp_path / "o") == 0
    race = json.loads((tmp_path / "o" / "best.json").read_text())["race"]
    assert race["decision"] == "nothing to gain"
    assert race["generations"] < (race["candidates"] + 1) * race["prompts"], "decided before every prompt was scored"


@pytest.mark.slow
def test_real_model_kill_9_mid_race_then_rerun_matches_an_uninterrupted_race(tmp_path, split):
    import optuna

    f = write(tmp_path / "k.yaml", {**REAL, "default": {"max_tokens": 2}, "fixed": {"temperature": 0.3},
                                    "race": {"chunk": 4, "wave": 1},
                                    "space": {"max_tokens": {"values": [2, 3, 4, 24]}}})
    subprocess.run(sweep_cmd(f, split, tmp_path / "whole"), check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(sweep_cmd(f, split, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="real", storage=f"sqlite:///{out / 'study.db'}")
        except Exception:
            continue
        if any(t.user_attrs.get("outcome") for t in study.trials):  # a candidate judged: mid-race
            break
    assert proc.poll() is None, "the race ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(sweep_cmd(f, split, out), check=True, capture_output=True)
    studies = [optuna.load_study(study_name="real", storage=f"sqlite:///{d / 'study.db'}") for d in (tmp_path / "whole", out)]
    assert outcomes(studies[1]) == outcomes(studies[0])
    decisions = [json.loads((d / "best.json").read_text())["race"] for d in (tmp_path / "whole", out)]
    assert [(d["decision"], d.get("params")) for d in decisions[1:]] == [(decisions[0]["decision"], decisions[0].get("params"))]


@pytest.mark.slow
@pytest.mark.parametrize("storage", storages())
def test_two_workers_race_to_one_decision(tmp_path, split, storage):
    import uuid

    import optuna

    f = write(tmp_path / "w.yaml", {**REAL, "fixed": {"max_tokens": 8, "temperature": 0.0}, "race": {"chunk": 4, "wave": 2},
                                    "space": {"top_p": {"values": [0.8, 0.9, 0.95, 1.0]}}})
    name = f"race-{uuid.uuid4().hex[:8]}"
    url = storage or f"sqlite:///{tmp_path / 'shared.db'}"
    run_workers([sweep_cmd(f, split, tmp_path / f"w{i}", "--storage", url, "--study", name) for i in range(2)])
    trials = shared_trials(name, url, server=bool(storage))
    decisions = [json.loads((tmp_path / f"w{i}" / "best.json").read_text())["race"] for i in range(2)]
    assert decisions[0]["decision"] == decisions[1]["decision"] == "nothing to gain"
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    judged = {t.user_attrs["candidate"] for t in trials if t.user_attrs.get("outcome") not in (None, "stopped")}
    assert judged == {0, 1, 2, 3}, "every candidate judged"

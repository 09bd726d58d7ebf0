"""Sharing the CPU (toolkit/runtime/threads.py): the thread count's precedence, the waiting and
priority defaults and their switch, --threads on every command that runs a model, the doctor's
section, and a sweep that gives the same trials alone and beside a process burning a core."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from toolkit.cli import RUNS_MODELS, build_parser
from toolkit.doctor import sharing_rows
from toolkit.errors import ConfigError
from toolkit.runtime.threads import BATCH_NICE, FROM_CORES, FROM_ENV, FROM_FLAG, WAIT_DEFAULTS, decide, usable_cores

ROOT = Path(__file__).resolve().parents[1]


def test_the_count_comes_from_the_flag_then_the_environment_then_the_cores():
    env = {"TOOLKIT_THREADS": "1"}
    assert (decide(3, interactive=False, environ=env).threads, decide(3, interactive=False, environ=env).source) == (3, FROM_FLAG)
    from_env = decide(None, interactive=False, environ=env)
    assert (from_env.threads, from_env.source) == (1, FROM_ENV)
    assert from_env.writes["OMP_NUM_THREADS"] == "1"  # torch follows an explicit count
    default = decide(None, interactive=False, environ={})
    assert (default.threads, default.source) == (usable_cores(), FROM_CORES)
    assert "OMP_NUM_THREADS" not in default.writes and "TOOLKIT_THREADS" not in default.writes  # torch keeps its default
    flagged = decide(2, interactive=False, environ={"TOOLKIT_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert flagged.writes["TOOLKIT_THREADS"] == flagged.writes["OMP_NUM_THREADS"] == "2"  # the flag reaches children too
    for bad in ({"TOOLKIT_THREADS": "two"}, {"TOOLKIT_THREADS": "0"}):
        with pytest.raises(ConfigError, match="TOOLKIT_THREADS=.* is not a whole number") as exc:
            decide(None, interactive=False, environ=bad)
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="--threads 0 is not"):
        decide(0, interactive=False, environ={})


def test_waiting_and_priority_defaults_keep_what_the_user_set():
    chat = decide(None, interactive=True, environ={"GOMP_SPINCOUNT": "5"})
    assert chat.writes["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in chat.writes
    assert chat.wait["GOMP_SPINCOUNT"][0] == "5" and chat.nice is None  # serve and chat keep their priority
    batch = decide(None, interactive=False, environ={"GOMP_SPINCOUNT": "5"})
    assert batch.fair and batch.nice == BATCH_NICE
    assert not set(WAIT_DEFAULTS) & set(batch.writes)  # batch work keeps the libraries' waiting: it is niced instead
    assert batch.wait["GOMP_SPINCOUNT"][0] == "5" and batch.wait["OMP_WAIT_POLICY"][0] == ""
    assert decide(None, interactive=False, environ={"TOOLKIT_NICE": "0"}).nice is None
    assert decide(None, interactive=False, environ={"TOOLKIT_NICE": "5"}).nice == 5


def test_switched_off_defaults_write_nothing():
    off = decide(None, interactive=False, environ={"TOOLKIT_FAIR": "0"})
    assert not off.fair and off.writes == {} and off.nice is None
    assert all(value == "" for value, _ in off.wait.values())


APPLY = """
import json, os, sys
from toolkit.runtime import threads
before = dict(os.environ)
nice, group = os.nice(0), threads.group_nice()
threads.apply(None, interactive=sys.argv[1] == "chat")
import llama_cpp  # libgomp loads now and prints the values it read (OMP_DISPLAY_ENV)
changed = {k: v for k, v in os.environ.items() if before.get(k) != v}
print(json.dumps({"changed": changed, "removed": sorted(set(before) - set(os.environ)), "nice": [nice, os.nice(0)],
                  "group": [group, threads.group_nice()]}))
"""


def _apply_in_child(kind: str, **env: str) -> tuple[dict, str]:
    import json

    base = {k: v for k, v in os.environ.items() if k not in WAIT_DEFAULTS and k not in {"TOOLKIT_FAIR", "TOOLKIT_NICE", "TOOLKIT_THREADS"}}
    # a session of its own, so lowering its autogroup cannot touch the test run's
    proc = subprocess.run([sys.executable, "-c", APPLY, kind], capture_output=True, text=True, check=True, start_new_session=True,
                          env={**base, "OMP_DISPLAY_ENV": "verbose", **env})
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_apply_sets_the_environment_before_libgomp_reads_it_and_nices_batch_work():
    chat, libgomp = _apply_in_child("chat")
    assert chat["changed"] == WAIT_DEFAULTS and chat["removed"] == []
    assert f"GOMP_SPINCOUNT = '{WAIT_DEFAULTS['GOMP_SPINCOUNT']}'" in libgomp and "OMP_WAIT_POLICY = 'PASSIVE'" in libgomp
    assert chat["nice"][0] == chat["nice"][1] and chat["group"][0] == chat["group"][1]
    result, libgomp = _apply_in_child("batch")
    assert result["changed"] == {} and result["removed"] == []
    assert "GOMP_SPINCOUNT = '300000'" in libgomp  # libgomp's own spin: batch work is niced instead
    before, after = result["nice"]
    assert after == max(before, BATCH_NICE)
    group_before, group_after = result["group"]
    if group_before is not None:  # the kernel groups by session: the session's group is lowered too
        assert group_after == max(group_before, BATCH_NICE)
    off, libgomp = _apply_in_child("batch", TOOLKIT_FAIR="0")
    assert off["changed"] == {} and off["removed"] == [] and off["nice"][0] == off["nice"][1]
    assert off["group"][0] == off["group"][1]
    assert "GOMP_SPINCOUNT = '300000'" in libgomp  # libgomp's own default spin, untouched


def _subparsers(parser):
    return parser._subparsers._group_actions[0].choices


def _parser_of(commands: dict, command: str):
    """A command's parser: `train search` is the top-level `train-search`, `data prefs` is in `data`."""
    words = command.split()
    return commands.get("-".join(words)) or _subparsers(commands[words[0]])[words[1]]


def test_every_command_that_runs_a_model_takes_threads():
    commands = _subparsers(build_parser())
    for command in RUNS_MODELS:
        assert "--threads" in _parser_of(commands, command)._option_string_actions, command
    assert "--threads" not in _parser_of(commands, "data build")._option_string_actions


def test_doctor_section_warns_when_the_threads_oversubscribe_the_cores():
    cores = usable_cores()
    fitting = decide(1, interactive=False, environ={})
    rows = dict(sharing_rows(fitting, 0.0, 0, False, decide(1, interactive=True, environ={})))
    assert rows["threads"].startswith("1 (--threads)") and f"nice {BATCH_NICE}" in rows["priority"]
    assert "batch commands: OMP_WAIT_POLICY=(unset)" in rows["waiting"] and "serve and chat: OMP_WAIT_POLICY=PASSIVE" in rows["waiting"]
    assert f"{cores} usable" in rows["cores"] and not [label for label, _ in sharing_rows(fitting, 0.0, 0, False) if "warning" in label]
    too_many = [text for label, text in sharing_rows(decide(cores + 2, interactive=False, environ={}), 0.0, 0, False) if "warning" in label]
    assert len(too_many) == 1 and f"{cores + 2} threads on {cores} usable cores" in too_many[0]
    busy = [text for label, text in sharing_rows(fitting, cores + 1.5, 0, False) if "warning" in label]
    assert len(busy) == 1 and f"load average {cores + 1.5:.1f}" in busy[0]
    off = dict(sharing_rows(decide(None, interactive=False, environ={"TOOLKIT_FAIR": "0"}), 0.0, 0, True))
    assert "TOOLKIT_FAIR=0" in off["waiting"] and "TOOLKIT_FAIR=0" in off["priority"]


def test_doctor_shows_the_settings_the_command_runs_with():
    env = {**os.environ, "COLUMNS": "400", "OLLAMA_HOST": "127.0.0.1:9", "TOOLKIT_THREADS": "1"}
    for name in ("TOOLKIT_FAIR", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        env.pop(name, None)  # an in-process CLI test before this one may have set them in pytest's environment
    proc = subprocess.run([sys.executable, "-m", "toolkit", "doctor", "--skip-llamacpp", "--threads", "2"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert "2 (--threads)" in proc.stdout, proc.stdout + proc.stderr  # the flag beats TOOLKIT_THREADS
    assert "serve and chat: OMP_WAIT_POLICY=PASSIVE" in proc.stdout and "Traceback" not in proc.stderr


BUSY = "while True: pass"


def _tiny_sweep(tmp: Path, out: Path) -> list:
    import optuna

    subprocess.run([sys.executable, "-m", "toolkit", "sweep", str(tmp / "s.yaml"), "--data", str(tmp / "data" / "validation.jsonl"),
                    "--out", str(out), "--no-noise"], check=True, capture_output=True, cwd=ROOT)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{out / 'study.db'}")
    return [(t.params, t.value, t.user_attrs.get("scores")) for t in study.trials]


@pytest.mark.slow
def test_a_sweep_gives_the_same_trials_alone_and_beside_a_busy_core(tmp_path):
    from toolkit.data.build import BuildOptions, build

    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=tmp_path / "data", options=BuildOptions(split="80,10,10", seed=0, tokenizer="words"))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "load", "mode": "search", "sampler": {"type": "tpe", "seed": 0}, "pruner": "none", "trials": 2, "prompts": 2,
        "seed": 7, "fixed": {"max_tokens": 12}, "space": {"temperature": {"low": 0.1, "high": 1.2, "step": 0.05}}}))
    alone = _tiny_sweep(tmp_path, tmp_path / "alone")
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        loaded = _tiny_sweep(tmp_path, tmp_path / "loaded")
    finally:
        busy.kill()
        busy.wait()
    assert len(alone) == 2 and all(value is not None for _, value, _ in alone)
    assert loaded == alone

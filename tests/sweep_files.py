"""Helpers the sweep tests share (test_sweep.py, test_sweep_race.py): a sweep file, the validation
split the real-model sweeps run on, the `toolkit sweep` command line, and two workers sharing a study:
its storages, running them, reading its trials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_sweep_file(path: Path, comment: str, raw: dict) -> Path:
    """`raw` as a sweep file under a `# comment` line (every sweep file says what it is for)."""
    path.write_text(f"# {comment}\n" + yaml.safe_dump(raw))
    return path


def validation_split(tmp_path_factory) -> Path:
    """The sample abstracts built into splits (words as tokens): the validation split's path."""
    from toolkit.data.build import BuildOptions, build

    out = tmp_path_factory.mktemp("data")
    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=out, options=BuildOptions(split="80,10,10", seed=0, tokenizer="words"))
    return out / "validation.jsonl"


def sweep_cmd(sweep_file: Path, split: Path, out: Path, *extra: str) -> list[str]:
    """`toolkit sweep` on `split` into `out`, as a subprocess's argv."""
    return [sys.executable, "-m", "toolkit", "sweep", str(sweep_file), "--data", str(split), "--out", str(out), *extra]


def storages() -> list:
    """The study storages two workers share: SQLite always, PostgreSQL when TOOLKIT_TEST_POSTGRES names one."""
    pg = os.environ.get("TOOLKIT_TEST_POSTGRES")
    return [pytest.param(None, id="sqlite"),
            pytest.param(pg, id="postgresql", marks=pytest.mark.skipif(
                not pg, reason="set TOOLKIT_TEST_POSTGRES=postgresql://... (.ci/run starts a local server)"))]


def run_workers(cmds: list[list[str]]) -> None:
    """Run the `toolkit sweep` workers at once, a thread each (they share two cores); each must succeed."""
    env = {**os.environ, "TOOLKIT_THREADS": "1"}
    workers = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for cmd in cmds]
    for w in workers:
        assert w.wait(timeout=900) == 0, w.stderr.read().decode()[-2000:]


def shared_trials(name: str, url: str, server: bool) -> list:
    """The trials of study `name` at `url`; on a `server` storage the study is then deleted (nothing left behind)."""
    import optuna

    from toolkit.evaluate.sweep.study import sqlalchemy_url

    try:
        return optuna.load_study(study_name=name, storage=sqlalchemy_url(url)).trials
    finally:
        if server:
            optuna.delete_study(study_name=name, storage=sqlalchemy_url(url))

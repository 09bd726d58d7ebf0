"""Which tasks a run scores: presets, the harness's stock task definitions pointed at local files,
and the seeded sample of items `--limit` takes.

A task is the harness's own config (its YAML under `lm_eval/tasks/`: prompt, choices, target,
metrics, few-shot split), with only the data source replaced: the rows `layouts` read, written as
JSON Lines under the run folder and loaded through `datasets`' `json` builder. No hub is reached.
MMLU is one harness task per subject present in the data; `mmlu_summary` pools them as the
harness's `mmlu` group does (weighted by size).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.harness.layouts import TASKS, read_mmlu, read_task
from toolkit.io import write_jsonl

# name -> ((task, shots), ...); shots None: the task's own default
PRESETS: dict[str, tuple[tuple[str, int], ...]] = {
    # the source study's table: ARC-Challenge 25-shot, HellaSwag 10-shot, MMLU 5-shot (three of the Open LLM Leaderboard v1's six)
    "study": (("arc_challenge", 25), ("hellaswag", 10), ("mmlu", 5)),
    # all six of the Open LLM Leaderboard v1, at its shots
    "leaderboard": (("arc_challenge", 25), ("hellaswag", 10), ("mmlu", 5), ("truthfulqa_mc2", 0), ("winogrande", 5), ("gsm8k", 5)),
    # zero-shot, quick enough for small models
    "zeroshot": tuple((t, 0) for t in ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "openbookqa", "mmlu")),
}


@dataclass
class Selection:
    """The harness tasks built for a run, keyed by harness task name, and what the report needs."""

    tasks: dict = field(default_factory=dict)  # harness task name -> ConfigurableTask
    shots: dict[str, int] = field(default_factory=dict)  # requested task -> shots
    mmlu_subjects: list[str] = field(default_factory=list)

    def group_of(self, name: str) -> str:
        return "mmlu" if name.startswith("mmlu_") else name


def expand(names: list[str], num_fewshot: int | None) -> list[tuple[str, int]]:
    """Presets and task names -> (task, shots), in order, each task once; `num_fewshot` overrides all."""
    chosen: dict[str, int] = {}
    for name in names:
        for part in (p for p in name.split(",") if p):
            if part in PRESETS:
                pairs = PRESETS[part]
            elif part in TASKS:
                pairs = ((part, 0),)
            else:
                raise ConfigError(f"unknown task {part!r}",
                                  fix=f"use a preset ({', '.join(PRESETS)}) or a task ({', '.join(TASKS)})")
            for task, shots in pairs:
                chosen.setdefault(task, shots)
    if not chosen:
        raise ConfigError("no tasks given", fix=f"name a preset ({', '.join(PRESETS)}) or tasks ({', '.join(TASKS)})")
    return [(t, num_fewshot if num_fewshot is not None else s) for t, s in chosen.items()]


def _stock_config(rel: str) -> dict:
    """The harness's config for a task, its includes merged and `!function` entries resolved."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(lm_eval.__file__).parent / "tasks" / rel
    if not path.is_file():
        raise ConfigError(f"lm-eval has no task config {rel}", fix="install lm-eval 0.4.x (`make install`)")
    return load_yaml(path, resolve_func=True)


def _build(cfg: dict, splits: dict[str, list[dict]], folder: Path, shots: int):
    """A harness task from its stock config with the data replaced by `splits` (written under `folder`)."""
    from lm_eval.api.task import ConfigurableTask

    files = {}
    for split, rows in splits.items():
        files[split] = str(write_jsonl(folder / f"{split}.jsonl", rows))
    for role in ("training_split", "validation_split", "test_split", "fewshot_split"):
        if cfg.get(role) is not None and cfg[role] not in files:
            cfg[role] = None  # a split the folder lacks: the harness takes few-shot examples from the next one
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files}, num_fewshot=shots)
    return ConfigurableTask(config=cfg)


def build(selection: list[tuple[str, int]], data_dir: Path, work: Path) -> Selection:
    """Every selected task built on the data under `data_dir` (rows written under `work/data`)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError("the benchmark data folder does not exist", path=data_dir,
                        fix="pass --data-dir DIR holding one folder per task (README: Benchmarks offline)")
    out = Selection()
    for name, shots in selection:
        out.shots[name] = shots
        if name == "mmlu":
            for subject, splits in sorted(read_mmlu(data_dir).items()):
                try:
                    cfg = _stock_config(f"mmlu/default/mmlu_{subject}.yaml")
                except ConfigError:
                    raise DataError(f"unknown MMLU subject {subject!r}", path=data_dir / "mmlu",
                                    fix="name the files after MMLU's 57 subjects, e.g. abstract_algebra_test.csv") from None
                out.tasks[cfg["task"]] = _build(cfg, splits, work / "data" / "mmlu" / subject, shots)
                out.mmlu_subjects.append(subject)
            continue
        spec = TASKS[name]
        out.tasks[name] = _build(_stock_config(spec.yaml), read_task(spec, data_dir), work / "data" / name, shots)
    return out


def sample(tasks: dict, limit: int | None, seed: int) -> dict[str, list[int]] | None:
    """`--limit N`: a seeded random sample of N items per task (the harness's own `limit` takes the
    first N, which for a sorted release is not a fair sample), as document indices."""
    if limit is None:
        return None
    if limit < 1:
        raise ConfigError(f"--limit {limit} must be at least 1")
    picked = {}
    for name, task in tasks.items():
        n = len(task.eval_docs)
        picked[name] = sorted(random.Random(f"{seed}:{name}").sample(range(n), min(limit, n)))
    return picked


class Prebuilt:
    """A stand-in for the harness's TaskManager that hands over tasks built here (its own would
    index every stock YAML and read the hub)."""

    task_index: dict = {}

    def __init__(self, tasks: dict):
        self.tasks = tasks

    def load(self, _names) -> dict:
        return {"tasks": dict(self.tasks), "groups": {}, "group_map": {}}


def mmlu_summary(results: dict, subjects: list[str]) -> dict | None:
    """The `mmlu` row from its subjects' rows, as the harness's group pools them: accuracy weighted
    by size, pooled standard error."""
    from lm_eval.api.metrics import pooled_sample_stderr

    rows = [(results["results"][f"mmlu_{s}"], results["n-samples"][f"mmlu_{s}"]["effective"]) for s in subjects
            if f"mmlu_{s}" in results["results"]]
    if not rows:
        return None
    sizes = [n for _, n in rows]
    acc = sum(r["acc,none"] * n for r, n in rows) / sum(sizes)
    stderrs = [r.get("acc_stderr,none") for r, _ in rows]
    stderr = pooled_sample_stderr(stderrs, sizes) if all(isinstance(s, float) for s in stderrs) and len(rows) > 1 else stderrs[0]
    return {"acc,none": acc, "acc_stderr,none": stderr, "subjects": subjects, "n": sum(sizes)}

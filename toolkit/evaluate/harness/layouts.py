"""Task data from local files, in the layouts users have, as rows in the Hugging Face dataset's fields.

The harness's own task definitions read the Hugging Face datasets' field names (`allenai/ai2_arc`,
`Rowan/hellaswag`, `cais/mmlu`, ...). A task's folder under `--data-dir` may hold a `save_to_disk`
folder, Parquet/JSON Lines/CSV exports of that dataset, or the original release files; `read_task`
finds each split's files by name (`test`, `validation`/`valid`/`val`/`dev`, `train`), reads them
and turns every row into the dataset's fields, so the harness sees the same documents whichever
layout they came in. A bad row is a DataError naming its file and line.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.sources import detect_container, iter_rows
from toolkit.errors import DataError

DATA_SUFFIXES = {".jsonl", ".json", ".parquet", ".arrow", ".csv", ".tsv"}
# split-name words in file names; MMLU keeps `dev` (its few-shot split) apart from `val`
SPLIT_WORDS = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
               "dev": "validation", "test": "test"}
MMLU_SPLIT_WORDS = {**SPLIT_WORDS, "dev": "dev"}

Row = dict
Normalize = Callable[[dict, "str | None"], Row]  # (row, label from a -labels.lst file) -> dataset fields


@dataclass(frozen=True)
class TaskData:
    """Where a task's data lives under --data-dir and how its rows become the dataset's fields."""

    name: str  # the harness's task name
    yaml: str  # its stock config, under lm_eval/tasks/
    folders: tuple[str, ...]  # folder names tried under --data-dir
    eval_split: str  # the split the harness scores
    normalize: Normalize
    source: str  # where to get the data on a connected machine


def _need(row: dict, *fields: str) -> None:
    missing = [f for f in fields if row.get(f) in (None, "")]
    if missing:
        raise ValueError(f"missing field {missing[0]!r} (fields present: {', '.join(sorted(row)) or 'none'})")


def _choices(row: dict) -> dict:
    """ARC/OpenBookQA choices as {text: [...], label: [...]}, from the dataset's dict or the release's list."""
    question = row.get("question")
    raw = row.get("choices") if "choices" in row else (question.get("choices") if isinstance(question, dict) else None)
    if isinstance(raw, dict) and "text" in raw and "label" in raw:
        return {"text": [str(t) for t in raw["text"]], "label": [str(lab) for lab in raw["label"]]}
    if isinstance(raw, list) and all(isinstance(c, dict) for c in raw):
        return {"text": [str(c["text"]) for c in raw], "label": [str(c["label"]) for c in raw]}
    raise ValueError("no choices: expected choices {text, label} or question.choices [{text, label}]")


def _with_key(row: dict, choices: dict) -> str:
    key = str(row.get("answerKey", "")).strip()
    if key not in choices["label"]:
        raise ValueError(f"answerKey {key!r} is not one of the choice labels {choices['label']}")
    return key


def arc(row: dict, label: str | None) -> Row:
    """ARC: the dataset's {question, choices, answerKey} or the release's {question: {stem, choices}}."""
    question = row.get("question")
    stem = question.get("stem") if isinstance(question, dict) else question
    if not stem:
        raise ValueError("missing field 'question' (or question.stem)")
    choices = _choices(row)
    return {"id": str(row.get("id", "")), "question": str(stem), "choices": choices, "answerKey": _with_key(row, choices)}


def openbookqa(row: dict, label: str | None) -> Row:
    """OpenBookQA: the dataset's {question_stem, choices, answerKey}, the release's JSONL
    {question: {stem, choices}}, or its TSV (Question Stem, Answer A..D, Answer Key)."""
    if "question_stem" in row or isinstance(row.get("question"), dict):
        stem = row.get("question_stem") or row["question"].get("stem")
        choices = _choices(row)
        return {"id": str(row.get("id", "")), "question_stem": str(stem), "choices": choices, "answerKey": _with_key(row, choices)}
    cols = {re.sub(r"[^a-z]", "", k.lower()): v for k, v in row.items()}
    letters = [x for x in "ABCDE" if cols.get(f"answer{x.lower()}") not in (None, "")]
    if "questionstem" not in cols or not letters:
        raise ValueError("expected question_stem + choices, question.stem, or TSV columns Question Stem, Answer A..D, Answer Key")
    choices = {"text": [cols[f"answer{x.lower()}"] for x in letters], "label": letters}
    key = str(cols.get("answerkey", "")).strip()
    if key not in letters:
        raise ValueError(f"Answer Key {key!r} is not one of {letters}")
    return {"id": str(cols.get("id", "")), "question_stem": cols["questionstem"], "choices": choices, "answerKey": key}


def hellaswag(row: dict, label: str | None) -> Row:
    """HellaSwag: the dataset's and the release's rows share their fields; the label becomes a string."""
    _need(row, "ctx_a", "activity_label", "endings")
    if "ctx_b" not in row or row.get("label") in (None, ""):
        raise ValueError("missing field 'ctx_b' or 'label'")
    endings = row["endings"]
    if not isinstance(endings, list) or not endings:
        raise ValueError("'endings' is not a list of endings")
    if not 0 <= int(row["label"]) < len(endings):
        raise ValueError(f"label {row['label']!r} is not an index into the {len(endings)} endings")
    return {"ind": row.get("ind", 0), "activity_label": str(row["activity_label"]), "ctx_a": str(row["ctx_a"]),
            "ctx_b": str(row["ctx_b"] or ""), "ctx": str(row.get("ctx", "")), "endings": [str(e) for e in endings],
            "source_id": str(row.get("source_id", "")), "split": str(row.get("split", "")),
            "split_type": str(row.get("split_type", "")), "label": str(int(row["label"]))}


def piqa(row: dict, label: str | None) -> Row:
    """PIQA: {goal, sol1, sol2, label}; the release keeps the labels in `valid-labels.lst`."""
    _need(row, "goal", "sol1", "sol2")
    value = row.get("label", label)
    if str(value).strip() not in ("0", "1"):
        raise ValueError(f"label {value!r} is not 0 or 1 (the release's labels are in valid-labels.lst beside valid.jsonl)")
    return {"goal": str(row["goal"]), "sol1": str(row["sol1"]), "sol2": str(row["sol2"]), "label": int(str(value).strip())}


def winogrande(row: dict, label: str | None) -> Row:
    """Winogrande: {sentence with one _, option1, option2, answer "1"/"2"} (or the answer from a labels file)."""
    _need(row, "sentence", "option1", "option2")
    answer = str(row.get("answer") if row.get("answer") not in (None, "") else label).strip()
    if answer not in ("1", "2"):
        raise ValueError(f"answer {answer!r} is not 1 or 2")
    if str(row["sentence"]).count("_") != 1:
        raise ValueError("sentence must hold exactly one _ (the blank the options fill)")
    return {"sentence": str(row["sentence"]), "option1": str(row["option1"]), "option2": str(row["option2"]), "answer": answer}


def as_is(row: dict, label: str | None) -> Row:
    """Tasks read from the dataset's own fields only (TruthfulQA, GSM8K)."""
    return row


def mmlu(row: dict, label: str | None) -> Row:
    """MMLU: the dataset's {question, subject, choices, answer index} or a CSV row (question, A..D, answer
    as a letter or an index; `subject` from the file name)."""
    _need(row, "question")
    if isinstance(row.get("choices"), list):
        choices = [str(c) for c in row["choices"]]
    else:
        choices = [str(row.get(x, "")) for x in "ABCD"]
        if any(c == "" for c in choices) and not all(isinstance(row.get(x), str) for x in "ABCD"):
            raise ValueError("expected choices [4] or columns A, B, C, D")
    if len(choices) != 4:
        raise ValueError(f"{len(choices)} choices, MMLU has 4")
    answer = str(row.get("answer", "")).strip()
    index = "ABCD".index(answer) if answer in ("A", "B", "C", "D") else int(answer) if answer in ("0", "1", "2", "3") else None
    if index is None:
        raise ValueError(f"answer {answer!r} is neither a letter A-D nor an index 0-3")
    return {"question": str(row["question"]), "subject": str(row.get("subject", "")), "choices": choices, "answer": index}


_ARC_SOURCE = "huggingface.co/datasets/allenai/ai2_arc (config {0}), or ARC-V1-Feb2018 from allenai.org/data/arc"
TASKS: dict[str, TaskData] = {t.name: t for t in [
    TaskData("arc_easy", "arc/arc_easy.yaml", ("arc_easy", "ARC-Easy", "ai2_arc/ARC-Easy"), "test", arc, _ARC_SOURCE.format("ARC-Easy")),
    TaskData("arc_challenge", "arc/arc_challenge.yaml", ("arc_challenge", "ARC-Challenge", "ai2_arc/ARC-Challenge"), "test", arc,
             _ARC_SOURCE.format("ARC-Challenge")),
    TaskData("hellaswag", "hellaswag/hellaswag.yaml", ("hellaswag",), "validation", hellaswag,
             "huggingface.co/datasets/Rowan/hellaswag, or hellaswag_val.jsonl from github.com/rowanz/hellaswag/tree/master/data"),
    TaskData("piqa", "piqa/piqa.yaml", ("piqa",), "validation", piqa,
             "huggingface.co/datasets/baber/piqa, or valid.jsonl + valid-labels.lst from yonatanbisk.com/piqa"),
    TaskData("winogrande", "winogrande/default.yaml", ("winogrande",), "validation", winogrande,
             "huggingface.co/datasets/allenai/winogrande (winogrande_xl), or dev.jsonl (+ dev-labels.lst) from winogrande.allenai.org"),
    TaskData("openbookqa", "openbookqa/openbookqa.yaml", ("openbookqa", "OpenBookQA"), "test", openbookqa,
             "huggingface.co/datasets/allenai/openbookqa (main), or Main/test.jsonl or test.tsv from allenai.org/data/open-book-qa"),
    TaskData("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", ("truthfulqa", "truthful_qa"), "validation", as_is,
             "huggingface.co/datasets/truthfulqa/truthful_qa (multiple_choice)"),
    TaskData("gsm8k", "gsm8k/gsm8k.yaml", ("gsm8k",), "test", as_is, "huggingface.co/datasets/openai/gsm8k (main)"),
    TaskData("mmlu", "mmlu/default/_default_template_yaml", ("mmlu",), "test", mmlu,
             "huggingface.co/datasets/cais/mmlu (all), or data.tar from people.eecs.berkeley.edu/~hendrycks (data/test, data/dev CSVs)"),
]}


def task_folder(task: TaskData, data_dir: Path) -> Path:
    """The task's folder under `data_dir`; a DataError naming what was looked for and where to get it."""
    for name in task.folders:
        if (data_dir / name).is_dir():
            return data_dir / name
    raise DataError(f"no folder for task {task.name} (looked for {', '.join(task.folders)})", path=data_dir,
                    fix=f"put its {task.eval_split} split there, e.g. {data_dir / task.folders[0] / (task.eval_split + '.jsonl')}; "
                        f"get it from {task.source} (README: Benchmarks offline)")


def split_of(path: Path, words: dict[str, str]) -> str | None:
    """The split a file holds, from a split word in its name (`ARC-Easy-Test.jsonl`, `hellaswag_val.jsonl`,
    `test-00000-of-00001.parquet`), or None."""
    found = {words[w] for w in re.split(r"[-_.\s]+", path.name.lower()) if w in words}
    return found.pop() if len(found) == 1 else None


def data_files(folder: Path) -> list[Path]:
    """Every data file under the folder (labels files and saved-dataset internals left out)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                  and p.name not in ("dataset_info.json", "state.json", "dataset_dict.json") and not p.name.startswith("."))


def iter_file(path: Path) -> Iterator[tuple[int, dict]]:
    """(line or row number, raw row) of one data file or saved dataset folder."""
    container = detect_container(path)
    if container == "csv" and not _has_header(path):
        yield from _headless_csv(path)
        return
    yield from iter_rows(path, container)


def _has_header(path: Path) -> bool:
    """A CSV's first row is a header unless it looks like an MMLU row (its last field an answer letter)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        first = next(csv.reader(f), [])
    return not (len(first) == 6 and first[-1].strip() in ("A", "B", "C", "D"))


def _headless_csv(path: Path) -> Iterator[tuple[int, dict]]:
    """MMLU's original CSVs: no header, question, A, B, C, D, answer letter."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) != 6:
                raise DataError(f"row has {len(row)} fields; an MMLU CSV row has 6 (question, A, B, C, D, answer)",
                                path=path, line=reader.line_num, fix="quote fields that contain commas")
            yield reader.line_num, dict(zip(("question", "A", "B", "C", "D", "answer"), row))


def _labels(path: Path) -> list[str] | None:
    """The labels file beside a release's data file (PIQA `valid-labels.lst`, Winogrande `dev-labels.lst`)."""
    beside = path.with_name(path.stem + "-labels.lst")
    return beside.read_text(encoding="utf-8").split() if beside.is_file() else None


def normalized_rows(task: TaskData, path: Path, extra: dict | None = None) -> list[Row]:
    """Every row of one file in the dataset's fields; a DataError with file:line on the first bad row."""
    labels = _labels(path)
    rows = []
    for i, (line, raw) in enumerate(iter_file(path)):
        label = labels[i] if labels is not None and i < len(labels) else None
        try:
            row = task.normalize({**raw, **(extra or {})}, label)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"bad {task.name} row: {exc}", path=path, line=line,
                            fix=f"rows need the fields of {task.source.split(',')[0]}") from None
        rows.append(row)
    if labels is not None and len(labels) != len(rows):
        raise DataError(f"{len(labels)} labels for {len(rows)} rows", path=path.with_name(path.stem + "-labels.lst"),
                        fix="use the labels file that came with this data file")
    return rows


def _saved_splits(folder: Path) -> dict[str, Path]:
    """Split folders of a `DatasetDict.save_to_disk` folder (found anywhere below `folder`)."""
    for marker in sorted(folder.rglob("dataset_dict.json")):
        splits = json.loads(marker.read_text(encoding="utf-8")).get("splits", [])
        return {s: marker.parent / s for s in splits}
    return {}


def split_files(task: TaskData, folder: Path, words: dict[str, str] = SPLIT_WORDS) -> dict[str, list[Path]]:
    """{split: files or saved-dataset folders} of a task folder. Shards of one split are all kept; of
    several other files for one split (ARC's release has Test.jsonl beside Test.csv, Winogrande's
    train_xs..train_xl) the JSON/Parquet one is, then the largest."""
    saved = _saved_splits(folder)
    if saved:
        return {words.get(s, s): [p] for s, p in saved.items()}
    if (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file():
        return {task.eval_split: [folder]}  # one saved Dataset: the split the task scores
    found: dict[str, list[Path]] = {}
    for path in data_files(folder):
        split = split_of(path, words)
        if split is not None:
            found.setdefault(split, []).append(path)
    for split, paths in found.items():
        if len(paths) > 1 and not all(re.search(r"-\d+-of-\d+", p.name) for p in paths) and task.name != "mmlu":
            found[split] = [max(paths, key=lambda p: (p.suffix.lower() not in (".csv", ".tsv"), p.stat().st_size, p.name))]
    return found


def read_task(task: TaskData, data_dir: Path) -> dict[str, list[Row]]:
    """{split: rows in the dataset's fields} for a task; a DataError when its scored split is missing."""
    folder = task_folder(task, data_dir)
    splits = {split: [row for p in paths for row in normalized_rows(task, p)] for split, paths in split_files(task, folder).items()}
    if task.eval_split not in splits:
        raise DataError(f"no {task.eval_split} split for {task.name}: expected a file named like "
                        f"{task.eval_split}.jsonl, {task.eval_split}.parquet or *-{task.eval_split}.*", path=folder,
                        fix=f"get it from {task.source} (README: Benchmarks offline)")
    return splits


def read_mmlu(data_dir: Path) -> dict[str, dict[str, list[Row]]]:
    """{subject: {split: rows}} from an MMLU folder: the dataset's exports (a `subject` field) or the
    release's per-subject CSVs (`<subject>_test.csv`, with or without a header row)."""
    task = TASKS["mmlu"]
    folder = task_folder(task, data_dir)
    subjects: dict[str, dict[str, list[Row]]] = {}
    for split, paths in split_files(task, folder, MMLU_SPLIT_WORDS).items():
        for path in paths:
            subject = re.sub(r"_(test|dev|val|validation|train)$", "", path.stem) if path.suffix.lower() == ".csv" else ""
            for row in normalized_rows(task, path, {"subject": subject} if subject else None):
                if not row["subject"]:
                    raise DataError("MMLU row without a subject", path=path, fix="name CSVs <subject>_test.csv or give a subject column")
                subjects.setdefault(row["subject"], {}).setdefault(split, []).append(row)
    scored = {s: splits for s, splits in subjects.items() if "test" in splits}
    if not scored:
        raise DataError("no MMLU test rows: expected data/test/<subject>_test.csv or test.jsonl/parquet with a subject field",
                        path=folder, fix=f"get it from {task.source} (README: Benchmarks offline)")
    return scored

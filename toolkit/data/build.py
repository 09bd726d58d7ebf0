"""`toolkit data build`: raw abstracts and QA rows -> train/validation/test prompt/response splits.

The steps, in order: read every input, assign each raw record to a split by a seeded shuffle,
filter (categories, empties, duplicates, sentence counts), apply token limits, then write the
splits and `stats.json` atomically and print a kept/skipped table. `token_counter` is the
tokenizer-backed length function the limits use.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.data.readers import category_matcher, detect_format, no_categories, read_arxiv, read_papers, read_qa
from toolkit.data.records import normalize_format, squash
from toolkit.data.textsplit import split_sentences
from toolkit.errors import ConfigError, DataError, ModelError

__all__ = ["SPLIT_NAMES", "REASONS", "parse_split", "token_counter", "build"]

SPLIT_NAMES = ("train", "validation", "test")
# skip reasons, in table order
REASONS = ("problem_too_long", "approach_too_short", "too_few_sentences", "duplicate", "category", "empty")
_REASON_LABELS = {
    "problem_too_long": "problem too long", "approach_too_short": "approach too short",
    "too_few_sentences": "too few sentences", "duplicate": "duplicate", "category": "filtered by category",
    "empty": "empty",
}
_OWNED_FILES = {f"{n}.jsonl" for n in SPLIT_NAMES} | {"stats.json"}


def parse_split(split: str) -> list[tuple[str, int]]:
    """`"90,5,5"` -> [(train, 90), (validation, 5), (test, 5)]; `"80,20"` -> train/validation; `"100"` -> train."""
    fix = "give 2 or 3 whole percentages that sum to 100: --split 90,5,5 (train,validation,test) or 80,20"
    parts = [p for p in re.split(r"[,/\s]+", str(split).strip()) if p]
    if not 1 <= len(parts) <= 3:
        raise ConfigError(f"--split {split!r} has {len(parts)} parts", fix=fix)
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--split {split!r} is not a list of whole numbers", fix=fix) from None
    if any(n < 0 for n in numbers) or sum(numbers) != 100:
        raise ConfigError(f"--split {split!r} sums to {sum(numbers)}, not 100", fix=fix)
    if numbers[0] == 0:
        raise ConfigError(f"--split {split!r} leaves nothing for training", fix=fix)
    return list(zip(SPLIT_NAMES, numbers))


def _largest_remainder(n: int, percents: list[int]) -> list[int]:
    counts = [n * p // 100 for p in percents]
    left = n - sum(counts)
    order = sorted(range(len(percents)), key=lambda i: (-(n * percents[i] % 100), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


# --------------------------------------------------------------------------------------- tokens

_TOKENIZERS: dict[str, Any] = {}


def token_counter(tokenizer: str = "smollm2") -> Callable[[list[str]], list[int]]:
    """A function counting tokens of many texts at once (no special tokens added).

    `tokenizer` is a model spec for `toolkit.models.resolve` (its `tokenizer.json` is used), a path
    to a `tokenizer.json`, or `words` for whitespace-separated words. Loaded tokenizers are cached
    per process.
    """
    if tokenizer == "words":
        return lambda texts: [len(t.split()) for t in texts]
    tok = _TOKENIZERS.get(tokenizer)
    if tok is None:
        tok = _TOKENIZERS[tokenizer] = _load_tokenizer(tokenizer)

    def count(texts: list[str], batch: int = 4096) -> list[int]:
        counts: list[int] = []
        for i in range(0, len(texts), batch):
            counts.extend(len(e.ids) for e in tok.encode_batch(texts[i : i + batch], add_special_tokens=False))
        return counts

    return count


def _load_tokenizer(tokenizer: str) -> Any:
    from tokenizers import Tokenizer

    given = Path(tokenizer).expanduser()
    if given.is_file() and given.suffix == ".json":
        file = given
    else:
        from toolkit.models import resolve

        file = resolve(tokenizer).require_hf() / "tokenizer.json"
    if not file.is_file():
        raise ModelError(f"{file} not found: cannot count tokens for {tokenizer!r}",
                         fix="pass a model that has tokenizer.json, or --tokenizer words")
    tok = Tokenizer.from_file(str(file))
    tok.no_truncation()
    tok.no_padding()
    return tok


# ---------------------------------------------------------------------------------------- build


@dataclass(slots=True)
class _Item:
    kind: str  # "problem-approach" | "qa"
    id: str
    source: str
    title: str = ""
    categories: list[str] = field(default_factory=list)
    text: str = ""  # the abstract, or the question
    answer: str = ""
    sentences: list[str] | None = None
    prompt: str = ""
    response: str = ""
    reason: str | None = None


def build(
    inputs: list[Path],
    out: Path = Path("data/built"),
    format: str = "auto",
    categories: str = "",
    max_problem_tokens: int = 50,
    min_approach_tokens: int = 90,
    min_sentences: int = 2,
    split: str = "90,5,5",
    seed: int = 0,
    tokenizer: str = "smollm2",
    question_col: str = "question",
    answer_col: str = "answer",
    max_question_tokens: int = 0,
    min_answer_tokens: int = 0,
    abstract_col: str = "abstract",
) -> dict:
    """Build train/validation/test prompt->response splits from abstracts and QA files.

    An abstract's first sentence is the problem (prompt) and the rest the approach (response); a QA
    row gives prompt=question, response=answer. Every raw record is first assigned to a split by a
    seeded shuffle, then filtered within its split; duplicates (same abstract, or same question,
    ignoring case and whitespace) are detected across all inputs, the first in file order is kept,
    so no duplicate crosses splits. Writes OUT/train.jsonl, validation.jsonl, test.jsonl (those
    asked for) and stats.json atomically, and prints kept/skipped counts per split.

    Args:
        inputs: arXiv metadata (JSONL or JSON array), scientific_papers JSONL, or QA CSV/JSONL files.
        out: output directory.
        format: input format: auto (judged per file from its first record), arxiv, papers or qa.
        categories: keep arXiv records with any of these categories, comma-separated (cs.LG,cs.CL); a pattern ending in '.' is a prefix (cs. = all of cs).
        max_problem_tokens: drop abstracts whose first sentence is longer than this many tokens (0 = no limit).
        min_approach_tokens: drop abstracts whose remaining sentences are shorter than this many tokens (0 = no minimum).
        min_sentences: drop abstracts with fewer sentences than this (at least 2 are always needed).
        split: train,validation[,test] percentages summing to 100, e.g. 90,5,5 or 80,20.
        seed: seed of the split assignment; same inputs and seed give byte-identical outputs.
        tokenizer: model whose tokenizer counts tokens (embedded name, HF dir or tokenizer.json), or 'words'.
        question_col: QA column holding the question.
        answer_col: QA column holding the answer.
        max_question_tokens: drop QA rows whose question is longer than this many tokens (0 = no limit).
        min_answer_tokens: drop QA rows whose answer is shorter than this many tokens (0 = no minimum).
        abstract_col: field holding the abstract in arXiv/scientific_papers files.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    inputs = [Path(p) for p in inputs]
    out = Path(out)
    if not inputs:
        raise ConfigError("no input files given", fix="pass one or more arXiv, scientific_papers or QA files")
    splits = parse_split(split)
    fmt_requested = normalize_format(format)
    match = category_matcher(categories)
    for name, value in (("max-problem-tokens", max_problem_tokens), ("min-approach-tokens", min_approach_tokens),
                        ("min-sentences", min_sentences), ("max-question-tokens", max_question_tokens),
                        ("min-answer-tokens", min_answer_tokens)):
        if value < 0:
            raise ConfigError(f"--{name} must be 0 or more, got {value}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory", fix="pass a directory for --out")

    items, input_info = _read_inputs(inputs, fmt_requested, match, question_col, answer_col, abstract_col)
    split_of = _assign_splits(len(items), [p for _, p in splits], seed)
    category_counts = _filter(items, match, min_sentences)
    _apply_token_limits(items, tokenizer, {
        "problem-approach": (max_problem_tokens, min_approach_tokens),
        "qa": (max_question_tokens, min_answer_tokens),
    })

    names = [name for name, _ in splits]
    per_split, rows = _tally(items, split_of, names)
    total = {"records": len(items), "kept": sum(e["kept"] for e in per_split.values()),
             "skipped": {r: sum(e["skipped"][r] for e in per_split.values()) for r in REASONS}}
    stats = {
        "splits": per_split,
        "total": total,
        "options": {
            "format": fmt_requested, "categories": categories, "max_problem_tokens": max_problem_tokens,
            "min_approach_tokens": min_approach_tokens, "min_sentences": min_sentences,
            "split": ",".join(str(p) for _, p in splits), "seed": seed, "tokenizer": tokenizer,
            "question_col": question_col, "answer_col": answer_col, "max_question_tokens": max_question_tokens,
            "min_answer_tokens": min_answer_tokens, "abstract_col": abstract_col,
        },
        "inputs": input_info,
        "outputs": {name: f"{name}.jsonl" for name in names},
    }
    if total["kept"] == 0:
        raise DataError(_nothing_kept(stats), fix=_relax_hint(stats, category_counts))

    # write everything, or nothing
    _write_outputs(out, rows, stats)
    _print_build_table(stats, out)
    for name in names:
        if not rows[name]:
            from toolkit.console import err

            err.print(f"[yellow]warning:[/] the {name} split is empty; use more data or a larger share for it")
    return stats


def _read_inputs(inputs: list[Path], fmt_requested: str, match: Callable[[list[str]], bool] | None,
                 question_col: str, answer_col: str, abstract_col: str) -> tuple[list[_Item], list[dict]]:
    """Every raw record, in input order then file order, and what each input held."""
    from toolkit.models import file_digest

    items: list[_Item] = []
    input_info: list[dict] = []
    for path in inputs:
        fmt = detect_format(path, question_col, answer_col) if fmt_requested == "auto" else fmt_requested
        if fmt in ("chat", "preference", "built"):
            raise DataError(f"{fmt} data is not a build input", path=path,
                            fix="build takes arXiv metadata, scientific_papers JSONL or QA CSV/JSONL; "
                                "chat/preference/built files are used as they are (check them with `toolkit data check`)")
        if match is not None and fmt != "arxiv":
            raise no_categories(path, fmt)
        before = len(items)
        if fmt == "qa":
            for r in read_qa(path, question_col, answer_col):
                items.append(_Item("qa", r.id, f"{path.name}:{r.line}", text=r.question, answer=r.answer))
        else:
            reader = read_arxiv(path, "", abstract_col) if fmt == "arxiv" else read_papers(path, abstract_col)
            for r in reader:
                items.append(_Item("problem-approach", r.id, f"{path.name}:{r.line}", title=r.title,
                                   categories=r.categories, text=r.abstract, sentences=r.sentences))
        input_info.append({"path": str(path), "format": fmt, "records": len(items) - before, "sha256": file_digest(path)})
    return items, input_info


def _assign_splits(n: int, percents: list[int], seed: int) -> list[int]:
    """The split index of each raw record: a seeded shuffle, cut by largest-remainder counts."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    split_of = [0] * n
    start = 0
    for s, count in enumerate(_largest_remainder(n, percents)):
        for idx in order[start : start + count]:
            split_of[idx] = s
        start += count
    return split_of


def _filter(items: list[_Item], match: Callable[[list[str]], bool] | None, min_sentences: int) -> Counter:
    """Set each item's skip reason or its prompt/response; returns the categories filtered away.

    Runs in file order; duplicates are global, so the first copy wins wherever it landed.
    """
    seen: set[tuple[str, str]] = set()
    category_counts: Counter = Counter()
    for it in items:
        if match is not None and not match(it.categories):
            it.reason = "category"
            category_counts.update(it.categories)
            it.text = it.answer = ""
            it.sentences = None
            continue
        key = (it.kind, squash(it.text).lower())
        if not key[1] or (it.kind == "qa" and not it.answer):
            it.reason = "empty"
            continue
        if key in seen:
            it.reason = "duplicate"
            continue
        seen.add(key)
        if it.kind == "qa":
            it.prompt, it.response = it.text, it.answer
            continue
        sentences = it.sentences if it.sentences is not None else split_sentences(it.text)
        if len(sentences) < max(2, min_sentences):
            it.reason = "too_few_sentences"
            continue
        it.prompt, it.response = sentences[0], " ".join(sentences[1:])
    return category_counts


def _apply_token_limits(items: list[_Item], tokenizer: str, limits: dict[str, tuple[int, int]]) -> None:
    """Skip items over `(max prompt, min response)` tokens per kind, counting in batches."""
    if not (any(v for pair in limits.values() for v in pair) and any(it.reason is None for it in items)):
        return
    from toolkit.console import err

    label = "words" if tokenizer == "words" else f"the {tokenizer} tokenizer"
    with err.status(f"Counting tokens with {label}"):  # transient: leaves no line behind
        count = token_counter(tokenizer)
        for kind, (max_prompt, min_response) in limits.items():
            todo = [it for it in items if it.reason is None and it.kind == kind]
            if not todo:
                continue
            if max_prompt:
                for it, c in zip(todo, count([it.prompt for it in todo])):
                    if c > max_prompt:
                        it.reason = "problem_too_long"
                todo = [it for it in todo if it.reason is None]
            if min_response and todo:
                for it, c in zip(todo, count([it.response for it in todo])):
                    if c < min_response:
                        it.reason = "approach_too_short"


def _tally(items: list[_Item], split_of: list[int], names: list[str]) -> tuple[dict, dict[str, list[dict]]]:
    """Per-split counts of records, kept and skipped (by reason), and the rows each split keeps."""
    per_split = {name: {"records": 0, "kept": 0, "skipped": dict.fromkeys(REASONS, 0)} for name in names}
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for idx, it in enumerate(items):
        name = names[split_of[idx]]
        entry = per_split[name]
        entry["records"] += 1
        if it.reason is not None:
            entry["skipped"][it.reason] += 1
            continue
        entry["kept"] += 1
        rows[name].append({"id": it.id, "prompt": it.prompt, "response": it.response, "kind": it.kind,
                           "title": it.title, "categories": it.categories, "source": it.source})
    return per_split, rows


def _nothing_kept(stats: dict) -> str:
    total = stats["total"]
    counts = ", ".join(f"{_REASON_LABELS[r]} {n}" for r, n in total["skipped"].items() if n)
    return f"nothing kept from {total['records']} records ({counts})"


def _relax_hint(stats: dict, category_counts: Counter) -> str:
    skipped, opts = stats["total"]["skipped"], stats["options"]
    worst = max(REASONS, key=lambda r: skipped[r])
    if worst == "category":
        common = ", ".join(c for c, _ in category_counts.most_common(6)) or "none"
        return f"no record matches --categories {opts['categories']} (common here: {common}); a prefix needs a final '.' (cs.)"
    hints = {
        "problem_too_long": f"raise --max-problem-tokens (now {opts['max_problem_tokens']}) or set it to 0",
        "approach_too_short": f"lower --min-approach-tokens (now {opts['min_approach_tokens']}) or set it to 0",
        "too_few_sentences": f"lower --min-sentences (now {opts['min_sentences']}); abstracts need at least 2 sentences",
        "duplicate": "the inputs repeat the same records; add different data",
        "empty": "the records have empty abstracts/questions/answers; check the column options",
    }
    if worst in ("problem_too_long", "approach_too_short") and (opts["max_question_tokens"] or opts["min_answer_tokens"]):
        hints[worst] += " (for QA: --max-question-tokens / --min-answer-tokens)"
    return hints[worst]


def _write_outputs(out: Path, rows: dict[str, list[dict]], stats: dict) -> None:
    """All files land together: a fresh or build-only directory is replaced in one rename; a
    directory holding other files gets each file atomically, stale split files removed, stats last."""
    from toolkit.io import atomic_dir, write_json, write_jsonl

    existing = {p.name for p in out.iterdir()} if out.is_dir() else set()
    foreign = {n for n in existing if n not in _OWNED_FILES and not (n.startswith(".") and n.endswith(".tmp"))}
    if not foreign:
        with atomic_dir(out) as tmp:
            for name, split_rows in rows.items():
                write_jsonl(tmp / f"{name}.jsonl", split_rows)
            write_json(tmp / "stats.json", stats)
        return
    for name, split_rows in rows.items():
        write_jsonl(out / f"{name}.jsonl", split_rows)
    for name in SPLIT_NAMES:
        if name not in rows:
            (out / f"{name}.jsonl").unlink(missing_ok=True)
    write_json(out / "stats.json", stats)


def _print_build_table(stats: dict, out: Path) -> None:
    from rich.table import Table

    from toolkit.console import out as stdout

    reasons = ["problem_too_long", "approach_too_short", "too_few_sentences", "duplicate"]
    if stats["options"]["categories"]:
        reasons.append("category")
    if stats["total"]["skipped"]["empty"]:
        reasons.append("empty")
    table = Table(title=f"toolkit data build -> {out}", title_justify="left")
    table.add_column("split")
    table.add_column("kept", justify="right", style="bold green")
    for r in reasons:
        table.add_column(_REASON_LABELS[r], justify="right")
    names = list(stats["splits"])
    for name, entry in [*stats["splits"].items(), ("total", stats["total"])]:
        cells = [str(entry["kept"])] + [str(entry["skipped"][r]) for r in reasons]
        table.add_row(name, *cells, end_section=name == names[-1])
    stdout.print(table)

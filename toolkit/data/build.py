"""`toolkit data build`: raw abstracts and QA rows -> train/validation/test prompt/response splits.

The steps, in order: work out each input's kind, container and columns; count the records (cheap:
line counts, Parquet metadata); assign every raw record to a split by a seeded shuffle; then
stream the records through the filters (categories, empties, `--max-chars`, duplicates, sentence
counts, token limits: `toolkit.data.pipeline`) into spool files, and finally write the splits,
`skipped.jsonl` (one line per skipped record, with its reason) and `stats.json` atomically and print
a kept/skipped table. Memory stays flat in the corpus size; the same inputs and seed give
byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.columns import Columns
from toolkit.data.pipeline import REASONS, Item, Judge, Limits, Spool, assign_splits
from toolkit.data.readers import category_matcher, no_categories, read_arxiv, read_papers, read_qa, resolve_format
from toolkit.data.sources import count_rows, parse_format
from toolkit.data.tokens import token_counter
from toolkit.errors import ConfigError, DataError
from toolkit.io import atomic_dir, write_json, write_jsonl
from toolkit.models import file_digest
from toolkit.options import option, plain

__all__ = ["SPLIT_NAMES", "REASONS", "BuildOptions", "parse_split", "token_counter", "build"]

SPLIT_NAMES = ("train", "validation", "test")
_REASON_LABELS = {
    "problem_too_long": "problem too long", "approach_too_short": "approach too short",
    "too_few_sentences": "too few sentences", "duplicate": "duplicate", "category": "filtered by category",
    "empty": "empty", "too_long": "over max chars",
}
SKIPPED_FILE = "skipped.jsonl"
_OWNED_FILES = {f"{n}.jsonl" for n in SPLIT_NAMES} | {"stats.json", SKIPPED_FILE}


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


@dataclass(frozen=True)
class BuildOptions:
    """build options (recorded in stats.json)"""

    format: str = option("auto", "input format: auto (judged per file from its extension and columns), a kind (arxiv, papers or qa), "
                                 "a container (json, csv, tsv, parquet, arrow, hf), or both: arxiv,csv.")
    categories: str = option("", "keep arXiv records with any of these categories, comma-separated (cs.LG,cs.CL); "
                                 "a pattern ending in '.' is a prefix (cs. = all of cs).")
    max_problem_tokens: int = option(50, "drop abstracts whose first sentence is longer than this many tokens (0 = no limit).")
    min_approach_tokens: int = option(90, "drop abstracts whose remaining sentences are shorter than this many tokens (0 = no minimum).")
    min_sentences: int = option(2, "drop abstracts with fewer sentences than this (at least 2 are always needed).")
    split: str = option("90,5,5", "train,validation[,test] percentages summing to 100, e.g. 90,5,5 or 80,20.")
    seed: int = option(0, "seed of the split assignment; same inputs and seed give byte-identical outputs.")
    tokenizer: str = option("smollm2", "model whose tokenizer counts tokens (embedded name, HF dir or tokenizer.json), or 'words'.")
    question_col: str = option("question", "QA column holding the question.")
    answer_col: str = option("answer", "QA column holding the answer.")
    max_question_tokens: int = option(0, "drop QA rows whose question is longer than this many tokens (0 = no limit).")
    min_answer_tokens: int = option(0, "drop QA rows whose answer is shorter than this many tokens (0 = no minimum).")
    abstract_col: str = option("abstract", "field holding the abstract in arXiv/scientific_papers files "
                                           "(summaries, summary, abstracts also recognised).")
    id_col: str = option("id", "field holding the record id (arxiv_id, paper_id, article_id also recognised; else file-line).")
    title_col: str = option("title", "field holding the title (titles also recognised).")
    categories_col: str = option("categories", "field holding the arXiv categories (terms, category also recognised; "
                                               "\"cs.LG stat.ML\", \"['cs.LG', 'stat.ML']\" or a list).")
    date_col: str = option("update_date", "field holding the date (date, published, updated also recognised; ISO or M/D/YYYY).")
    max_chars: int = option(20000, "skip records longer than this many characters (abstract, or question + answer) "
                                   "as \"over max chars\" (0 = no limit).")


def build(inputs: list[Path], out: Path = Path("data/built"), options: BuildOptions = BuildOptions()) -> dict:
    """Build train/validation/test prompt->response splits from abstracts and QA files.

    An abstract's first sentence is the problem (prompt) and the rest the approach (response); a QA
    row gives prompt=question, response=answer. Every raw record is first assigned to a split by a
    seeded shuffle, then filtered within its split; duplicates (same abstract, or same question,
    ignoring case and whitespace) are detected across all inputs, the first in file order is kept,
    so no duplicate crosses splits. Writes OUT/train.jsonl, validation.jsonl, test.jsonl (those
    asked for) and stats.json atomically, and prints kept/skipped counts per split.

    Inputs may be JSON Lines, a JSON array, CSV/TSV, Parquet, Arrow or a Hugging Face dataset saved
    with save_to_disk (a folder); common column names are recognised (summary/summaries for the
    abstract, terms/category for the categories, titles, date), others are named with the --*-col
    options. OUT/skipped.jsonl lists every skipped record (id, source line, split, reason), except
    those filtered out by --categories, which are only counted.

    Args:
        inputs: arXiv metadata, scientific_papers data or QA files (JSONL, JSON, CSV/TSV, Parquet, Arrow, a save_to_disk folder).
        out: output directory.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    inputs = [Path(p) for p in inputs]
    out = Path(out)
    if not inputs:
        raise ConfigError("no input files given", fix="pass one or more arXiv, scientific_papers or QA files")
    o = options
    splits = parse_split(o.split)
    match = category_matcher(o.categories)
    for name in ("max_problem_tokens", "min_approach_tokens", "min_sentences", "max_question_tokens", "min_answer_tokens", "max_chars"):
        if getattr(o, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(o, name)}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory", fix="pass a directory for --out")
    columns = Columns(id=o.id_col, title=o.title_col, abstract=o.abstract_col, categories=o.categories_col, date=o.date_col,
                      question=o.question_col, answer=o.answer_col)
    plan = _plan(inputs, o.format, columns, match is not None)
    names = [name for name, _ in splits]
    limits = Limits({"problem-approach": (o.max_problem_tokens, o.min_approach_tokens), "qa": (o.max_question_tokens, o.min_answer_tokens)},
                    {"problem-approach": ("--max-problem-tokens", "--min-approach-tokens"),
                     "qa": ("--max-question-tokens", "--min-answer-tokens")})
    # stats.json records every option, --format and --split as they were understood
    recorded = {**plain(o), "format": _format_option(o.format), "split": ",".join(str(p) for _, p in splits)}
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.spool.", suffix=".tmp", dir=_existing_parent(out)) as tmp:
        spools = [Spool(Path(tmp) / f"{name}.bin") for name in names]
        skipped = Spool(Path(tmp) / "skipped.bin")
        judge = Judge(match, o.min_sentences, o.max_chars, limits, lambda: token_counter(o.tokenizer), spools, skipped, names,
                      [path.name for path, _, _ in plan])
        input_info = _run(plan, [p for _, p in splits], o.seed, judge, columns, o.tokenizer)
        for spool in (*spools, skipped):
            spool.close()
        stats = _stats(judge, recorded, input_info, names, skipped.count)
        if stats["total"]["kept"] == 0:
            raise DataError(_nothing_kept(stats), fix=_relax_hint(stats, judge.category_counts))
        _write_outputs(out, dict(zip(names, spools)), skipped, stats)  # everything, or nothing
    _print_build_table(stats, out)
    from toolkit.console import err

    for name in names:
        if not stats["splits"][name]["kept"]:
            err.print(f"[yellow]warning:[/] the {name} split is empty; use more data or a larger share for it")
    return stats


def _format_option(format: str) -> str:
    """`--format` as stats.json records it: the kind (aliases resolved), with the container if one was named."""
    kind, container = parse_format(format)
    return kind if container == "auto" else container if kind == "auto" else f"{kind},{container}"


def _existing_parent(out: Path) -> Path:
    """The nearest existing folder at or above out's parent: the spools go beside the output."""
    parent = out.absolute().parent
    while not parent.is_dir():
        parent = parent.parent
    return parent


def _plan(inputs: list[Path], format: str, columns: Columns, categories: bool) -> list[tuple[Path, str, str]]:
    """`(path, kind, container)` of every input, checked before anything is read."""
    plan = []
    for path in inputs:
        kind, container = resolve_format(path, format, columns)
        if kind in ("chat", "preference", "built"):
            raise DataError(f"{kind} data is not a build input", path=path,
                            fix="build takes arXiv metadata, scientific_papers data or QA files; "
                                "chat/preference/built files are used as they are (check them with `toolkit data check`)")
        if categories and kind != "arxiv":
            raise no_categories(path, kind)
        plan.append((path, kind, container))
    return plan


def _run(plan: list[tuple[Path, str, str]], percents: list[int], seed: int, judge: Judge, columns: Columns,
         tokenizer: str) -> list[dict]:
    """Every record of every input, in input order then file order, through the judge; what each input held."""
    from toolkit.console import err

    counts = [count_rows(path, container) for path, _, container in plan]
    split_of = assign_splits(sum(counts), percents, seed)
    label = "words" if tokenizer == "words" else f"the {tokenizer} tokenizer"
    index = 0
    input_info = []
    with err.status(f"Building from {sum(counts):,} records (token limits with {label})"):  # transient
        for i, ((path, kind, container), expected) in enumerate(zip(plan, counts)):
            before = index
            for r in _records(path, kind, container, columns, judge.match is not None):
                if index - before >= expected:
                    raise RuntimeError(f"{path}: more records than counted ({expected})")
                source, origin = f"{path.name}:{r.line}", (i << 40) | r.line
                if kind == "qa":
                    judge.add(Item("qa", r.id, source, split_of[index], origin, text=r.question, answer=r.answer))
                else:
                    judge.add(Item("problem-approach", r.id, source, split_of[index], origin, title=r.title,
                                   categories=r.categories, text=r.abstract, sentences=r.sentences))
                index += 1
            if index - before != expected:
                raise RuntimeError(f"{path}: {index - before} records read but {expected} counted")
            input_info.append({"path": str(path), "format": kind, "records": expected, "sha256": _digest(path)})
        judge.flush()
    return input_info


def _records(path: Path, kind: str, container: str, columns: Columns, categories: bool):
    if kind == "qa":
        return read_qa(path, columns=columns, container=container)
    if kind == "arxiv":
        return read_arxiv(path, columns=columns, container=container, require_categories=categories)
    return read_papers(path, columns.abstract, container=container)


def _digest(path: Path) -> str:
    """sha256 of an input file; for a dataset folder, of its files' names and digests."""
    if not path.is_dir():
        return file_digest(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
    return h.hexdigest()


def _stats(judge: Judge, options: dict, input_info: list[dict], names: list[str], skipped_rows: int) -> dict:
    per_split = judge.tally
    total = {"records": sum(e["records"] for e in per_split.values()), "kept": sum(e["kept"] for e in per_split.values()),
             "skipped": {r: sum(e["skipped"][r] for e in per_split.values()) for r in REASONS}}
    outputs = {name: f"{name}.jsonl" for name in names}
    if skipped_rows:
        outputs["skipped"] = SKIPPED_FILE
    return {"splits": per_split, "total": total, "options": options, "inputs": input_info, "outputs": outputs}


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
        "too_long": f"raise --max-chars (now {opts['max_chars']}) or set it to 0",
    }
    if worst in ("problem_too_long", "approach_too_short") and (opts["max_question_tokens"] or opts["min_answer_tokens"]):
        hints[worst] += " (for QA: --max-question-tokens / --min-answer-tokens)"
    return hints[worst]


def _write_outputs(out: Path, splits: dict[str, Spool], skipped: Spool, stats: dict) -> None:
    """All files land together: a fresh or build-only directory is replaced in one rename; a
    directory holding other files gets each file atomically, stale split files removed, stats last."""
    existing = {p.name for p in out.iterdir()} if out.is_dir() else set()
    foreign = {n for n in existing if n not in _OWNED_FILES and not (n.startswith(".") and n.endswith(".tmp"))}
    if not foreign:
        with atomic_dir(out) as tmp:
            for name, spool in splits.items():
                write_jsonl(tmp / f"{name}.jsonl", spool.rows())
            if skipped.count:
                write_jsonl(tmp / SKIPPED_FILE, skipped.rows())
            write_json(tmp / "stats.json", stats)
        return
    for name, spool in splits.items():
        write_jsonl(out / f"{name}.jsonl", spool.rows())
    for name in SPLIT_NAMES:
        if name not in splits:
            (out / f"{name}.jsonl").unlink(missing_ok=True)
    if skipped.count:
        write_jsonl(out / SKIPPED_FILE, skipped.rows())
    else:
        (out / SKIPPED_FILE).unlink(missing_ok=True)
    write_json(out / "stats.json", stats)


def _print_build_table(stats: dict, out: Path) -> None:
    from rich.table import Table

    from toolkit.console import out as stdout

    reasons = ["problem_too_long", "approach_too_short", "too_few_sentences", "duplicate"]
    if stats["options"]["categories"]:
        reasons.append("category")
    reasons += [r for r in ("empty", "too_long") if stats["total"]["skipped"][r]]
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
    if "skipped" in stats["outputs"]:
        stdout.print(f"each skipped record and its reason: {out / SKIPPED_FILE}", style="dim", highlight=False)


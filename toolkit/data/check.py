"""`toolkit data check`: validate a data file of any format and print its counts.

Validation is the readers' own (`toolkit.data.readers`): the first bad record stops with one line
naming the file and line. The counts need no tokenizer; each format has its own counting function.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from toolkit.data.files import check_file
from toolkit.data.readers import (
    detect_format,
    read_arxiv,
    read_built,
    read_chat,
    read_papers,
    read_preference,
    read_qa,
    text_of,
)
from toolkit.data.records import ROLES, normalize_format, squash
from toolkit.data.textsplit import split_sentences

__all__ = ["check"]


def check(path: Path, kind: str = "auto", question_col: str = "question", answer_col: str = "answer") -> dict:
    """Validate a chat, preference, QA, arXiv, scientific_papers or built file and print its counts.

    Every record is checked; the first problem stops with one line naming the file and line. The
    counts need no tokenizer: records, messages per role, characters per field, duplicates.

    Args:
        path: the file to check.
        kind: auto (judged from the first record), arxiv, papers, qa, chat, preference or built.
        question_col: QA column holding the question.
        answer_col: QA column holding the answer.
    """
    path = check_file(Path(path))
    fmt = normalize_format(kind, option="--kind")
    if fmt == "auto":
        fmt = detect_format(path, question_col, answer_col)
    result: dict[str, Any] = {"path": str(path), "format": fmt}
    if fmt == "chat":
        result.update(_chat_counts(path))
    elif fmt == "preference":
        result.update(_preference_counts(path))
    elif fmt == "qa":
        result.update(_qa_counts(path, question_col, answer_col))
    elif fmt in ("arxiv", "papers"):
        result.update(_abstract_counts(path, fmt))
    else:
        result.update(_built_counts(path))
    _print_check_table(result)
    return result


def _mean(values: list[int | float]) -> float:
    return round(sum(values) / len(values), 1) if values else 0.0


def _duplicates(keys: Counter) -> int:
    return sum(v - 1 for v in keys.values())


def _chat_counts(path: Path) -> dict:
    roles: Counter = Counter()
    turns, reply_chars, system, multi = [], [], 0, 0
    for r in read_chat(path):
        rs = [m["role"] for m in r.messages]
        roles.update(rs)
        turns.append(len(rs))
        reply_chars.append(len(r.messages[-1].get("content") or ""))
        system += "system" in rs
        multi += rs.count("user") > 1
    return {"records": len(turns), "messages": sum(turns), **{f"{role}_messages": roles[role] for role in ROLES},
            "with_system": system, "multi_turn": multi, "messages_min": min(turns), "messages_mean": _mean(turns),
            "messages_max": max(turns), "final_reply_chars_mean": _mean(reply_chars)}


def _preference_counts(path: Path) -> dict:
    shapes: Counter = Counter()
    chosen, rejected, same = [], [], 0
    for r in read_preference(path):
        shapes["string" if isinstance(r.chosen, str) else "messages"] += 1
        c, j = text_of(r.chosen, "assistant"), text_of(r.rejected, "assistant")
        chosen.append(len(c))
        rejected.append(len(j))
        same += c.strip() == j.strip()
    return {"records": len(chosen), "string_pairs": shapes["string"], "message_pairs": shapes["messages"],
            "chosen_equals_rejected": same, "chosen_chars_mean": _mean(chosen), "rejected_chars_mean": _mean(rejected)}


def _qa_counts(path: Path, question_col: str, answer_col: str) -> dict:
    qs, ans, keys = [], [], Counter()
    empty_q = empty_a = 0
    for r in read_qa(path, question_col, answer_col):
        empty_q += not r.question
        empty_a += not r.answer
        qs.append(len(r.question))
        ans.append(len(r.answer))
        if r.question:
            keys[squash(r.question).lower()] += 1
    return {"records": len(qs), "empty_questions": empty_q, "empty_answers": empty_a,
            "duplicate_questions": _duplicates(keys), "question_chars_mean": _mean(qs), "answer_chars_mean": _mean(ans)}


def _abstract_counts(path: Path, fmt: str) -> dict:
    cats: Counter = Counter()
    keys: Counter = Counter()
    sentences, dates, empty = [], [], 0
    for r in read_arxiv(path) if fmt == "arxiv" else read_papers(path):
        cats.update(r.categories)
        text = squash(r.abstract).lower()
        empty += not text
        if text:
            keys[text] += 1
        sentences.append(len(r.sentences) if r.sentences is not None else len(split_sentences(r.abstract)))
        if r.update_date:
            dates.append(r.update_date)
    counts = {"records": len(sentences), "empty_abstracts": empty, "duplicate_abstracts": _duplicates(keys),
              "sentences_mean": _mean(sentences), "one_sentence_abstracts": sum(1 for s in sentences if s < 2)}
    if fmt == "arxiv":
        counts.update(categories=len(cats), top_categories=", ".join(f"{c} {n}" for c, n in cats.most_common(8)),
                      update_date_range=f"{min(dates)} .. {max(dates)}" if dates else "")
    return counts


def _built_counts(path: Path) -> dict:
    kinds: Counter = Counter()
    prompts, responses, keys = [], [], Counter()
    empty = 0
    for ex in read_built(path, require_response=False):
        kinds[ex.kind] += 1
        prompts.append(len(ex.prompt))
        responses.append(len(ex.response))
        empty += not ex.response.strip()
        keys[squash(ex.prompt).lower()] += 1
    return {"records": len(prompts), **{f"kind {k}": v for k, v in sorted(kinds.items())},
            "empty_responses": empty, "duplicate_prompts": _duplicates(keys),
            "prompt_chars_mean": _mean(prompts), "response_chars_mean": _mean(responses)}


def _print_check_table(result: dict) -> None:
    from rich.table import Table

    from toolkit.console import out as stdout

    table = Table(title=f"{result['path']} ({result['format']}): OK", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in result.items():
        if key not in ("path", "format"):
            table.add_row(key.replace("_", " "), str(value))
    stdout.print(table)

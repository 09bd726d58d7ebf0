"""`toolkit data check`: validate a data file of any kind and container and print its counts.

Validation is the readers' own (`toolkit.data.readers`, `toolkit.data.messages`): the summary is
printed whatever the file holds, then every bad record of the file is listed (up to a bound, then
counted), and one error naming the file and lines ends the check. A
preference file also gets the DPO trainer's view (`toolkit.data.preference`): the format it found
(trl, sharegpt, hh), pairs, turns, and the rows training would skip, with reasons. The
counts need no tokenizer; each kind has its own counting function. Dates are compared as dates
(`toolkit.data.dates`), so the range of `9/8/2016` and `1/10/2008` is 2008-01-10 .. 2016-09-08.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from toolkit.data.columns import Columns
from toolkit.data.dates import Date, date_sources
from toolkit.data.messages import read_chat, read_preference, text_of
from toolkit.data.preference import scan_pairs
from toolkit.data.readers import read_arxiv, read_built, read_papers, read_qa, resolve_format
from toolkit.data.records import ROLES, AbstractRecord, ChatRecord, Example, PreferenceRecord, Problems, QARecord, collect_problems, squash
from toolkit.data.sources import detect_container
from toolkit.data.textsplit import split_sentences
from toolkit.errors import DataError

__all__ = ["check"]


def check(path: Path, kind: str = "auto", question_col: str = "question", answer_col: str = "answer",
          abstract_col: str = "abstract", id_col: str = "id", title_col: str = "title", categories_col: str = "categories",
          date_col: str = "update_date", prompt_col: str = "prompt", chosen_col: str = "chosen", rejected_col: str = "rejected",
          max_chars: int = 20000) -> dict:
    """Validate a chat, preference, QA, arXiv, scientific_papers or built file and print its counts.

    Every record is checked. With bad ones, the summary still prints (rows, usable, bad by reason,
    the first 10 bad lines, then how many more), then one error ends the check (exit status 2).
    The counts need no tokenizer: records, messages per role, characters per field,
    duplicates, the date range (in date order). Files may be JSON Lines, JSON, CSV/TSV, Parquet,
    Arrow or a save_to_disk folder; common column names are recognised, others named with --*-col.

    Args:
        path: the file (or saved dataset folder) to check.
        kind: auto (judged from the extension and columns), arxiv, papers, qa, chat, preference or built;
            a container (json, csv, tsv, parquet, arrow, hf) may be added: arxiv,csv.
        question_col: QA column holding the question.
        answer_col: QA column holding the answer.
        abstract_col: field holding the abstract (summaries, summary, abstracts also recognised).
        id_col: field holding the record id (arxiv_id, paper_id, article_id also recognised).
        title_col: field holding the title (titles also recognised).
        categories_col: field holding the arXiv categories (terms, category also recognised).
        date_col: field holding the date (date, published, updated also recognised; ISO or M/D/YYYY).
        prompt_col: preference field holding the prompt (ShareGPT conversations also recognised).
        chosen_col: preference field holding the chosen reply.
        rejected_col: preference field holding the rejected reply.
        max_chars: count abstracts (or question + answer) longer than this many characters, which `data build` skips (0 = no limit).
    """
    path = Path(path)
    detect_container(path)  # a missing file is reported before anything else
    columns = Columns(id=id_col, title=title_col, abstract=abstract_col, categories=categories_col, date=date_col,
                      question=question_col, answer=answer_col, prompt=prompt_col, chosen=chosen_col, rejected=rejected_col)
    fmt, container = resolve_format(path, kind, columns, option="--kind")
    result: dict[str, Any] = {"path": str(path), "format": fmt}
    with collect_problems() as found:  # bad rows are listed after the summary, not instead of it
        if fmt == "chat":
            result.update(_chat_counts(read_chat(path, container=container, option="--kind")))
        elif fmt == "preference":
            result.update(_preference_counts(read_preference(path, columns=columns, container=container)))
            try:
                result.update(_pair_counts(path, columns, container))
            except DataError:  # a line too broken to read stops the trainer's scan; it is listed below
                if not found:
                    raise
        elif fmt == "qa":
            result.update(_qa_counts(read_qa(path, columns=columns, container=container), max_chars))
        elif fmt in ("arxiv", "papers"):
            records = read_arxiv(path, columns=columns, container=container) if fmt == "arxiv" else \
                read_papers(path, columns.abstract, container=container)
            result.update(_abstract_counts(records, fmt, max_chars))
        else:
            result.update(_built_counts(read_built(path, require_response=False, container=container, option="--kind")))
    bad = next((p for p in found if p.count), None)
    if bad is not None:  # shown first: what is wrong with the file before what is in it
        head = {"path": result.pop("path"), "format": result.pop("format"), "rows": result["records"] + bad.count,
                "usable": result["records"], "bad": bad.count,
                "bad_by_reason": ", ".join(f"{why} {n}" for why, n in bad.reasons.most_common())}
        result = head | result
    _print_check_table(result, bad)
    if bad is not None:
        bad.raise_if_any()  # the same one-line error as before, now after the summary: exit status 2
    return result


def _mean(values: list[int | float]) -> float:
    return round(sum(values) / len(values), 1) if values else 0.0


def _duplicates(keys: Counter) -> int:
    return sum(v - 1 for v in keys.values())


def _chat_counts(records: Iterable[ChatRecord]) -> dict:
    roles: Counter = Counter()
    turns, reply_chars, system, multi = [], [], 0, 0
    for r in records:
        rs = [m["role"] for m in r.messages]
        roles.update(rs)
        turns.append(len(rs))
        reply_chars.append(len(r.messages[-1].get("content") or ""))
        system += "system" in rs
        multi += rs.count("user") > 1
    if not turns:
        return {"records": 0}
    return {"records": len(turns), "messages": sum(turns), **{f"{role}_messages": roles[role] for role in ROLES},
            "with_system": system, "multi_turn": multi, "messages_min": min(turns), "messages_mean": _mean(turns),
            "messages_max": max(turns), "final_reply_chars_mean": _mean(reply_chars)}


def _preference_counts(records: Iterable[PreferenceRecord]) -> dict:
    shapes: Counter = Counter()
    chosen, rejected, same = [], [], 0
    for r in records:
        shapes["string" if isinstance(r.chosen, str) else "messages"] += 1
        c, j = text_of(r.chosen, "assistant"), text_of(r.rejected, "assistant")
        chosen.append(len(c))
        rejected.append(len(j))
        same += c.strip() == j.strip()
    return {"records": len(chosen), "string_pairs": shapes["string"], "message_pairs": shapes["messages"],
            "chosen_equals_rejected": same, "chosen_chars_mean": _mean(chosen), "rejected_chars_mean": _mean(rejected)}


def _pair_counts(path: Path, columns: Columns, container: str) -> dict:
    """What the DPO trainer would make of the file (`toolkit.data.preference`): the format found
    (trl, sharegpt, hh), pairs, turns, and the rows it would skip, with their reasons."""
    counts = scan_pairs(path, columns=columns, container=container).counts()
    reasons = counts.pop("skip_reasons")
    return {"pair_format": counts.pop("format"), **counts,
            "skip_reasons": ", ".join(f"{why} {n}" for why, n in sorted(reasons.items())) or "none"}


def _qa_counts(records: Iterable[QARecord], max_chars: int) -> dict:
    qs, ans, keys = [], [], Counter()
    empty_q = empty_a = too_long = 0
    for r in records:
        too_long += bool(max_chars) and len(r.question) + len(r.answer) > max_chars
        empty_q += not r.question
        empty_a += not r.answer
        qs.append(len(r.question))
        ans.append(len(r.answer))
        if r.question:
            keys[squash(r.question).lower()] += 1
    counts = {"records": len(qs), "empty_questions": empty_q, "empty_answers": empty_a,
              "duplicate_questions": _duplicates(keys), "question_chars_mean": _mean(qs), "answer_chars_mean": _mean(ans)}
    return {**counts, **_too_long(too_long, max_chars)}


def _too_long(count: int, max_chars: int) -> dict:
    """The over-long count, shown only when there are some (the table stays as it was otherwise)."""
    return {"over_max_chars": f"{count} (longer than --max-chars {max_chars}: data build skips them)"} if count else {}


def _abstract_counts(records: Iterable[AbstractRecord], fmt: str, max_chars: int) -> dict:
    cats: Counter = Counter()
    keys: Counter = Counter()
    sentences, empty, too_long = [], 0, 0
    first: Date | None = None
    last: Date | None = None
    sources: Counter = Counter()
    for r in records:
        if max_chars and len(r.abstract) > max_chars:
            too_long += 1
            sentences.append(0)
            continue  # not split: a 5 MB "abstract" is not worth it
        cats.update(r.categories)
        text = squash(r.abstract).lower()
        empty += not text
        if text:
            keys[text] += 1
        sentences.append(len(r.sentences) if r.sentences is not None else len(split_sentences(r.abstract)))
        if r.date is not None:
            sources[r.date_source] += 1
            first = r.date if first is None or r.date < first else first
            last = r.date if last is None or r.date > last else last
    counts = {"records": len(sentences), "empty_abstracts": empty, "duplicate_abstracts": _duplicates(keys),
              "sentences_mean": _mean(sentences), "one_sentence_abstracts": sum(1 for s in sentences if s < 2)}
    if fmt == "arxiv":
        counts.update(categories=len(cats), top_categories=", ".join(f"{c} {n}" for c, n in cats.most_common(8)),
                      date_range=f"{first} .. {last}" if first is not None else "", dates_from=date_sources(sources))
    return {**counts, **_too_long(too_long, max_chars)}


def _built_counts(examples: Iterable[Example]) -> dict:
    kinds: Counter = Counter()
    prompts, responses, keys = [], [], Counter()
    empty = 0
    for ex in examples:
        kinds[ex.kind] += 1
        prompts.append(len(ex.prompt))
        responses.append(len(ex.response))
        empty += not ex.response.strip()
        keys[squash(ex.prompt).lower()] += 1
    return {"records": len(prompts), **{f"kind {k}": v for k, v in sorted(kinds.items())},
            "empty_responses": empty, "duplicate_prompts": _duplicates(keys),
            "prompt_chars_mean": _mean(prompts), "response_chars_mean": _mean(responses)}


def _print_check_table(result: dict, bad: Problems | None = None) -> None:
    """The counts as a table; with bad records, the first `Problems.SHOWN` of them after it, then how many more."""
    from rich.markup import escape
    from rich.table import Table

    from toolkit.console import out as stdout

    state = "OK" if bad is None else f"{bad.count} bad of {result['rows']} rows"
    table = Table(title=f"{result['path']} ({result['format']}): {state}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in result.items():
        if key not in ("path", "format"):
            table.add_row(key.replace("_", " "), str(value))
    stdout.print(table)
    if bad is not None:
        for line in bad.lines():
            stdout.print(f"  {escape(line)}", soft_wrap=True)
        if bad.count > len(bad.errors):
            stdout.print(f"  and {bad.count - len(bad.errors)} more bad rows")

"""Preference data: every format read into the same pairs, bad rows reported with file and line,
and `toolkit data prefs` (pairs from an SFT split with a model's own answers as rejected)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.data.preference import read_pairs
from toolkit.errors import DataError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_trl_strings_and_message_lists_with_system_and_turns(tmp_path):
    rows = [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Capital of France?"}],
         "chosen": [{"role": "assistant", "content": "Paris."}], "rejected": [{"role": "assistant", "content": "Lyon."}]},
        # implicit prompt: whole conversations, the shared beginning is the prompt
        {"chosen": [{"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "Green."}]},
    ]
    read = read_pairs(write_jsonl(tmp_path / "trl.jsonl", rows))
    assert read.format == "trl" and len(read.pairs) == 3 and not read.bad
    first, multi, implicit = read.pairs
    assert first.prompt == [{"role": "user", "content": "What is 2+2?"}] and (first.chosen, first.rejected) == ("4", "5")
    assert multi.prompt[0]["role"] == "system" and multi.turns == 2 and multi.chosen == "Paris."
    assert implicit.prompt == [{"role": "user", "content": "Sky colour?"}] and implicit.rejected == "Green."
    trl = multi.to_trl("ignored: it has one")
    assert trl["prompt"][0]["content"] == "Be brief." and trl["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert first.to_trl("Sys")["prompt"][0] == {"role": "system", "content": "Sys"}
    counts = read.counts()
    assert counts["pairs"] == 3 and counts["multi_turn"] == 1 and counts["with_system"] == 1


def test_sharegpt_preference_file(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Name a prime."}], "chosen": {"from": "gpt", "value": "7"},
         "rejected": {"from": "gpt", "value": "9"}},
        {"system": "You are terse.", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"},
                                                       {"from": "human", "value": "Bye?"}],
         "chosen": {"from": "gpt", "value": "Bye."}, "rejected": {"from": "gpt", "value": "Why?"}},
    ]
    read = read_pairs(write_jsonl(tmp_path / "sharegpt.json", rows))
    assert read.format == "sharegpt" and len(read.pairs) == 2
    assert read.pairs[0].prompt == [{"role": "user", "content": "Name a prime."}] and read.pairs[0].chosen == "7"
    second = read.pairs[1]
    assert [m["role"] for m in second.prompt] == ["system", "user", "assistant", "user"] and second.rejected == "Why?"


def test_hh_transcripts_split_at_the_shared_prefix(tmp_path):
    shared = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: How long?"
    rows = [
        {"chosen": shared + "\n\nAssistant: About 40 minutes at 220C.", "rejected": shared + "\n\nAssistant: Forever."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hey\n\nAssistant: Hello!"},  # prefixes differ
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    read = read_pairs(path, skip_bad=True)
    assert read.format == "hh" and len(read.pairs) == 1
    pair = read.pairs[0]
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"] and pair.prompt[-1]["content"] == "How long?"
    assert pair.chosen == "About 40 minutes at 220C." and pair.rejected == "Forever."
    assert len(read.bad) == 1 and read.bad[0].line == 2 and "prefixes differ" in read.bad[0].reason


BAD = [
    ({"prompt": "q", "chosen": "a"}, "missing rejected"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "empty prompt"),
    ({"prompt": "q", "chosen": "same", "rejected": "same "}, "chosen is identical to rejected"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "chosen is not an assistant message"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}}, "chosen is not an assistant message"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}, "prefixes differ"),
]


@pytest.mark.parametrize("row,reason", BAD, ids=[r for _, r in BAD])
def test_each_bad_row_kind_is_one_line_with_its_line_number(tmp_path, row, reason):
    good = {"prompt": "fine", "chosen": "yes", "rejected": "no"}
    path = write_jsonl(tmp_path / "p.jsonl", [good, row])
    with pytest.raises(DataError) as info:
        read_pairs(path)
    text = str(info.value)
    assert "\n" not in text and f"{path}:2: {reason}" in text and "--skip-bad" in text
    skipped = read_pairs(path, skip_bad=True)
    assert len(skipped.pairs) == 1 and len(skipped.bad) == 1 and skipped.counts()["skipped"] == 1


def test_the_error_lists_the_first_few_bad_rows(tmp_path):
    rows = [{"prompt": "q", "chosen": "x", "rejected": "x"}] * 8 + [{"prompt": "q", "chosen": "a", "rejected": "b"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=r"8 bad preference rows: .*:1: .*:5: chosen is identical.*\(and 3 more\)"):
        read_pairs(path)


class _Echo:
    """A stand-in backend: answers with the reference for one prompt (a near duplicate), a short
    wrong answer for the others, and counts the generations it was asked for."""

    calls = 0

    def __init__(self, references: dict):
        self.references = references

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def reserve(self, conversations, max_tokens):
        pass

    def generate_stream(self, next_job):
        from toolkit.runtime.generation import Generation

        while (job := next_job()) is not None:
            key, conv, _params = job
            type(self).calls += 1
            prompt = conv[-1]["content"]
            text = self.references[prompt] + "." if prompt.startswith("copy") else "no idea"
            yield key, Generation(text, "stop", 5, 3, 0.01)


def test_prefs_builds_pairs_drops_near_duplicates_and_caches(tmp_path, monkeypatch):
    import toolkit.runtime.backends as backends
    from toolkit.data.prefs import prefs

    split = tmp_path / "train.jsonl"
    refs = {"copy me": "The exact reference answer", "q1": "Adapters train in minutes.", "q2": "Filters smooth the features."}
    write_jsonl(split, [{"id": f"r{i}", "prompt": p, "response": r, "kind": "qa"} for i, (p, r) in enumerate(refs.items())])
    monkeypatch.setattr(backends, "open_backend", lambda *a, **k: _Echo(refs))
    out = tmp_path / "prefs" / "train.jsonl"
    result = prefs(split, out=out, model="fake", backend="ollama", url="http://x")
    assert result["kept"] == 2 and result["dropped"] == {"near duplicate": 1} and _Echo.calls == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r1", "r2"] and rows[0]["chosen"] == refs["q1"] and rows[0]["rejected"] == "no idea"
    assert read_pairs(out).format == "trl"  # the file the DPO trainer reads
    again = prefs(split, out=out, model="fake", backend="ollama", url="http://x", similarity_max=1.0)
    assert _Echo.calls == 3 and again["generated"] == 0 and again["kept"] == 3  # all from the cache


def test_data_check_names_the_pair_format_and_counts_turns(tmp_path):
    from toolkit.data.check import check

    shared = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: How long?"
    hh = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": shared + "\n\nAssistant: About 40 minutes.", "rejected": shared + "\n\nAssistant: Forever."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Same.", "rejected": "\n\nHuman: Hi\n\nAssistant: Same."},
    ])
    result = check(hh)
    assert result["format"] == "preference" and result["pair_format"] == "hh" and result["records"] == 3
    assert (result["pairs"], result["multi_turn"], result["turns_mean"], result["with_system"]) == (2, 1, 1.5, 0)
    assert result["skipped"] == 1 and result["skip_reasons"] == "chosen is identical to rejected 1"

    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": "Name a prime."}], "chosen": {"from": "gpt", "value": "7"},
         "rejected": {"from": "gpt", "value": "9"}},
        {"system": "You are terse.", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"},
                                                       {"from": "human", "value": "Bye?"}],
         "chosen": {"from": "gpt", "value": "Bye."}, "rejected": {"from": "gpt", "value": "Why?"}},
    ])
    result = check(sharegpt)
    assert result["pair_format"] == "sharegpt" and result["pairs"] == 2 and result["message_pairs"] == 2
    assert (result["multi_turn"], result["with_system"], result["turns_mean"], result["skipped"]) == (1, 1, 1.5, 0)
    assert result["skip_reasons"] == "none"


def test_read_pairs_reads_csv_with_mapped_columns(tmp_path):
    from toolkit.data.columns import Columns

    path = tmp_path / "p.csv"
    path.write_text("instruction,good,bad\nQ?,yes,no\n", encoding="utf-8")
    read = read_pairs(path, columns=Columns(prompt="instruction", chosen="good", rejected="bad"))
    (pair,) = read.pairs
    assert read.format == "trl" and pair.prompt == [{"role": "user", "content": "Q?"}] and (pair.chosen, pair.rejected) == ("yes", "no")
    assert pair.line == 2


def hh_row(i: int, chosen: str | None = None, rejected: str | None = None, human: str | None = None) -> dict:
    """An HH-style transcript pair (written by the team): two turns, the last reply differs."""
    head = f"\n\nHuman: What is {i} squared?\n\nAssistant: Let me think.\n\nHuman: {human or 'Please answer.'}\n\nAssistant:"
    return {"chosen": f"{head} {chosen if chosen is not None else f'It is {i * i}.'}",
            "rejected": f"{head} {rejected if rejected is not None else 'No idea.'}"}


def test_data_check_prints_its_summary_before_failing_on_bad_rows(tmp_path, capsys):
    from toolkit.cli import main

    rows = [hh_row(i) for i in range(40)]
    for i in (3, 5, 8, 13, 21, 34, 36):  # empty replies
        rows[i] = hh_row(i, chosen="")
    for i in (1, 2, 11, 17, 30):  # conversations that part before their last reply
        rows[i]["rejected"] = rows[i]["rejected"].replace("Please answer.", "Never mind.")
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    assert main(["data", "check", str(path)]) == 2
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())
    assert "12 bad of 40 rows" in out and "rows │ 40" in out and "usable │ 28" in out
    assert "bad by reason │ missing chosen 7, prefixes differ 5" in out and "pair format │ hh" in out
    listed = [line.strip() for line in captured.out.splitlines() if line.strip().startswith("line ")]
    assert [line.split(":")[0] for line in listed] == [f"line {i + 1}" for i in (1, 2, 3, 5, 8, 11, 13, 17, 21, 30)]
    assert "and 2 more bad rows" in out
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "12 bad records" in err[0]
    # training still stops on them unless told to skip
    with pytest.raises(DataError):
        read_pairs(path)
    assert len(read_pairs(path, skip_bad=True).bad) == 12

"""Data as users have it (issue 13): every kind in every container, column mapping, damaged CSVs,
bad rows listed together, ShareGPT preference data, dates in date order. Every input is written
here by the test itself."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from one_line import error_of

from toolkit.data.check import check
from toolkit.data.columns import Columns, parse_categories
from toolkit.data.dates import date_of_arxiv_id, parse_date
from toolkit.data.messages import read_chat, read_preference
from toolkit.data.readers import detect_format, load_examples, read_arxiv, read_qa, read_records
from toolkit.data.sources import detect_container, parse_format
from toolkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ writers


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict], delimiter: str = ",", newline: str = "\n") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator=newline)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)  # several row groups
    return path


def write_dataset(path: Path, rows: list[dict]) -> Path:
    """A folder as `datasets.Dataset.save_to_disk` writes it (the form scientific_papers comes in)."""
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_in(container: str, tmp_path: Path, rows: list[dict], stem: str = "data") -> Path:
    """`rows` in one of the containers the readers take."""
    if container == "jsonl":
        return write_jsonl(tmp_path / f"{stem}.jsonl", rows)
    if container == "json":
        (tmp_path / f"{stem}.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
        return tmp_path / f"{stem}.json"
    if container == "csv":
        return write_csv(tmp_path / f"{stem}.csv", rows)
    if container == "tsv":
        return write_csv(tmp_path / f"{stem}.tsv", rows, delimiter="\t")
    if container == "parquet":
        return write_parquet(tmp_path / f"{stem}.parquet", rows)
    folder = write_dataset(tmp_path / f"{stem}_hf", rows)
    if container == "hf":
        return folder
    (arrow,) = folder.glob("*.arrow")  # the saved dataset's own Arrow file
    return arrow


def abstract(i: int, sentences: int = 4) -> str:
    return " ".join(f"Sentence {s} of abstract {i} says something new about topic {i}." for s in range(sentences))


ARXIV = [{"id": f"2101.{i:05d}", "title": f"Paper {i}", "abstract": abstract(i), "categories": "cs.LG stat.ML" if i % 2 else "math.CO",
          "update_date": f"2021-0{1 + i}-15"} for i in range(5)]
QA = [{"question": f"What is {i}?", "answer": f"It is {i}, said twice: {i}."} for i in range(5)]
CHAT = [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello {i}."}]} for i in range(4)]
PREFERENCE = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
CONTAINERS = ["jsonl", "json", "csv", "tsv", "parquet", "hf", "arrow"]
NESTED = ["jsonl", "json", "parquet", "hf", "arrow"]  # message lists do not fit in a CSV cell


# ------------------------------------------------------------------- 1. one reader for every kind


@pytest.mark.parametrize("container", CONTAINERS)
def test_arxiv_in_every_container(tmp_path, container):
    path = write_in(container, tmp_path, ARXIV)
    assert detect_format(path) == "arxiv"
    records = list(read_records(path))
    assert [r.id for r in records] == [r["id"] for r in ARXIV]
    assert [r.abstract for r in records] == [r["abstract"] for r in ARXIV]
    assert records[1].categories == ["cs.LG", "stat.ML"] and records[1].title == "Paper 1"
    # the date column is read in every container; the id's month comes first (it is the submission month)
    assert records[4].update_date == "2021-05-15" and str(records[4].date) == "2021-01" and records[4].date_source == "id"


@pytest.mark.parametrize("container", CONTAINERS)
def test_qa_in_every_container(tmp_path, container):
    path = write_in(container, tmp_path, QA)
    assert detect_format(path) == "qa"
    assert [(r.question, r.answer) for r in read_qa(path)] == [(r["question"], r["answer"]) for r in QA]
    assert [e.response for e in load_examples(path)] == [r["answer"] for r in QA]


@pytest.mark.parametrize("container", NESTED)
def test_chat_and_preference_in_nested_containers(tmp_path, container):
    chat = write_in(container, tmp_path, CHAT, "chat")
    assert detect_format(chat) == "chat"
    assert [r.messages[-1]["content"] for r in read_chat(chat)] == [f"Hello {i}." for i in range(4)]
    pref = write_in(container, tmp_path, PREFERENCE, "pref")
    assert detect_format(pref) == "preference"
    assert [(r.prompt, r.chosen, r.rejected) for r in read_preference(pref)] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in PREFERENCE]


def test_a_saved_dataset_dict_reads_its_splits_in_order(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ARXIV[:3]), "test": Dataset.from_list(ARXIV[3:])}).save_to_disk(str(tmp_path / "dd"))
    assert detect_container(tmp_path / "dd") == "hf"
    records = list(read_records(tmp_path / "dd"))
    assert [r.id for r in records] == [r["id"] for r in ARXIV] and [r.line for r in records] == [1, 2, 3, 4, 5]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is a directory, not a data file or a saved dataset" in str(error_of(read_records, empty))


@pytest.mark.parametrize("container", ["csv", "tsv"])
def test_preference_with_string_fields_in_csv(tmp_path, container):
    path = write_in(container, tmp_path, PREFERENCE)
    assert detect_format(path) == "preference"
    assert check(path)["records"] == 4


def test_container_from_content_and_the_format_override(tmp_path):
    # no telling extension: judged by the content
    csv_txt = write_csv(tmp_path / "arxiv.txt", ARXIV)
    assert detect_container(csv_txt) == "csv" and len(list(read_records(csv_txt))) == 5
    jsonl_dat = write_jsonl(tmp_path / "arxiv.dat", ARXIV)
    assert detect_container(jsonl_dat) == "json"
    parquet_bin = write_parquet(tmp_path / "arxiv.bin", ARXIV)
    assert detect_container(parquet_bin) == "parquet" and len(list(read_records(parquet_bin))) == 5
    # content that looks like CSV (a comma in the header) but is tab-separated: --format says so
    rows = [{"question,asked": f"Why {i}?", "answer": f"Because {i}."} for i in range(3)]
    tsv_txt = write_csv(tmp_path / "qa.txt", rows, delimiter="\t")
    assert detect_container(tsv_txt) == "csv"
    records = list(read_records(tsv_txt, format="qa,tsv", question_col="question,asked"))
    assert [r.answer for r in records] == ["Because 0.", "Because 1.", "Because 2."]
    # a kind named on a CSV reads the CSV (it used to say "bad JSON")
    assert len(list(read_records(write_csv(tmp_path / "a.csv", ARXIV), format="arxiv"))) == 5
    assert parse_format("arxiv+csv") == ("arxiv", "csv") and parse_format("parquet") == ("auto", "parquet")
    with pytest.raises(ConfigError, match="a container"):
        parse_format("arxiv,xlsx")


def test_column_options_for_every_arxiv_field(tmp_path):
    rows = [{"key": f"k{i}", "heading": f"Head {i}", "body": abstract(i), "labels": "hep-th", "when": "3/4/2015"} for i in range(3)]
    path = write_csv(tmp_path / "custom.csv", rows)
    msg = str(error_of(read_records, path))
    assert "cannot tell the format" in msg and "--abstract-col" in msg
    columns = Columns(id="key", title="heading", abstract="body", categories="labels", date="when")
    records = list(read_arxiv(path, columns=columns, categories="hep-th"))
    assert [(r.id, r.title, r.categories, str(r.date)) for r in records] == [
        (f"k{i}", f"Head {i}", ["hep-th"], "2015-03-04") for i in range(3)]
    # the same through the command, option by option
    result = check(path, id_col="key", title_col="heading", abstract_col="body", categories_col="labels", date_col="when")
    assert result["format"] == "arxiv" and result["top_categories"] == "hep-th 3"
    assert result["date_range"] == "2015-03-04 .. 2015-03-04"


def test_column_options_for_qa_and_preference(tmp_path):
    qa = write_csv(tmp_path / "qa.csv", [{"Prompt text": "Why?", "Reply": "Because."}])
    assert [(r.question, r.answer) for r in read_qa(qa, "Prompt text", "Reply")] == [("Why?", "Because.")]
    rows = [{"instruction": "Q?", "good": "yes", "bad": "no"}]
    for path in (write_jsonl(tmp_path / "p.jsonl", rows), write_parquet(tmp_path / "p.parquet", rows)):
        result = check(path, kind="preference", prompt_col="instruction", chosen_col="good", rejected_col="bad")
        assert result["records"] == 1
        (r,) = read_preference(path, columns=Columns(prompt="instruction", chosen="good", rejected="bad"))
        assert (r.prompt, r.chosen, r.rejected) == ("Q?", "yes", "no")


@pytest.mark.parametrize("header, row", [
    (["titles", "summaries", "terms"], ["Graph nets", abstract(1), "['cs.LG', 'stat.ML']"]),
    (["title", "summary", "category"], ["Graph nets", abstract(1), "cs.LG, stat.ML"]),
    (["Title", "Abstract", "Categories"], ["Graph nets", abstract(1), '["cs.LG", "stat.ML"]']),
])
def test_public_column_names_are_recognised(tmp_path, header, row):
    path = tmp_path / "public.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, row])
    assert detect_format(path) == "arxiv"
    (r,) = read_arxiv(path, categories="cs.LG")
    assert (r.title, r.abstract, r.categories) == ("Graph nets", abstract(1), ["cs.LG", "stat.ML"])


def test_parse_categories_forms():
    assert parse_categories("cs.LG stat.ML") == ["cs.LG", "stat.ML"]
    assert parse_categories("['cs.LG', 'stat.ML']") == ["cs.LG", "stat.ML"]
    assert parse_categories(["cs.CV"]) == ["cs.CV"] and parse_categories(None) == [] and parse_categories("") == []


# --------------------------------------------------------------- 2. --categories with no field


@pytest.mark.parametrize("container", ["csv", "jsonl", "parquet"])
def test_categories_without_a_categories_field_names_the_option(tmp_path, container):
    rows = [{"id": f"x{i}", "title": "T", "abstract": abstract(i)} for i in range(3)]
    path = write_in(container, tmp_path, rows)
    msg = str(error_of(read_arxiv, path, categories="cs.LG"))
    assert "--categories was given but the records have no categories field" in msg and "--categories-col" in msg
    assert "found: id, title, abstract" in msg
    from toolkit.data.build import BuildOptions, build

    msg = str(error_of(build, [path], out=tmp_path / "out", options=BuildOptions(categories="cs.LG", tokenizer="words")))
    assert "no categories field" in msg and "--categories-col" in msg and "nothing matched" not in msg
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------- 3. damaged and CRLF CSVs


def test_csv_cut_inside_a_quoted_field_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,answer\nWhat?,"Fine."\nWhy?,"Because the answer goes on\nand on, until the file', encoding="utf-8")
    msg = str(error_of(read_qa, path))
    assert "qa.csv:3:" in msg and "ends inside a quoted field that starts on line 3" in msg
    assert "qa.csv:3:" in str(error_of(check, path))
    from toolkit.data.build import BuildOptions, build

    assert "qa.csv:3:" in str(error_of(build, [path], out=tmp_path / "out", options=BuildOptions(tokenizer="words")))
    # a stray character after a closing quote is malformed too
    path.write_text('question,answer\nWhat?,"Fine"x\n', encoding="utf-8")
    assert "qa.csv:2:" in str(error_of(read_qa, path)) and "bad CSV" in str(error_of(read_qa, path))


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_never_leaks_into_text(tmp_path, newline):
    rows = [{"question": f"Line one {i}{newline}line two?", "answer": f"First{newline}second{newline}third."} for i in range(3)]
    path = write_csv(tmp_path / "qa.csv", rows, newline=newline)
    assert b"\r" in path.read_bytes()
    records = list(read_qa(path))
    assert len(records) == 3 and all("\r" not in r.question + r.answer for r in records)
    assert records[0].answer == "First\nsecond\nthird." and [r.line for r in records] == [2, 6, 10]
    arxiv = write_csv(tmp_path / "arxiv.csv", [{**r, "abstract": r["abstract"].replace(". ", f".{newline}")} for r in ARXIV],
                      newline=newline)
    assert all("\r" not in r.abstract for r in read_arxiv(arxiv))
    json_qa = write_jsonl(tmp_path / "qa.jsonl", rows)  # escaped \r\n inside JSON strings
    assert all("\r" not in e.prompt + e.response for e in load_examples(json_qa))


# ------------------------------------------------- 4. every bad row listed, hints check can follow


def test_every_bad_row_is_listed_up_to_a_bound(tmp_path):
    rows = [CHAT[0], {"conversation": []}, CHAT[1], {"messages": "hi"}, CHAT[2], {"messages": []}]
    msg = str(error_of(read_chat, write_jsonl(tmp_path / "chat.jsonl", rows)))
    assert "chat.jsonl: 3 bad records: line 2: missing field 'messages'" in msg
    assert "line 4: messages must be a list of messages, got string" in msg and "line 6: messages is an empty list" in msg
    # bad JSON lines are listed with the rest
    path = tmp_path / "arxiv.jsonl"
    path.write_text(json.dumps(ARXIV[0]) + "\n{oops\n" + json.dumps({"id": "x"}) + "\n[1]\n", encoding="utf-8")
    msg = str(error_of(read_arxiv, path))
    assert "3 bad records" in msg and "line 2: bad JSON" in msg and "line 3: missing field 'abstract'" in msg
    assert "line 4: expected a JSON object" in msg
    # past the bound, the rest are counted
    many = [PREFERENCE[0]] + [{"prompt": "Q", "chosen": "x"} for _ in range(25)]
    msg = str(error_of(read_preference, write_jsonl(tmp_path / "pref.jsonl", many)))
    assert "25 bad records" in msg and msg.count("missing field 'rejected'") == 10 and "and 15 more" in msg
    # ragged CSV rows likewise
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\na,b\nc\nd,e\nf\n", encoding="utf-8")
    msg = str(error_of(read_qa, qa))
    assert "2 bad records: line 3: row has 1 fields but the header has 2; line 5:" in msg


def check_options() -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "toolkit", "data", "check", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={**__import__("os").environ, "COLUMNS": "200"})
    return set(re.findall(r"--[a-z][a-z-]+", proc.stdout))


def test_chat_hint_names_only_options_data_check_has(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"conversation": [{"role": "user", "content": "hi"}]}])
    msg = str(error_of(check, path, kind="chat"))
    assert "missing field 'messages'" in msg
    named = set(re.findall(r"--[a-z][a-z-]+", msg))
    assert named and named <= check_options(), named - check_options()
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    named = set(re.findall(r"--[a-z][a-z-]+", str(error_of(check, odd))))
    assert "--kind" in named and named <= check_options()


# ------------------------------------------------------------ 6. ShareGPT preference, dates


SHAREGPT_PREFERENCE = [
    {"conversations": [{"from": "human", "value": "What is 2+2?"}],
     "chosen": {"from": "gpt", "value": "4."}, "rejected": {"from": "gpt", "value": "5."}},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Name?"}],
     "chosen": {"from": "gpt", "value": "Ada."}, "rejected": {"from": "gpt", "value": "No."}, "system": "Be brief."},
]


def test_sharegpt_preference_reads(tmp_path):
    path = write_jsonl(tmp_path / "dpo.jsonl", SHAREGPT_PREFERENCE)
    assert detect_format(path) == "preference"
    a, b = read_preference(path)
    assert a.prompt == [{"role": "user", "content": "What is 2+2?"}]
    assert a.chosen == [{"role": "assistant", "content": "4."}] and a.rejected == [{"role": "assistant", "content": "5."}]
    assert [m["role"] for m in b.prompt] == ["system", "user", "assistant", "user"] and b.prompt[0]["content"] == "Be brief."
    result = check(path)
    assert result["records"] == 2 and result["message_pairs"] == 2
    examples = load_examples(path)
    assert [(e.prompt, e.response, e.meta["rejected"]) for e in examples] == [("What is 2+2?", "4.", "5."), ("Name?", "Ada.", "No.")]
    # in a saved dataset too
    assert len(list(read_preference(write_dataset(tmp_path / "dpo_hf", SHAREGPT_PREFERENCE)))) == 2
    # a speaker it does not know is named
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**SHAREGPT_PREFERENCE[0], "conversations": [{"from": "narrator", "value": "x"}]}])
    assert "is from 'narrator'" in str(error_of(read_preference, bad))


def test_sharegpt_chat_reads(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}], "system": "Be kind."}]
    (r,) = read_chat(write_jsonl(tmp_path / "sft.jsonl", rows))
    assert [m["role"] for m in r.messages] == ["system", "user", "assistant"]


@pytest.mark.parametrize("text, expected", [
    ("2021-03-04", "2021-03-04"), ("2021-03-04T10:00:00Z", "2021-03-04"), ("2021-03", "2021-03"), ("2021", "2021"),
    ("9/8/2016", "2016-09-08"), ("1/10/2008", "2008-01-10"), ("5 Jan 2015", "2015-01-05"),
    ("Mon, 2 Apr 2007 19:18:42 GMT", "2007-04-02"), ("Jan 5, 2015", "2015-01-05"),
    ("13/45/2016", None), ("yesterday", None), ("", None),
])
def test_parse_date(text, expected):
    parsed = parse_date(text)
    assert (str(parsed) if parsed else None) == expected


@pytest.mark.parametrize("identifier, expected", [
    ("0704.0001", "2007-04"), ("2101.00001v2", "2021-01"), ("hep-th/9901001", "1999-01"), ("math.AG/0601001", "2006-01"),
    ("arXiv:1501.00001", "2015-01"), ("sample.0001", None), ("1234.5678", None),
])
def test_dates_of_arxiv_ids(identifier, expected):
    parsed = date_of_arxiv_id(identifier)
    assert (str(parsed) if parsed else None) == expected


def test_check_reports_the_date_range_in_date_order(tmp_path):
    dates = ["9/8/2016", "1/10/2008", "12/1/2010", "10/2/2009"]
    rows = [{"title": f"T{i}", "abstract": abstract(i), "categories": "cs.LG", "update_date": d} for i, d in enumerate(dates)]
    assert check(write_csv(tmp_path / "us.csv", rows))["date_range"] == "2008-01-10 .. 2016-09-08"
    # no date column: the month each arXiv id encodes
    rows = [{"id": i, "abstract": abstract(n)} for n, i in enumerate(["0704.0001", "hep-th/9901001", "1912.01234"])]
    assert check(write_jsonl(tmp_path / "ids.jsonl", rows))["date_range"] == "1999-01 .. 2019-12"


def test_dates_from_a_parquet_date_column(tmp_path):
    import datetime as dt

    rows = [{"id": f"x{i}", "abstract": abstract(i), "published": dt.date(2020, 1 + i, 1)} for i in range(3)]
    assert check(write_parquet(tmp_path / "d.parquet", rows))["date_range"] == "2020-01-01 .. 2020-03-01"

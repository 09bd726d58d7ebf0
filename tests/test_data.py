"""Readers, one-line errors, the sentence splitter, `data build` / `data check` and the CLI path."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from one_line import error_of

from toolkit.data.build import BuildOptions, build, parse_split
from toolkit.data.check import check
from toolkit.data.messages import read_chat, read_preference
from toolkit.data.readers import (
    category_matcher,
    detect_format,
    load_examples,
    read_arxiv,
    read_papers,
    read_qa,
    read_records,
)
from toolkit.data.records import Example
from toolkit.data.textsplit import split_sentences
from toolkit.data.tokens import token_counter
from toolkit.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


# ------------------------------------------------------------------------------------ helpers


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def abstract(i: int, sentences: int = 4, words: int = 12) -> str:
    """A distinct abstract of `sentences` sentences of `words` words each."""
    return " ".join(
        f"Sentence {s} of abstract {i} " + " ".join(f"w{i}x{s}x{k}" for k in range(words - 5)) + "."
        for s in range(sentences)
    )


def arxiv_row(i: int, cats: str = "cs.LG", text: str | None = None) -> dict:
    return {"id": f"2101.{i:05d}", "title": f"Paper\n  {i}", "abstract": text or abstract(i),
            "categories": cats, "update_date": "2021-01-01"}


def build_words(inputs, out, **kw):
    """A build with whitespace-word counting and thresholds that keep the synthetic abstracts."""
    kw.setdefault("tokenizer", "words")
    kw.setdefault("max_problem_tokens", 50)
    kw.setdefault("min_approach_tokens", 10)
    return build(inputs, out=out, options=BuildOptions(**kw))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())} if directory.exists() else {}


@pytest.fixture
def arxiv_file(tmp_path) -> Path:
    rows = [arxiv_row(i, cats) for i, cats in enumerate(["cs.LG cs.AI", "cs.CL", "math.CO", "stat.ML cs.LG", "hep-th"])]
    return write_jsonl(tmp_path / "arxiv.jsonl", rows)


# -------------------------------------------------------------------------------------- readers


def test_read_arxiv_jsonl(arxiv_file):
    records = list(read_arxiv(arxiv_file))
    assert [r.id for r in records] == [f"2101.{i:05d}" for i in range(5)]
    assert records[0].categories == ["cs.LG", "cs.AI"]
    assert records[0].title == "Paper 0"  # wrapped titles are squashed
    assert records[2].line == 3 and records[2].update_date == "2021-01-01"


def test_read_arxiv_json_array_keeps_line_numbers(tmp_path):
    path = tmp_path / "arxiv.json"
    path.write_text(json.dumps([arxiv_row(0), arxiv_row(1)], indent=2), encoding="utf-8")
    records = list(read_arxiv(path))
    assert len(records) == 2 and records[0].line == 2 and records[1].line > records[0].line
    assert detect_format(path) == "arxiv"
    # a broken element names its own line
    text = path.read_text().replace('"abstract": "Sentence 0 of abstract 1', '"abstract": Sentence 0 of abstract 1')
    path.write_text(text)
    err = error_of(read_arxiv, path)
    bad_line = next(i for i, l in enumerate(text.splitlines(), 1) if '"abstract": Sentence 0 of abstract 1' in l)
    assert f"arxiv.json:{bad_line}:" in str(err) and "bad JSON" in str(err) and "column" in str(err)


def test_category_filter_exact_and_prefix(arxiv_file):
    ids = lambda cats: [r.id[-1] for r in read_arxiv(arxiv_file, categories=cats)]
    assert ids("cs.LG,cs.CL") == ["0", "1", "3"]
    assert ids("cs.") == ["0", "1", "3"]  # prefix: ends with '.'
    assert ids("math.,hep-th") == ["2", "4"]
    assert ids("CS.lg") == ["0", "3"]  # case-insensitive
    assert category_matcher("") is None
    with pytest.raises(ConfigError):
        category_matcher("cs.LG;rm -rf")


def test_category_filter_everything_away_gives_counts(arxiv_file):
    err = error_of(read_arxiv, arxiv_file, categories="cs")  # no '.': exact, matches nothing
    msg = str(err)
    assert "arxiv.jsonl" in msg and "all 5 records filtered away" in msg and "skipped 5" in msg
    assert "cs.LG" in msg and "'.'" in msg


def test_read_papers_normalises_tags_and_spacing(tmp_path):
    rows = [
        {"article_id": "p1", "article": "body", "section_names": "intro\nmethods",
         "abstract": "<S> we study graphs ( and trees ) . </S> <S> our method works , and it 's fast . </S>"},
        {"article": "body", "abstract": " additive models matter .\nthis paper gives rates .\n", "section_names": ""},
        {"article": "body", "abstract": "One sentence. Another one here.", "section_names": ""},
    ]
    path = write_jsonl(tmp_path / "papers.jsonl", rows)
    assert detect_format(path) == "papers"
    r1, r2, r3 = read_papers(path)
    assert r1.id == "p1" and r1.sentences == ["we study graphs (and trees).", "our method works, and it's fast."]
    assert r1.abstract == "we study graphs (and trees). our method works, and it's fast."
    assert r2.id == "papers-2" and r2.sentences == ["additive models matter.", "this paper gives rates."]
    assert r3.sentences == ["One sentence.", "Another one here."]
    assert r1.categories == []
    # asking for categories on it is a clear error
    err = error_of(read_records, path, categories="cs.LG")
    assert "scientific_papers data has no categories" in str(err) and "drop --categories" in str(err)


def test_read_qa_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text('question,answer\nWhat is 2+2?,4\n"Multi, with comma","line one\nline two"\n\nEmpty answer?,\n',
                        encoding="utf-8")
    records = list(read_qa(csv_path))
    assert [(r.question, r.answer, r.line) for r in records] == [
        ("What is 2+2?", "4", 2), ("Multi, with comma", "line one\nline two", 3), ("Empty answer?", "", 6)]
    assert detect_format(csv_path) == "qa"
    jl = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Why?", "a": "Because.", "id": "x1"}, {"q": "Num?", "a": 42}])
    assert detect_format(jl, "q", "a") == "qa"
    records = list(read_qa(jl, question_col="q", answer_col="a"))
    assert [(r.id, r.question, r.answer) for r in records] == [("x1", "Why?", "Because."), ("qa-2", "Num?", "42")]


def test_qa_missing_column_lists_found_columns_and_option(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("prompt,reply\nhi,there\n", encoding="utf-8")
    msg = str(error_of(read_qa, path))
    assert "qa.csv:1:" in msg and "missing column 'question'" in msg and "found: prompt, reply" in msg
    assert "--question-col" in msg
    jl = write_jsonl(tmp_path / "qa.jsonl", [{"question": "a", "answer": "b"}, {"question": "c", "reply": "d"}])
    msg = str(error_of(read_qa, jl))
    assert "qa.jsonl:2:" in msg and "missing field 'answer'" in msg and "found: question, reply" in msg
    assert "--answer-col" in msg


def test_csv_ragged_row(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer,id\na,b,1\nc\n", encoding="utf-8")
    msg = str(error_of(read_qa, path))
    assert "qa.csv:3:" in msg and "1 fields but the header has 3" in msg


CHAT_OK = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello."}]}


def test_read_chat_and_its_errors(tmp_path):
    good = write_jsonl(tmp_path / "chat.jsonl", [CHAT_OK, {"messages": [{"role": "user", "content": "Q"},
                                                                         {"role": "assistant", "content": "A"}]}])
    assert detect_format(good) == "chat"
    records = list(read_chat(good))
    assert len(records) == 2 and records[0].messages[0]["role"] == "system"

    cases = [
        ({"messages": [{"role": "user", "content": "Q"}]}, "ends with a user message"),
        ({"messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}]}, "no user message"),
        ({"messages": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]}, "message 2 of 2 has role 'bot'"),
        ({"messages": [{"role": "user", "content": ["Q"]}, {"role": "assistant", "content": "A"}]}, "content must be a string, got array"),
        ({"messages": "hello"}, "must be a list of messages, got string"),
        ({"messages": []}, "empty list"),
        ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]}, "empty assistant"),
        ({"conversation": []}, "missing field 'messages' (found: conversation)"),
    ]
    for record, expected in cases:
        path = write_jsonl(tmp_path / "bad_chat.jsonl", [CHAT_OK, CHAT_OK, record])
        msg = str(error_of(read_chat, path))
        assert "bad_chat.jsonl:3:" in msg and expected in msg, (expected, msg)


def test_read_preference_both_shapes_and_errors(tmp_path):
    rows = [
        {"prompt": "Q?", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
    ]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    assert detect_format(path) == "preference"
    a, b = read_preference(path)
    assert a.chosen == "good" and b.rejected[0]["content"] == "bad"

    cases = [
        ({"prompt": "Q", "chosen": "x"}, "missing field 'rejected' (found: prompt, chosen)"),
        ({"prompt": "Q", "chosen": "x", "rejected": [{"role": "assistant", "content": "y"}]}, "chosen is a string but rejected is a message list"),
        ({"prompt": "Q", "chosen": 3, "rejected": "y"}, "must be a string or a list of messages, got number"),
        ({"prompt": "Q", "chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]}, "chosen ends with a user message"),
        ({"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "chosen": "x", "rejected": "y"}, "prompt ends with an assistant"),
        ({"prompt": "", "chosen": "x", "rejected": "y"}, "field 'prompt' is empty"),
    ]
    for record, expected in cases:
        path = write_jsonl(tmp_path / "bad_pref.jsonl", [rows[0], record])
        msg = str(error_of(read_preference, path))
        assert "bad_pref.jsonl:2:" in msg and expected in msg, (expected, msg)


def test_detect_format_override_and_unknown(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    msg = str(error_of(detect_format, path))
    assert "odd.jsonl:1:" in msg and "cannot tell the format" in msg and "found: foo, bar" in msg and "--format" in msg
    # the override picks the reader, whose error then names the missing field
    msg = str(error_of(read_records, path, format="arxiv"))
    assert "missing field 'abstract' (found: foo, bar)" in msg and "--abstract-col" in msg
    with pytest.raises(ConfigError):
        read_records(path, format="yaml")


# ------------------------------------------------------------------------------- common errors


def test_bad_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "abs.jsonl"
    path.write_text(json.dumps(arxiv_row(0)) + "\n" + json.dumps(arxiv_row(1)) + "\n" + '{"id": "x", "abstract": oops}\n')
    err = error_of(read_arxiv, path)
    assert f"{path}:3:" in str(err) and "bad JSON" in str(err) and "(column 25)" in str(err)
    assert err.line == 3 and err.path == path


def test_missing_field_lists_found_fields(tmp_path):
    path = write_jsonl(tmp_path / "abs.jsonl", [arxiv_row(0), {"id": "1", "title": "t", "summary": "s"}])
    msg = str(error_of(read_arxiv, path, abstract_col="abstract"))
    assert f"{path}:2:" in msg and "missing field 'abstract' (found: id, title, summary)" in msg
    assert "--abstract-col" in msg


def test_abstract_col_renames_the_field(tmp_path):
    path = write_jsonl(tmp_path / "abs.jsonl", [{"id": "1", "summary": "First one. Second one."}])
    assert [r.abstract for r in read_arxiv(path, abstract_col="summary")] == ["First one. Second one."]


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(arxiv_row(0)).encode() + b"\n" + '{"abstract": "caf\xe9"}\n'.encode("latin-1"))
    msg = str(error_of(read_arxiv, path))
    assert f"{path}:2:" in msg and "not UTF-8" in msg and "0xe9" in msg and "re-save the file as UTF-8" in msg
    csv_path = tmp_path / "qa.csv"
    csv_path.write_bytes("question,answer\nok,fine\nna\xefve,yes\n".encode("latin-1"))
    msg = str(error_of(read_qa, csv_path))
    assert f"{csv_path}:3:" in msg and "not UTF-8" in msg


def test_empty_files(tmp_path):
    for name, content in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("empty.csv", ""), ("arr.json", "[ ]")]:
        path = tmp_path / name
        path.write_text(content)
        reader = read_qa if name.endswith(".csv") else read_arxiv
        msg = str(error_of(reader, path))
        assert str(path) in msg and "empty" in msg, msg
    header_only = tmp_path / "header.csv"
    header_only.write_text("question,answer\n")
    assert "header but no rows" in str(error_of(read_qa, header_only))
    assert "file not found" in str(error_of(read_arxiv, tmp_path / "nope.jsonl"))


def test_wrong_types(tmp_path):
    cases = [
        ({"id": "1", "abstract": ["a", "b"]}, "field 'abstract' must be a string, got array"),
        ({"id": "1", "abstract": "x", "categories": 5}, "field 'categories' must be a space-separated string, got number"),
        ({"id": "1", "abstract": "x", "title": {"t": 1}}, "field 'title' must be a string, got object"),
    ]
    for record, expected in cases:
        path = write_jsonl(tmp_path / "types.jsonl", [record])
        msg = str(error_of(read_arxiv, path))
        assert "types.jsonl:1:" in msg and expected in msg, msg
    path = tmp_path / "list.jsonl"
    path.write_text('["not", "an", "object"]\n')
    assert "expected a JSON object, got array" in str(error_of(read_chat, path))


# ------------------------------------------------------------------------------- load_examples


def test_load_examples_from_qa_chat_and_built(tmp_path):
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nWhat?,That.\n", encoding="utf-8")
    assert load_examples(qa) == [Example("qa-2", "What?", "That.", "qa", {"source": "qa.csv:2"})]

    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"id": "c1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "First"},
                                  {"role": "assistant", "content": "One"}, {"role": "user", "content": "Second"},
                                  {"role": "assistant", "content": "Two"}]}])
    (ex,) = load_examples(chat)
    assert (ex.id, ex.prompt, ex.response, ex.kind) == ("c1", "Second", "Two", "chat")
    assert ex.meta["system"] == "Be brief." and len(ex.meta["messages"]) == 5

    built = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "a", "prompt": "P", "response": "R", "kind": "problem-approach", "title": "T", "categories": ["cs.LG"]}])
    (ex,) = load_examples(built)
    assert ex == Example("a", "P", "R", "problem-approach", {"title": "T", "categories": ["cs.LG"]})
    assert ex.to_row() == json.loads(built.read_text())

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Only a prompt"}])
    (ex,) = load_examples(prompts)
    assert ex.prompt == "Only a prompt" and ex.response == "" and ex.kind == "prompt"


def test_load_examples_errors(tmp_path, arxiv_file):
    msg = str(error_of(load_examples, arxiv_file))
    assert "raw arxiv metadata" in msg and "toolkit data build" in msg
    built = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "P", "response": "R"}, {"prompt": ["x"], "response": "R"}])
    msg = str(error_of(load_examples, built))
    assert "train.jsonl:2:" in msg and "field 'prompt' must be a string, got array" in msg
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nWhat?,\n", encoding="utf-8")
    assert "qa.csv:2:" in str(error_of(load_examples, qa)) and "empty answer" in str(error_of(load_examples, qa))


# ------------------------------------------------------------------------------------ splitter


@pytest.mark.parametrize("text, expected", [
    ("We study graphs. Our method is fast.", ["We study graphs.", "Our method is fast."]),
    ("Models, e.g. transformers, i.e. attention nets, work. We agree.",
     ["Models, e.g. transformers, i.e. attention nets, work.", "We agree."]),
    ("Smith et al. proposed it. Jones et al. We improve it.",
     ["Smith et al. proposed it.", "Jones et al.", "We improve it."]),
    ("See Fig. 2 and Eq. (3) in Sec. 4. Then we compare vs. baselines, cf. Dr. Who.",
     ["See Fig. 2 and Eq. (3) in Sec. 4.", "Then we compare vs. baselines, cf. Dr. Who."]),
    ("Accuracy rose 3.5% to 0.82 with v2.1 of the code. It costs approx. 10 times less.",
     ["Accuracy rose 3.5% to 0.82 with v2.1 of the code.", "It costs approx. 10 times less."]),
    ("J. Smith and A. B. Jones proved it. We extend it.", ["J. Smith and A. B. Jones proved it.", "We extend it."]),
    ("The bound $O(n). We$ holds. Next.", ["The bound $O(n). We$ holds.", "Next."]),
    ("Let $$x = 1. Y = 2.$$ We also show \\(a. B\\) and \\[c. D\\] hold. Done.",
     ["Let $$x = 1. Y = 2.$$", "We also show \\(a. B\\) and \\[c. D\\] hold.", "Done."]),
    ("It runs in $O(n).$ We show more.", ["It runs in $O(n).$", "We show more."]),
    ("Is it true? Yes! It was... Surprising. And more... and more.",
     ["Is it true?", "Yes!", "It was...", "Surprising.", "And more... and more."]),
    ('He said "stop." Then he left. (This is odd.) Next one.',
     ['He said "stop."', "Then he left.", "(This is odd.)", "Next one."]),
    ("We use A and B (resp. C and D). In the U.S. Army. In the U.S. We live.",
     ["We use A and B (resp. C and D).", "In the U.S. Army.", "In the U.S.", "We live."]),
    ("See p. 12 of No. 5 today. Results follow.", ["See p. 12 of No. 5 today.", "Results follow."]),
    ("Wrapped\n  over lines. Second\n sentence.\n\nNew paragraph without a period\n\nLast.",
     ["Wrapped over lines.", "Second sentence.", "New paragraph without a period", "Last."]),
    ("Images, text, etc. We show more. The answer is no. We then stop",
     ["Images, text, etc.", "We show more.", "The answer is no.", "We then stop"]),
    ("", []),
    ("   \n ", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_splitter_is_fast():
    import time

    texts = [abstract(i, sentences=8) + " Smith et al. use $x_1, \\dots, x_n$ with 3.5% e.g. here. Fig. 2 shows it."
             for i in range(1000)]
    start = time.perf_counter()
    assert all(len(split_sentences(t)) == 10 for t in texts)
    assert time.perf_counter() - start < 1.0  # ~0.06 s on a laptop core


# --------------------------------------------------------------------------------------- build


def test_parse_split():
    assert parse_split("90,5,5") == [("train", 90), ("validation", 5), ("test", 5)]
    assert parse_split("80,20") == [("train", 80), ("validation", 20)]
    assert parse_split("100") == [("train", 100)]
    for bad in ["90,5", "a,b", "50,25,25,0", "", "0,50,50", "110,-10", "80.5,19.5"]:
        with pytest.raises(ConfigError):
            parse_split(bad)


def test_build_bad_split_string_is_clear(tmp_path, arxiv_file):
    with pytest.raises(ConfigError) as info:
        build_words([arxiv_file], tmp_path / "out", split="90,5")
    assert "sums to 95, not 100" in str(info.value) and "80,20" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def many_abstracts(tmp_path) -> Path:
    return write_jsonl(tmp_path / "many.jsonl", [arxiv_row(i) for i in range(200)])


def test_build_is_deterministic_and_seeded(tmp_path, many_abstracts):
    build_words([many_abstracts], tmp_path / "a", seed=1)
    build_words([many_abstracts], tmp_path / "b", seed=1)
    build_words([many_abstracts], tmp_path / "c", seed=2)
    a, b, c = snapshot(tmp_path / "a"), snapshot(tmp_path / "b"), snapshot(tmp_path / "c")
    assert set(a) == {"train.jsonl", "validation.jsonl", "test.jsonl", "stats.json"}
    assert a == b  # byte-identical, stats.json included
    ids = lambda snap, name: {json.loads(l)["id"] for l in snap[name].decode().splitlines()}
    assert ids(a, "validation.jsonl") != ids(c, "validation.jsonl")
    assert len(ids(c, "validation.jsonl")) == len(ids(a, "validation.jsonl")) == 10


def test_split_proportions_are_exact(tmp_path):
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\n" + "".join(f"Q{i}?,A{i}\n" for i in range(1000)), encoding="utf-8")
    stats = build([qa], out=tmp_path / "out", options=BuildOptions(tokenizer="words"))
    assert [stats["splits"][s]["kept"] for s in ("train", "validation", "test")] == [900, 50, 50]
    # largest remainder: 7 records at 80/20 -> 5.6/1.4 -> 6/1
    qa7 = tmp_path / "qa7.csv"
    qa7.write_text("question,answer\n" + "".join(f"Q{i}?,A{i}\n" for i in range(7)), encoding="utf-8")
    stats = build([qa7], out=tmp_path / "out7", options=BuildOptions(split="80,20", tokenizer="words"))
    assert (stats["splits"]["train"]["records"], stats["splits"]["validation"]["records"]) == (6, 1)
    assert stats["splits"]["train"]["kept"] + stats["splits"]["validation"]["kept"] == 7


def test_two_way_split_writes_no_test_file_and_removes_a_stale_one(tmp_path, many_abstracts):
    out = tmp_path / "out"
    build_words([many_abstracts], out)
    assert (out / "test.jsonl").exists()
    stats = build_words([many_abstracts], out, split="80,20")
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "train.jsonl", "validation.jsonl"]
    assert set(stats["splits"]) == {"train", "validation"} and stats["options"]["split"] == "80,20"
    assert len(read_rows(out / "train.jsonl")) == 160 and len(read_rows(out / "validation.jsonl")) == 40


def test_rows_are_problem_and_approach(tmp_path, arxiv_file):
    build_words([arxiv_file], tmp_path / "out", split="100")
    rows = read_rows(tmp_path / "out" / "train.jsonl")
    assert len(rows) == 5
    row = rows[0]
    assert set(row) == {"id", "prompt", "response", "kind", "title", "categories", "source"}
    sentences = split_sentences(abstract(0))
    assert row["prompt"] == sentences[0] and row["response"] == " ".join(sentences[1:])
    assert row["kind"] == "problem-approach" and row["categories"] == ["cs.LG", "cs.AI"]
    assert row["title"] == "Paper 0" and row["source"] == "arxiv.jsonl:1" and row["id"] == "2101.00000"
    assert [e.prompt for e in load_examples(tmp_path / "out" / "train.jsonl")] == [r["prompt"] for r in rows]


def test_thresholds_with_word_counts(tmp_path):
    rows = [
        arxiv_row(0, text=abstract(0, sentences=3, words=12)),  # kept: 12 / 24 words
        arxiv_row(1, text=abstract(1, sentences=3, words=31)),  # problem of 31 words > 30
        arxiv_row(2, text=abstract(2, sentences=2, words=12)),  # approach of 12 words < 20
        arxiv_row(3, text="Only one sentence here."),  # too few sentences
        arxiv_row(4, text=abstract(4, sentences=3, words=12)),
        arxiv_row(5, text=abstract(5, sentences=4, words=6)),  # 4 sentences < min 5? no: min_sentences=3 -> kept; 18 words < 20
    ]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    stats = build([path], out=tmp_path / "out", options=BuildOptions(tokenizer="words", max_problem_tokens=30,
                                                                     min_approach_tokens=20, min_sentences=3, split="100"))
    total = stats["total"]
    assert total["kept"] == 2
    assert total["skipped"]["problem_too_long"] == 1
    assert total["skipped"]["approach_too_short"] == 1
    assert total["skipped"]["too_few_sentences"] == 2  # the 1- and 2-sentence abstracts (min 3)
    # boundaries are inclusive: exactly max_problem_tokens is kept, exactly min_approach_tokens is kept
    stats = build([path], out=tmp_path / "out2", options=BuildOptions(tokenizer="words", max_problem_tokens=12,
                                                                      min_approach_tokens=24, min_sentences=2, split="100"))
    kept = {r["id"] for r in read_rows(tmp_path / "out2" / "train.jsonl")}
    assert kept == {"2101.00000", "2101.00004"}


def test_duplicates_never_cross_splits(tmp_path):
    rows, texts = [], []
    for i in range(60):
        texts.append(abstract(i))
    for copy in range(3):  # each abstract three times, differing only in case and whitespace
        for i, text in enumerate(texts):
            variant = text if copy == 0 else (text.upper() if copy == 1 else text.replace(" ", "  \n "))
            rows.append(arxiv_row(1000 * copy + i, text=variant))
    path = write_jsonl(tmp_path / "dups.jsonl", rows)
    for seed in range(5):
        out = tmp_path / f"out{seed}"
        stats = build_words([path], out, seed=seed, split="60,20,20")
        keys = [" ".join(r["prompt"].lower().split()) + "|" + " ".join(r["response"].lower().split())
                for name in ("train", "validation", "test") for r in read_rows(out / f"{name}.jsonl")]
        assert len(keys) == len(set(keys)) == 60
        assert stats["total"]["skipped"]["duplicate"] == 120
        # the first copy (file order) is the one kept
        kept_ids = {r["id"] for name in ("train", "validation", "test") for r in read_rows(out / f"{name}.jsonl")}
        assert kept_ids == {f"2101.{i:05d}" for i in range(60)}
        # split sizes are fixed on raw records; duplicates are counted in their own split
        assert [stats["splits"][s]["records"] for s in ("train", "validation", "test")] == [108, 36, 36]


def test_qa_dedupes_on_question_and_has_no_thresholds_by_default(tmp_path):
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nWhat is X?,A very long answer " + "word " * 200 + "\nwhat  is x?,Other\nShort?,\n",
                  encoding="utf-8")
    stats = build([qa], out=tmp_path / "out", options=BuildOptions(tokenizer="words", split="100"))
    assert stats["total"]["kept"] == 1 and stats["total"]["skipped"]["duplicate"] == 1
    assert stats["total"]["skipped"]["empty"] == 1
    (row,) = read_rows(tmp_path / "out" / "train.jsonl")
    assert row["kind"] == "qa" and row["prompt"] == "What is X?" and row["id"] == "qa-2"


def test_qa_thresholds_when_given(tmp_path):
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nShort question?,one two three\nA much longer question than allowed here?,one two three four five\n",
                  encoding="utf-8")
    err = error_of(build, [qa], out=tmp_path / "out", options=BuildOptions(tokenizer="words", split="100", max_question_tokens=3,
                                                                          min_answer_tokens=4))
    assert "problem too long 1, approach too short 1" in str(err) and "--max-question-tokens" in str(err)
    stats = build([qa], out=tmp_path / "out", options=BuildOptions(tokenizer="words", split="100", max_question_tokens=10, min_answer_tokens=4))
    assert stats["total"]["kept"] == 1 and stats["total"]["skipped"]["approach_too_short"] == 1


def test_category_filtering_in_build(tmp_path, arxiv_file):
    stats = build_words([arxiv_file], tmp_path / "out", categories="cs.LG,cs.CL", split="100")
    assert stats["total"]["kept"] == 3 and stats["total"]["skipped"]["category"] == 2
    assert stats["splits"]["train"]["records"] == 5
    stats = build_words([arxiv_file], tmp_path / "out", categories="cs.", split="100")
    assert stats["total"]["kept"] == 3
    err = error_of(build_words, [arxiv_file], tmp_path / "none", categories="cs")
    assert "nothing kept from 5 records" in str(err) and "filtered by category 5" in str(err)
    assert "cs.LG" in str(err) and "'.'" in str(err)
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nq,a\n", encoding="utf-8")
    assert "qa data has no categories" in str(error_of(build_words, [arxiv_file, qa], tmp_path / "x", categories="cs."))


def test_stats_json_contents(tmp_path, many_abstracts):
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\n" + "".join(f"Q{i}?,A{i}\n" for i in range(20)), encoding="utf-8")
    out = tmp_path / "out"
    returned = build_words([many_abstracts, qa], out, seed=3)
    stats = json.loads((out / "stats.json").read_text())
    assert stats == returned
    assert stats["options"]["seed"] == 3 and stats["options"]["tokenizer"] == "words" and stats["options"]["split"] == "90,5,5"
    assert stats["inputs"] == [
        {"path": str(many_abstracts), "format": "arxiv", "records": 200,
         "sha256": hashlib.sha256(many_abstracts.read_bytes()).hexdigest()},
        {"path": str(qa), "format": "qa", "records": 20, "sha256": hashlib.sha256(qa.read_bytes()).hexdigest()},
    ]
    assert stats["total"]["records"] == 220
    for key in ("records", "kept"):
        assert stats["total"][key] == sum(s[key] for s in stats["splits"].values())
    for name, entry in stats["splits"].items():
        assert entry["kept"] + sum(entry["skipped"].values()) == entry["records"]
        assert entry["kept"] == len(read_rows(out / f"{name}.jsonl"))
    kinds = {r["kind"] for r in read_rows(out / "train.jsonl")}
    assert kinds == {"problem-approach", "qa"}


def test_nothing_kept_names_threshold_and_writes_nothing(tmp_path, many_abstracts):
    out = tmp_path / "out"
    err = error_of(build_words, [many_abstracts], out, min_approach_tokens=10_000)
    assert "nothing kept from 200 records (approach too short 200)" in str(err)
    assert "lower --min-approach-tokens (now 10000)" in str(err)
    assert not out.exists()
    err = error_of(build_words, [many_abstracts], out, max_problem_tokens=2)
    assert "raise --max-problem-tokens" in str(err)


def test_failed_build_leaves_no_partial_files(tmp_path, many_abstracts, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(arxiv_row(0)) + "\n" + json.dumps(arxiv_row(1)) + '\n{"abstract": }\n')
    out = tmp_path / "out"
    with pytest.raises(DataError, match="bad.jsonl:3:"):
        build_words([many_abstracts, bad], out)
    assert not out.exists()

    # a previous build stays exactly as it was when a rebuild fails part-way
    build_words([many_abstracts], out)
    before = snapshot(out)
    with pytest.raises(DataError):
        build_words([many_abstracts, bad], out, seed=5)
    assert snapshot(out) == before

    # ... including a failure while writing (after train.jsonl was written)
    import toolkit.io

    real = toolkit.io.write_jsonl

    def failing(dest, rows):
        if Path(dest).name == "validation.jsonl":
            raise OSError("disk full")
        return real(dest, rows)

    monkeypatch.setattr(toolkit.io, "write_jsonl", failing)
    monkeypatch.setattr("toolkit.data.build.write_jsonl", failing)  # build holds its own binding
    with pytest.raises(OSError):
        build_words([many_abstracts], out, seed=5)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["many.jsonl", "bad.jsonl", "out"])  # no temp leftovers


def test_build_keeps_foreign_files_in_out(tmp_path, many_abstracts):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    build_words([many_abstracts], out)
    assert (out / "notes.txt").read_text() == "mine"
    assert {"train.jsonl", "validation.jsonl", "test.jsonl", "stats.json"} <= {p.name for p in out.iterdir()}


def test_build_rejects_chat_input(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [CHAT_OK])
    msg = str(error_of(build_words, [chat], tmp_path / "out"))
    assert "chat.jsonl" in msg and "not a build input" in msg


def test_build_reads_scientific_papers(tmp_path):
    rows = [{"article_id": f"p{i}", "article": "x", "section_names": "",
             "abstract": "".join(f"<S> {s.lower()} </S>" for s in split_sentences(abstract(i)))} for i in range(10)]
    path = write_jsonl(tmp_path / "papers.jsonl", rows)
    stats = build_words([path], tmp_path / "out", split="100")
    assert stats["total"]["kept"] == 10 and stats["inputs"][0]["format"] == "papers"
    row = read_rows(tmp_path / "out" / "train.jsonl")[0]
    assert row["id"] == "p0" and row["prompt"] == split_sentences(abstract(0))[0].lower()


def test_build_with_the_real_default_tokenizer(tmp_path, default_hf_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(default_hf_dir / "tokenizer.json"))
    texts = [abstract(i, words=8 + i % 10) for i in range(30)]
    path = write_jsonl(tmp_path / "abs.jsonl", [arxiv_row(i, text=t) for i, t in enumerate(texts)])
    problems = [split_sentences(t)[0] for t in texts]
    lengths = [len(tok.encode(p, add_special_tokens=False).ids) for p in problems]
    limit = sorted(lengths)[15]  # about half the problems are longer
    stats = build([path], out=tmp_path / "out", options=BuildOptions(max_problem_tokens=limit, min_approach_tokens=0, split="100"))
    assert stats["options"]["tokenizer"] == "smollm2"
    assert stats["total"]["kept"] == sum(n <= limit for n in lengths) > 0
    assert stats["total"]["skipped"]["problem_too_long"] == sum(n > limit for n in lengths) > 0
    assert token_counter("smollm2")(problems) == lengths
    assert token_counter("smollm2") is not None and "smollm2" in __import__("toolkit.data.tokens").data.tokens._TOKENIZERS


@pytest.mark.skipif(not (SAMPLE / "abstracts.jsonl").exists(), reason="data/sample/abstracts.jsonl not present")
def test_sample_data_builds(tmp_path):
    """data/sample/README.md: 134 usable abstracts; 4 single-sentence, 4 short approaches, 3 long problems, 3 duplicates."""
    stats = build([SAMPLE / "abstracts.jsonl"], out=tmp_path / "out")  # the real default tokenizer
    total = stats["total"]
    assert total["records"] == 148 and total["kept"] == 134
    assert {k: v for k, v in total["skipped"].items() if v} == {
        "problem_too_long": 3, "approach_too_short": 4, "too_few_sentences": 4, "duplicate": 3}
    kept = {e.id for name in ("train", "validation", "test") for e in load_examples(tmp_path / "out" / f"{name}.jsonl")}
    assert not kept & {"sample.0110", "sample.0125", "sample.0146"}  # later copies of 0007, 0034, 0135
    assert {"sample.0007", "sample.0034", "sample.0135"} <= kept
    if (SAMPLE / "qa.csv").exists():
        assert len(load_examples(SAMPLE / "qa.csv")) == 48


# --------------------------------------------------------------------------------------- check


def test_check_counts(tmp_path, arxiv_file, capsys):
    chat = write_jsonl(tmp_path / "chat.jsonl", [CHAT_OK, {"messages": [{"role": "user", "content": "Q"},
                                                                         {"role": "assistant", "content": "A"}]}])
    result = check(chat)
    assert result["format"] == "chat" and result["records"] == 2 and result["messages"] == 5
    assert (result["user_messages"], result["assistant_messages"], result["system_messages"]) == (2, 2, 1)
    assert result["with_system"] == 1 and "chat.jsonl" in capsys.readouterr().out

    pref = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "a"}])
    result = check(pref)
    assert result["records"] == 1 and result["chosen_equals_rejected"] == 1

    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nQ1,A\nq1,B\nQ2,\n", encoding="utf-8")
    result = check(qa)
    assert (result["records"], result["duplicate_questions"], result["empty_answers"]) == (3, 1, 1)

    result = check(arxiv_file, kind="arxiv")
    assert result["records"] == 5 and result["categories"] == 6 and "cs.LG 2" in result["top_categories"]

    built_dir = tmp_path / "built"
    build_words([arxiv_file], built_dir, split="100")
    result = check(built_dir / "train.jsonl")
    assert result["format"] == "built" and result["records"] == 5 and result["kind problem-approach"] == 5


def test_check_errors_are_one_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(CHAT_OK) + "\n" + '{"messages": [{"role": "user", "content": "Q"}]}\n')
    assert f"{path}:2:" in str(error_of(check, path))
    with pytest.raises(ConfigError):
        check(path, kind="nope")


# ----------------------------------------------------------------------------------------- CLI


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "toolkit", "data", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**__import__("os").environ, "COLUMNS": "200"})


def test_cli_bad_input_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(arxiv_row(0)) + "\n\n" + '{"abstract": oops}\n')
    proc = run_cli("build", bad, "--out", tmp_path / "out", "--tokenizer", "words")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and f"{bad}:3:" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()

    proc = run_cli("build", bad, "--split", "70,20", "--tokenizer", "words")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("error:")
    assert "--split" in proc.stderr


def test_cli_build_and_check(tmp_path, many_abstracts):
    out = tmp_path / "out"
    proc = run_cli("build", many_abstracts, "--out", out, "--tokenizer", "words", "--min-approach-tokens", "10",
                   "--split", "80,20", "--seed", "4", "--categories", "cs.")
    assert proc.returncode == 0, proc.stderr
    assert "kept" in proc.stdout and "filtered by category" in proc.stdout and "validation" in proc.stdout
    assert json.loads((out / "stats.json").read_text())["options"]["seed"] == 4
    proc = run_cli("check", out / "train.jsonl")
    assert proc.returncode == 0 and "records" in proc.stdout and "160" in proc.stdout

"""`toolkit data check` and `toolkit train --method dpo` read preference rows through one validator
(`toolkit.data.preference.parse_row`): the same rows through both paths get the same verdict and
the same one-line reason naming file and line. The table holds every format the toolkit reads and
every bad-row kind, including the edge cases the two readers used to disagree on (a side that
holds a user turn, tool turns, one side a string and the other a message list)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.data.check import check
from toolkit.data.messages import read_preference
from toolkit.data.preference import read_pairs, scan_pairs
from toolkit.errors import DataError

GOOD = {"prompt": "fine", "chosen": "yes", "rejected": "no"}
SAME = "counted"  # identical replies: data check counts them, training stops on them (or skips with --skip-bad)


def msg(role: str, content: str | None = "x", **extra) -> dict:
    return {"role": role, "content": content, **extra}


def user(text: str) -> dict:
    return msg("user", text)


def bot(text: str) -> dict:
    return msg("assistant", text)


CALL = msg("assistant", None, tool_calls=[{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}])
RESULT = msg("tool", "2", tool_call_id="0")
HH = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: How long?"

# (id, row, verdict): "ok", SAME, or the reason both paths must give (its beginning)
CASES = [
    # ----------------------------------------------------------------------------- valid forms
    ("trl strings", {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}, "ok"),
    ("trl conversational, system and turns", {"prompt": [msg("system", "Be brief."), user("Hi"), bot("Hello"), user("Capital?")],
                                              "chosen": [bot("Paris.")], "rejected": [bot("Lyon.")]}, "ok"),
    ("trl string prompt, message sides", {"prompt": "Q?", "chosen": [bot("a")], "rejected": [bot("b")]}, "ok"),
    ("trl message-object sides", {"prompt": [user("Q?")], "chosen": bot("a"), "rejected": bot("b")}, "ok"),
    ("trl two assistant messages a side", {"prompt": "Q?", "chosen": [bot("a"), bot("b")], "rejected": [bot("c")]}, "ok"),
    ("trl implicit prompt", {"chosen": [user("Sky?"), bot("Blue.")], "rejected": [user("Sky?"), bot("Green.")]}, "ok"),
    ("sharegpt", {"system": "Be terse.", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"},
                                                           {"from": "human", "value": "Bye?"}],
                  "chosen": {"from": "gpt", "value": "Bye."}, "rejected": {"from": "gpt", "value": "Why?"}}, "ok"),
    ("hh transcripts", {"chosen": HH + "\n\nAssistant: 40 minutes.", "rejected": HH + "\n\nAssistant: Forever."}, "ok"),
    # ------------------------------------------------------------------------- bad-row kinds
    ("missing side", {"prompt": "q", "chosen": "a"}, "missing rejected: missing field 'rejected' (found: prompt, chosen)"),
    ("missing prompt", {"chosen": "a", "rejected": "b"}, "missing prompt"),
    ("empty prompt", {"prompt": "  ", "chosen": "a", "rejected": "b"}, "empty prompt: field 'prompt' is empty"),
    ("empty prompt list", {"prompt": [], "chosen": "a", "rejected": "b"}, "empty prompt"),
    ("prompt without user text", {"prompt": [user(" ")], "chosen": "a", "rejected": "b"}, "empty prompt"),
    ("prompt of a system turn only", {"prompt": [msg("system", "s")], "chosen": "a", "rejected": "b"}, "empty prompt"),
    ("empty side", {"prompt": "q", "chosen": " ", "rejected": "b"}, "missing chosen: field 'chosen' is empty"),
    ("empty assistant message", {"prompt": "q", "chosen": [bot("")], "rejected": [bot("b")]}, "missing chosen"),
    ("identical", {"prompt": "q", "chosen": "same", "rejected": "same "}, SAME),
    ("identical implicit", {"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("a")]}, SAME),
    ("side of a user message", {"prompt": "q", "chosen": [user("a")], "rejected": [bot("b")]},
     "chosen is not an assistant message: chosen ends with a user message"),
    ("sharegpt side from human", {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "a"},
                                  "rejected": {"from": "gpt", "value": "b"}}, "chosen is not an assistant message"),
    ("side with a system turn", {"prompt": "q", "chosen": [msg("system", "s"), bot("a")], "rejected": [bot("b")]},
     "chosen is not an assistant message"),
    ("prompt ends with the assistant", {"prompt": [user("q"), bot("a")], "chosen": "x", "rejected": "y"},
     "prompt ends with an assistant message"),
    ("hh prefixes differ", {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}, "prefixes differ"),
    ("side not text", {"prompt": "q", "chosen": 3, "rejected": "y"}, "chosen must be a string or a list of messages, got number"),
    ("content parts", {"prompt": [{"role": "user", "content": [{"type": "text", "text": "q"}]}], "chosen": "a", "rejected": "b"},
     "prompt message 1 of 1 (user) content must be a string, got array"),
    ("role not a chat role", {"prompt": [msg("human", "q")], "chosen": "a", "rejected": "b"}, "prompt message 1 of 1 has role 'human'"),
    ("unknown speaker", {"conversations": [{"from": "narrator", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
                         "rejected": {"from": "gpt", "value": "b"}}, "prompt message 1 of 1 is from 'narrator'"),
    # ------------------------------- (a) a side that holds a user turn: TRL would train on the user's words as a reply
    ("(a) side is a whole conversation", {"prompt": "q", "chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("b")]},
     "chosen is not an assistant message: chosen holds a user turn"),
    ("(a) user turn between replies", {"prompt": "q", "chosen": [bot("a"), user("more?"), bot("b")], "rejected": [bot("c")]},
     "chosen is not an assistant message: chosen holds a user turn"),
    # ------------------------------- (b) tool turns: tool_calls and tool results, in a side or in the prompt
    ("(b) tool call and result in a side", {"prompt": "1+1?", "chosen": [CALL, RESULT, bot("2")], "rejected": [bot("3")]},
     "chosen message 1 of 3 is a tool call"),
    ("(b) tool result in a side", {"prompt": "1+1?", "chosen": [bot("let me add"), RESULT, bot("2")], "rejected": [bot("3")]},
     "chosen message 2 of 3 is a tool result"),
    ("(b) tool turns in the prompt", {"prompt": [user("1+1?"), CALL, RESULT, user("so?")], "chosen": "2", "rejected": "3"},
     "prompt message 2 of 4 is a tool call"),
    ("(b) sharegpt observation", {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"},
                                                    {"from": "observation", "value": "r"}, {"from": "human", "value": "so?"}],
                                  "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
     "prompt message 2 of 4 is a tool call"),
    # ------------------------------- (c) one side a string, the other a message list: TRL cannot tokenize the pair
    ("(c) string and message list", {"prompt": "Q", "chosen": "x", "rejected": [bot("y")]},
     "chosen is a string but rejected is a message list"),
    ("(c) message list and string", {"prompt": [user("Q")], "chosen": [bot("x")], "rejected": "y"},
     "chosen is a message list but rejected is a string"),
    ("(c) sharegpt string and object", {"conversations": [{"from": "human", "value": "q"}], "chosen": "a",
                                        "rejected": {"from": "gpt", "value": "b"}}, "chosen is a string but rejected is a message list"),
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def check_reason(path: Path) -> str | None:
    """What `data check`'s reader says of line 2 (None: accepted)."""
    try:
        list(read_preference(path))
    except DataError as exc:
        assert "\n" not in str(exc) and exc.line == 2 and exc.fix, str(exc)
        return exc.message.removeprefix(f"{path}:2: ")
    return None


def trainer_reason(path: Path) -> str | None:
    """What the DPO trainer's reader says of line 2 (None: accepted)."""
    bad = scan_pairs(path).bad
    assert all(b.line == 2 for b in bad)
    return bad[0].reason if bad else None


@pytest.mark.parametrize("row,verdict", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_data_check_and_training_agree(tmp_path, row, verdict):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, row])
    by_check, by_trainer = check_reason(path), trainer_reason(path)
    if verdict == "ok":
        assert (by_check, by_trainer) == (None, None)
        assert len(read_pairs(path).pairs) == 2
    elif verdict == SAME:
        assert by_check is None and by_trainer == "chosen is identical to rejected"
        result = check(path)
        assert result["chosen_equals_rejected"] == 1 and result["skipped"] == 1
    else:
        assert by_check == by_trainer and by_check.startswith(verdict), (by_check, by_trainer)
        with pytest.raises(DataError) as info:
            read_pairs(path)
        text = str(info.value)
        assert "\n" not in text and f"{path}:2: {by_trainer}" in text and "--skip-bad" in text
        with pytest.raises(DataError) as info:
            check(path)
        assert f"{path}:2: {by_check}" in str(info.value)


def test_the_trainer_keeps_a_side_of_several_assistant_messages(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": [bot("First."), bot("Second.")], "rejected": [bot("No.")]}])
    (pair,) = read_pairs(path).pairs
    trl = pair.to_trl()
    assert trl["chosen"] == [bot("First."), bot("Second.")] and trl["rejected"] == [bot("No.")]
    assert trl["prompt"] == [user("Q?")]


def test_a_system_field_is_the_first_message_in_both_paths(tmp_path):
    rows = [{"system": "Be brief.", "prompt": [user("Q?")], "chosen": [bot("a")], "rejected": [bot("b")]},
            {"system": "Be brief.", "prompt": "Q?", "chosen": "a", "rejected": "b"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    listed, plain = read_preference(path)
    assert listed.prompt == [msg("system", "Be brief."), user("Q?")] and plain.prompt == "Q?"
    assert [p.prompt[0] for p in read_pairs(path).pairs] == [msg("system", "Be brief.")] * 2
    assert check(path)["with_system"] == 2


def test_column_names_are_found_the_same_way(tmp_path):
    """Case-folded column names are recognised by both paths (data check always recognised them)."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"Prompt": "Q?", "Chosen": "a", "Rejected": "b"}])
    (record,) = read_preference(path)
    (pair,) = read_pairs(path).pairs
    assert (record.prompt, record.chosen, record.rejected) == ("Q?", "a", "b") and (pair.chosen, pair.rejected) == ("a", "b")

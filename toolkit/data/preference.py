"""Preference pairs from any of the formats people ship them in, normalised to one shape, and the
one validator that decides which rows are pairs: `parse_row`, used by the DPO trainer
(`read_pairs`) and by `toolkit data check` (`toolkit.data.messages.read_preference`) alike, so the
two accept and reject the same rows with the same one-line reason.

Formats (judged per record): TRL's `prompt`/`chosen`/`rejected` as strings or message lists (system
and multi-turn prompts included; without `prompt`, the shared beginning of the two conversations is
the prompt), LLaMA-Factory's ShareGPT preference form (`conversations` + `chosen`/`rejected`
objects, an optional `system`), and Anthropic HH rows whose `chosen`/`rejected` are whole
`\\n\\nHuman: .. \\n\\nAssistant: ..` transcripts, split after the longest shared run of turns.
Column names follow `--prompt-col`/`--chosen-col`/`--rejected-col` (`toolkit.data.columns`).

Every pair becomes a `Pair`: the prompt as chat messages ending with a user turn, and the two
replies. The rules follow TRL 1.16's conversational form (prompt: messages ending with the user's
turn; chosen/rejected: the assistant's reply), and reject what TRL would fail on later or train
on wrongly: a side that holds a user or system turn (it would be trained as the model's words),
tool calls or results (the toolkit renders plain role/content turns, so they would be dropped or
mis-rendered), one side a string and the other a message list (TRL cannot tokenize the pair), a
role outside system/user/assistant, content that is not a string. A string prompt with message
sides is read as one user turn. A row that cannot be a pair is a `BadRow` naming file and line;
`read_pairs` stops on them with the first few listed, or skips and counts them with `skip_bad`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.data.columns import Columns
from toolkit.data.records import ROLES as CHAT_ROLES
from toolkit.data.records import SPEAKERS as CHAT_SPEAKERS
from toolkit.data.records import found_fields, json_type, record_id, with_system
from toolkit.data.sources import detect_container, iter_rows
from toolkit.errors import DataError

FORMATS = ("trl", "sharegpt", "hh")
SHOWN_BAD = 5  # bad rows listed in the error before training
ROLES = tuple(r for r in CHAT_ROLES if r != "tool")  # a pair is plain turns: the tool turns chat data may have are refused
# ShareGPT speaker names (LLaMA-Factory's defaults and the common variants) -> chat roles
SPEAKERS = {name: role for name, role in CHAT_SPEAKERS.items() if name not in ("observation", "tool", "function_call")}
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
FIX = ("each row needs a prompt and two different assistant replies: prompt/chosen/rejected (strings or messages), "
       "ShareGPT conversations + chosen/rejected, or HH chosen/rejected transcripts")


@dataclass
class Pair:
    """One preference pair: `prompt` is chat messages ending with a user turn; `replies` holds the
    two sides as messages when one of them is several assistant messages."""

    id: str
    prompt: list[dict]
    chosen: str
    rejected: str
    line: int
    format: str
    replies: tuple[list[dict], list[dict]] | None = None

    @property
    def turns(self) -> int:
        return sum(m["role"] == "user" for m in self.prompt)

    def to_trl(self, system: str = "") -> dict:
        """TRL's conversational form (what DPOTrainer tokenizes with the chat template)."""
        prompt = self.prompt
        if system and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system}] + prompt
        chosen, rejected = self.replies or ([_reply(self.chosen)], [_reply(self.rejected)])
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


@dataclass
class BadRow:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class PairsRead:
    """What a file gave: the pairs, the bad rows, and the format of each row."""

    path: Path
    pairs: list[Pair] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)

    @property
    def format(self) -> str:
        return "+".join(sorted(self.formats)) or "none"

    def counts(self) -> dict:
        """What `toolkit data check` reports for a preference file."""
        turns = [p.turns for p in self.pairs]
        return {"format": self.format, "pairs": len(self.pairs), "skipped": len(self.bad),
                "multi_turn": sum(t > 1 for t in turns), "with_system": sum(p.prompt[0]["role"] == "system" for p in self.pairs),
                "turns_mean": round(sum(turns) / len(turns), 2) if turns else 0.0,
                "skip_reasons": dict(Counter(b.reason.split(":")[0] for b in self.bad))}


class BadPair(Exception):
    """A row that is not a usable pair (turned into a BadRow with its line, or a reader's DataError).
    Its text is `kind` or `kind: detail`; `data check` groups skipped rows by the kind."""


@dataclass
class Row:
    """One row as `parse_row` read it: what training uses (the prompt as messages, the reply texts,
    `replies` when a side is several messages) and `given`, the prompt, chosen and rejected in the
    row's own shape (a string, or its messages), for `data check`'s counts."""

    prompt: list[dict]
    chosen: str
    rejected: str
    format: str
    given: tuple[str | list[dict], str | list[dict], str | list[dict]]
    replies: tuple[list[dict], list[dict]] | None = None


def _keys(obj: dict, columns: Columns | None) -> dict[str, str]:
    """The column of each of prompt/chosen/rejected in this record (mapped, or a recognised name)."""
    columns = columns or Columns()
    return {name: columns.find(name, obj) or getattr(columns, name) for name in ("prompt", "chosen", "rejected")}


def detect(obj: dict, columns: Columns | None = None) -> str:
    """The format of one record: trl, sharegpt or hh."""
    keys = _keys(obj, columns)
    if keys["prompt"] == "conversations":
        return "sharegpt"
    chosen = obj.get(keys["chosen"])
    if keys["prompt"] not in obj and isinstance(chosen, str) and _HH_TURN.search("\n\n" + chosen.lstrip("\n")):
        return "hh"
    return "trl"


# ------------------------------------------------------------------------------------ messages


def _a(role: str) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"  # the roles are system, user, assistant


def _tool_kind(m: dict, raw: Any) -> str:
    """`call` or `result` for a tool turn (OpenAI `tool_calls`/`tool`, ShareGPT `function_call`/`observation`), else ''."""
    name = str(raw).lower()
    if name in ("tool", "observation"):
        return "result"
    return "call" if name == "function_call" or m.get("tool_calls") or m.get("function_call") else ""


def _turn(m: Any, at: str) -> dict:
    """One message as `{role, content}`: OpenAI form (`role`/`content`) or ShareGPT (`from`/`value`)."""
    if not isinstance(m, dict):
        raise BadPair(f"{at} must be an object with role and content, got {json_type(m)}")
    if m.get("role") is not None:  # a None beside `from` is a column Arrow/Parquet filled in
        raw, key, role = m["role"], "content", m["role"] if m["role"] in ROLES else None
    elif m.get("from") is not None:
        raw, key, role = m["from"], "value", SPEAKERS.get(str(m["from"]).lower())
    else:
        raise BadPair(f"{at} has no 'role' ({found_fields(m)})")
    if kind := _tool_kind(m, raw):
        raise BadPair(f"{at} is a tool {kind}; pairs here are plain system/user/assistant turns (drop the tool turns or the row)")
    if role is None and key == "content":
        raise BadPair(f"{at} has role {raw!r}; expected one of {', '.join(ROLES)}")
    if role is None:
        raise BadPair(f"{at} is from {raw!r}; expected one of {', '.join(SPEAKERS)}")
    content = m.get(key)
    if content is None:
        raise BadPair(f"{at} ({role}) has no {key!r} ({found_fields(m)})")
    if not isinstance(content, str):
        raise BadPair(f"{at} ({role}) {key} must be a string, got {json_type(content)}")
    return {"role": role, "content": content}


def _turns(value: list | dict, where: str) -> list[dict]:
    messages = [value] if isinstance(value, dict) else value
    return [_turn(m, f"{where} message {i} of {len(messages)}") for i, m in enumerate(messages, 1)]


def _field(obj: dict, keys: dict[str, str], name: str) -> Any:
    if keys[name] not in obj:
        raise BadPair(f"missing {name}: missing field {keys[name]!r} ({found_fields(obj)})")
    return obj[keys[name]]


def _shaped(obj: dict, keys: dict[str, str], name: str, empty: str) -> str | list[dict]:
    """A field as a non-blank string or its checked messages; `empty` is the reason's kind when blank."""
    value = _field(obj, keys, name)
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, str) or value == []:
        raise BadPair(f"{empty}: field {keys[name]!r} is {'empty' if isinstance(value, str) else 'an empty list'}")
    if not isinstance(value, (list, dict)):
        raise BadPair(f"{name} must be a string or a list of messages, got {json_type(value)}")
    return _turns(value, name)


def _side(obj: dict, keys: dict[str, str], name: str) -> str | list[dict]:
    """chosen or rejected in the row's own shape: a non-blank string, or the assistant's message(s)."""
    value = _shaped(obj, keys, name, f"missing {name}")
    if isinstance(value, str):
        return value
    roles = [m["role"] for m in value]
    listed = ", ".join(roles)
    if roles[-1] != "assistant":
        raise BadPair(f"{name} is not an assistant message: {name} ends with {_a(roles[-1])} message (roles: {listed})")
    other = next((r for r in roles if r != "assistant"), "")
    if other:  # TRL would train on it as the model's own words
        raise BadPair(f"{name} is not an assistant message: {name} holds {_a(other)} turn (roles: {listed}); "
                      "beside a prompt, chosen and rejected hold the reply alone (without a prompt field, "
                      "the turns both share are the prompt)")
    if not value[-1]["content"].strip():
        raise BadPair(f"missing {name}: {name} ends with an empty assistant message")
    return value


def _check_prompt(prompt: list[dict]) -> None:
    roles = [m["role"] for m in prompt]
    users = [m for m in prompt if m["role"] == "user"]
    if not users:
        raise BadPair(f"empty prompt: no user message (roles: {', '.join(roles)})")
    if not any(m["content"].strip() for m in users):
        raise BadPair("empty prompt: its user messages are empty")
    if roles[-1] != "user":
        why = "the reply belongs in chosen/rejected" if roles[-1] == "assistant" else "it must end with the user's turn"
        raise BadPair(f"prompt ends with {_a(roles[-1])} message; {why}")


# ---------------------------------------------------------------------------------------- rows


def _explicit(obj: dict, keys: dict[str, str]) -> tuple[list[dict], str | list[dict], str | list[dict], str | list[dict]]:
    """(prompt messages, prompt, chosen, rejected as given) of a row that has its prompt."""
    given = _shaped(obj, keys, "prompt", "empty prompt")
    prompt = [{"role": "user", "content": given}] if isinstance(given, str) else given
    _check_prompt(prompt)
    chosen, rejected = _side(obj, keys, "chosen"), _side(obj, keys, "rejected")
    if isinstance(chosen, str) != isinstance(rejected, str):  # TRL tokenizes prompt + side: one would fail
        shape = {True: "a string", False: "a message list"}
        raise BadPair(f"chosen is {shape[isinstance(chosen, str)]} but rejected is {shape[isinstance(rejected, str)]}; "
                      "give both the same shape")
    return prompt, given, chosen, rejected


def _split_shared(chosen: list[dict], rejected: list[dict], allow_same: bool = False) -> tuple[list[dict], str, str]:
    """(shared prompt, chosen reply, rejected reply) of two conversations that differ only in their last turn."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == len(chosen) == len(rejected):
        if not allow_same:
            raise BadPair("chosen is identical to rejected")
        k -= 1  # the same conversation twice: all but its last turn is the prompt
    if len(chosen) - k != 1 or len(rejected) - k != 1:
        raise BadPair(f"prefixes differ: the conversations part at turn {k + 1}, before their last reply")
    if k == 0:
        raise BadPair("empty prompt: the two conversations share no beginning")
    for side, last in (("chosen", chosen[-1]), ("rejected", rejected[-1])):
        if last["role"] != "assistant":
            raise BadPair(f"{side} is not an assistant message: {side} ends with {_a(last['role'])} message")
    return chosen[:k], chosen[-1]["content"], rejected[-1]["content"]


def _conversation(obj: dict, keys: dict[str, str], name: str) -> list[dict]:
    value = _field(obj, keys, name)
    if not value:
        raise BadPair(f"missing {name}: field {keys[name]!r} is an empty list")
    return _turns(value, name)


def _hh_turns(text: Any, side: str) -> list[dict]:
    if not isinstance(text, str):
        raise BadPair(f"{side} is not an HH transcript string, got {json_type(text)}")
    text = "\n\n" + text.lstrip("\n")
    marks = list(_HH_TURN.finditer(text))
    if not marks or marks[0].start() != 0:
        raise BadPair(f"{side} does not start with '\\n\\nHuman:'")
    return [{"role": "user" if m.group(1) == "Human" else "assistant",
             "content": text[m.end(): nxt.start() if nxt else len(text)].strip()}
            for m, nxt in zip(marks, marks[1:] + [None])]


def _prompt_free(obj: dict, keys: dict[str, str], fmt: str, allow_same: bool) -> tuple[list[dict], str, str]:
    """(prompt, chosen, rejected) of HH transcripts or two whole conversations: the shared turns are the prompt."""
    if fmt == "hh":
        chosen, rejected = (_hh_turns(_field(obj, keys, side), side) for side in ("chosen", "rejected"))
    else:
        chosen, rejected = (_conversation(obj, keys, side) for side in ("chosen", "rejected"))
    prompt, chosen_reply, rejected_reply = _split_shared(chosen, rejected, allow_same)
    _check_prompt(prompt)
    return prompt, chosen_reply, rejected_reply


def _same(chosen: str | list[dict], rejected: str | list[dict]) -> bool:
    if isinstance(chosen, str) or isinstance(rejected, str):
        return isinstance(chosen, str) and isinstance(rejected, str) and chosen.strip() == rejected.strip()
    return [(m["role"], m["content"].strip()) for m in chosen] == [(m["role"], m["content"].strip()) for m in rejected]


def _text(side: str | list[dict]) -> str:
    return side if isinstance(side, str) else "\n\n".join(m["content"] for m in side)


def parse_row(obj: dict, fmt: str | None = None, *, columns: Columns | None = None, allow_same: bool = False) -> Row:
    """The one verdict on a preference row, for the DPO trainer and `data check` alike: a `Row`, or
    `BadPair` saying why not. `columns` names the prompt/chosen/rejected columns; with `allow_same`,
    identical replies pass (`data check` counts them rather than failing)."""
    keys = _keys(obj, columns)
    fmt = fmt or detect(obj, columns)
    prompt_free = keys["prompt"] not in obj and all(isinstance(obj.get(keys[s]), list) for s in ("chosen", "rejected"))
    if fmt == "hh" or (fmt == "trl" and prompt_free):
        prompt, chosen, rejected = _prompt_free(obj, keys, fmt, allow_same)
        given: tuple = (prompt, chosen, rejected)
    else:
        prompt, *given = _explicit(obj, keys)
    prompt = with_system(prompt, obj)
    given = (prompt if isinstance(given[0], list) else given[0], *given[1:])
    for side, value in (("chosen", given[1]), ("rejected", given[2])):
        if not _text(value).strip():
            raise BadPair(f"missing {side}: its reply is empty")
    if not allow_same and _same(given[1], given[2]):
        raise BadPair("chosen is identical to rejected")
    several = any(isinstance(side, list) and len(side) > 1 for side in given[1:])
    return Row(prompt, _text(given[1]), _text(given[2]), fmt, given, (given[1], given[2]) if several else None)


def scan_pairs(path: str | Path, fmt: str | None = None, *, columns: Columns | None = None,
               container: str = "auto") -> PairsRead:
    """Every row of a preference file in any container the data layer reads (`toolkit.data.sources`),
    columns named by `columns`, as pairs or bad rows; raises nothing for bad rows (`data check` counts them)."""
    path = Path(path)
    container = detect_container(path) if container == "auto" else container
    result = PairsRead(path)
    for line, obj in iter_rows(path, container):
        try:
            row = parse_row(obj, fmt, columns=columns)
        except BadPair as why:
            result.bad.append(BadRow(path, line, str(why)))
            continue
        result.pairs.append(Pair(record_id(obj, path, line), row.prompt, row.chosen, row.rejected, line, row.format, row.replies))
        result.formats[row.format] += 1
    return result


def read_pairs(path: str | Path, skip_bad: bool = False, fmt: str | None = None, *,
               columns: Columns | None = None, container: str = "auto") -> PairsRead:
    """Every pair of a preference file (see `scan_pairs`). Bad rows: a DataError listing the first
    few, or with `skip_bad` skipped and counted in `.bad`."""
    result = scan_pairs(path, fmt, columns=columns, container=container)
    if result.bad and not skip_bad:
        shown = "; ".join(str(b) for b in result.bad[:SHOWN_BAD])
        more = f" (and {len(result.bad) - SHOWN_BAD} more)" if len(result.bad) > SHOWN_BAD else ""
        raise DataError(f"{len(result.bad)} bad preference rows: {shown}{more}", path=None,
                        fix="fix those rows, or pass --skip-bad to skip and count them")
    if not result.pairs:
        raise DataError("no usable preference pairs", path=result.path, fix=FIX)
    return result


__all__ = ["Pair", "Row", "BadRow", "BadPair", "PairsRead", "read_pairs", "scan_pairs", "parse_row", "detect", "FORMATS", "FIX"]

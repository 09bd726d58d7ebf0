"""Preference pairs from any of the formats people ship them in, normalised to one shape.

Formats (judged per record): TRL's `prompt`/`chosen`/`rejected` as strings or message lists (system
and multi-turn prompts included; without `prompt`, the shared beginning of the two conversations is
the prompt), LLaMA-Factory's ShareGPT preference form (`conversations` + `chosen`/`rejected`
objects), and Anthropic HH rows whose `chosen`/`rejected` are whole `\\n\\nHuman: .. \\n\\nAssistant: ..`
transcripts, split after the longest shared run of turns.

Every pair becomes a `Pair`: the prompt as chat messages ending with a user turn, and the two
replies as plain text. A row that cannot be a pair (a side missing, an empty prompt, the two sides
identical, a side that is not an assistant message, HH transcripts that differ before their last
reply) is a `BadRow` naming file and line; `read_pairs` stops on them with the first few listed,
or skips and counts them with `skip_bad`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.data.columns import Columns
from toolkit.data.records import SPEAKERS as CHAT_SPEAKERS
from toolkit.data.records import record_id
from toolkit.data.sources import detect_container, iter_rows
from toolkit.errors import DataError

FORMATS = ("trl", "sharegpt", "hh")
SHOWN_BAD = 5  # bad rows listed in the error before training
# ShareGPT speaker names (LLaMA-Factory's defaults and the common variants) -> chat roles
# a preference pair is plain turns: the tool-call speakers chat data may have are not taken
SPEAKERS = {name: role for name, role in CHAT_SPEAKERS.items() if name not in ("observation", "tool", "function_call")}
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
FIX = ("each row needs a prompt and two different assistant replies: prompt/chosen/rejected (strings or messages), "
       "ShareGPT conversations + chosen/rejected, or HH chosen/rejected transcripts")


@dataclass
class Pair:
    """One preference pair: `prompt` is chat messages ending with a user turn."""

    id: str
    prompt: list[dict]
    chosen: str
    rejected: str
    line: int
    format: str

    @property
    def turns(self) -> int:
        return sum(m["role"] == "user" for m in self.prompt)

    def to_trl(self, system: str = "") -> dict:
        """TRL's conversational form (what DPOTrainer tokenizes with the chat template)."""
        prompt = self.prompt
        if system and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system}] + prompt
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


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
    """A row that is not a usable pair (turned into a BadRow with its line, or a reader's DataError)."""


def detect(obj: dict) -> str:
    """The format of one record: trl, sharegpt or hh."""
    if "conversations" in obj:
        return "sharegpt"
    if "prompt" not in obj and isinstance(obj.get("chosen"), str) and _HH_TURN.search("\n\n" + obj["chosen"].lstrip("\n")):
        return "hh"
    return "trl"


def _text(value: Any, side: str) -> str:
    """One reply: a string, an assistant message, or a message list ending with one (only assistant turns)."""
    if value is None:
        raise BadPair(f"missing {side}")
    if isinstance(value, str):
        return value
    messages = [value] if isinstance(value, dict) else value
    if not isinstance(messages, list) or not messages:
        raise BadPair(f"{side} is not a string or assistant message")
    roles = [_role(m, side) for m in messages]
    if any(r != "assistant" for r in roles):
        raise BadPair(f"{side} is not an assistant message (roles: {', '.join(roles)})")
    return "".join(_content(m) for m in messages)


def _role(m: Any, where: str) -> str:
    if not isinstance(m, dict):
        raise BadPair(f"{where} holds a {type(m).__name__}, not a message")
    raw = m.get("role", m.get("from"))
    role = SPEAKERS.get(str(raw).lower()) if raw is not None else None
    if role is None:
        raise BadPair(f"{where} has a message with role {raw!r}")
    return role


def _content(m: dict) -> str:
    value = m.get("content", m.get("value"))
    return value if isinstance(value, str) else ""


def _messages(value: Any, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadPair(f"{where} is not a string or a list of messages")
    return [{"role": _role(m, where), "content": _content(m)} for m in value]


def _check_prompt(prompt: list[dict]) -> list[dict]:
    if not prompt or not any(m["content"].strip() for m in prompt if m["role"] == "user"):
        raise BadPair("empty prompt")
    if prompt[-1]["role"] != "user":
        raise BadPair(f"prompt ends with a {prompt[-1]['role']} message, not the user's")
    return prompt


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
        raise BadPair("empty prompt (the two conversations share no beginning)")
    for side, last in (("chosen", chosen[-1]), ("rejected", rejected[-1])):
        if last["role"] != "assistant":
            raise BadPair(f"{side} is not an assistant message (its last turn is {last['role']})")
    return chosen[:k], chosen[-1]["content"], rejected[-1]["content"]


def _hh_turns(text: Any, side: str) -> list[dict]:
    if not isinstance(text, str):
        raise BadPair(f"missing {side}" if text is None else f"{side} is not an HH transcript string")
    text = "\n\n" + text.lstrip("\n")
    marks = list(_HH_TURN.finditer(text))
    if not marks or marks[0].start() != 0:
        raise BadPair(f"{side} does not start with '\\n\\nHuman:'")
    return [{"role": "user" if m.group(1) == "Human" else "assistant",
             "content": text[m.end(): nxt.start() if nxt else len(text)].strip()}
            for m, nxt in zip(marks, marks[1:] + [None])]


def _pair_of(obj: dict, fmt: str, allow_same: bool) -> tuple[list[dict], str, str]:
    if fmt == "hh":
        return _split_shared(_hh_turns(obj.get("chosen"), "chosen"), _hh_turns(obj.get("rejected"), "rejected"), allow_same)
    if fmt == "sharegpt":
        prompt = _messages(obj["conversations"], "conversations")
        if isinstance(obj.get("system"), str) and obj["system"].strip() and prompt and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": obj["system"]}] + prompt
        return prompt, _text(obj.get("chosen"), "chosen"), _text(obj.get("rejected"), "rejected")
    if "prompt" not in obj and isinstance(obj.get("chosen"), list) and isinstance(obj.get("rejected"), list):
        return _split_shared(_messages(obj["chosen"], "chosen"), _messages(obj["rejected"], "rejected"),  # implicit prompt
                             allow_same)
    if "prompt" not in obj:
        raise BadPair("missing prompt")
    return _messages(obj["prompt"], "prompt"), _text(obj.get("chosen"), "chosen"), _text(obj.get("rejected"), "rejected")


def parse_row(obj: dict, fmt: str | None = None, *, allow_same: bool = False) -> tuple[list[dict], str, str, str]:
    """(prompt messages, chosen text, rejected text, format) of one record, or `BadPair`. With
    `allow_same`, identical replies pass (`data check` counts them rather than failing)."""
    fmt = fmt or detect(obj)
    prompt, chosen, rejected = _pair_of(obj, fmt, allow_same)
    prompt = _check_prompt(prompt)
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise BadPair(f"missing {side} (empty reply)")
    if chosen.strip() == rejected.strip() and not allow_same:
        raise BadPair("chosen is identical to rejected")
    return prompt, chosen, rejected, fmt


def canonical(obj: dict, columns: Columns | None) -> dict:
    """The row with `--prompt-col`/`--chosen-col`/`--rejected-col` columns under their canonical names
    (ShareGPT's `conversations` stays where it is: it is a format of its own, not a renamed prompt)."""
    if columns is None:
        return obj
    renamed = {}
    for name in ("prompt", "chosen", "rejected"):
        key = columns.find(name, obj)
        if key is not None and key != name and key != "conversations":
            renamed[name] = obj[key]
    return {**obj, **renamed} if renamed else obj


def scan_pairs(path: str | Path, fmt: str | None = None, *, columns: Columns | None = None,
               container: str = "auto") -> PairsRead:
    """Every row of a preference file in any container the data layer reads (`toolkit.data.sources`),
    columns named by `columns`, as pairs or bad rows; raises nothing for bad rows (`data check` counts them)."""
    path = Path(path)
    container = detect_container(path) if container == "auto" else container
    result = PairsRead(path)
    for line, obj in iter_rows(path, container):
        row = canonical(obj, columns)
        try:
            prompt, chosen, rejected, found = parse_row(row, fmt)
        except BadPair as why:
            result.bad.append(BadRow(path, line, str(why)))
            continue
        result.pairs.append(Pair(record_id(row, path, line), prompt, chosen, rejected, line, found))
        result.formats[found] += 1
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


__all__ = ["Pair", "BadRow", "BadPair", "PairsRead", "read_pairs", "scan_pairs", "parse_row", "canonical", "detect", "FORMATS"]

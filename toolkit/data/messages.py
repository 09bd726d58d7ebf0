"""Chat and preference records: message lists checked turn by turn, in OpenAI or ShareGPT form.

Chat records hold `messages` (`[{role, content}, ...]`), or LLaMA-Factory's ShareGPT form:
`conversations` of `{from, value}` turns (`human`, `gpt`, `system`, `observation`,
`function_call`) with an optional `system` field. Preference records hold `prompt`, `chosen` and
`rejected`, each a string or a message list; LLaMA-Factory's ShareGPT preference form
(`conversations` + `chosen`/`rejected` message objects) reads as the same thing, and rows without
a prompt (Anthropic HH transcripts, two whole conversations) are split at what the two share. Every
preference row is judged by `toolkit.data.preference.parse_row`, the DPO trainer's own validator,
so `data check` and training accept and reject the same rows with the same reason. Field names
follow `--prompt-col`/`--chosen-col`/`--rejected-col` (`toolkit.data.columns`).

A bad record is a `DataError` naming file and line; each file's bad records are collected and
reported together (`toolkit.data.records.Problems`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.data.columns import Columns
from toolkit.data.preference import FIX as PAIR_FIX
from toolkit.data.preference import BadPair, parse_row
from toolkit.data.records import ROLES, SPEAKERS, ChatRecord, PreferenceRecord, found_fields, json_type, record_id, with_system
from toolkit.data.sources import detect_container, parse_rows
from toolkit.errors import DataError

__all__ = ["read_chat", "read_preference", "text_of", "check_messages", "SPEAKERS"]

_MESSAGES_FIX = 'messages are [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'


def _check_message(m: Any, at: str, path: Path, line: int, fix: str) -> None:
    if not isinstance(m, dict):
        raise DataError(f"{at} must be an object with role and content, got {json_type(m)}", path=path, line=line, fix=fix)
    if "role" not in m:
        raise DataError(f"{at} has no 'role' ({found_fields(m)})", path=path, line=line, fix=fix)
    role = m["role"]
    if role not in ROLES:
        raise DataError(f"{at} has role {role!r}; expected one of {', '.join(ROLES)}", path=path, line=line, fix=fix)
    content = m.get("content")
    if content is None and not (role in ("assistant", "tool") and ("tool_calls" in m or role == "tool")):
        raise DataError(f"{at} ({role}) has no 'content' ({found_fields(m)})", path=path, line=line, fix=fix)
    if content is not None and not isinstance(content, str):
        raise DataError(f"{at} ({role}) content must be a string, got {json_type(content)}", path=path, line=line, fix=fix)


def check_messages(messages: Any, path: Path, line: int, where: str, *, final_assistant: bool, need_user: bool = True) -> list[dict]:
    """`messages` once every turn is checked: roles, contents, a user turn, and (for training) a final reply."""
    fix = _MESSAGES_FIX
    if not isinstance(messages, list):
        raise DataError(f"{where} must be a list of messages, got {json_type(messages)}", path=path, line=line, fix=fix)
    if not messages:
        raise DataError(f"{where} is an empty list", path=path, line=line, fix=fix)
    for i, m in enumerate(messages, 1):
        _check_message(m, f"{where} message {i} of {len(messages)}", path, line, fix)
    roles = [m["role"] for m in messages]
    if need_user and "user" not in roles:
        raise DataError(f"{where} has no user message (roles: {', '.join(roles)})", path=path, line=line, fix=fix)
    if final_assistant:
        if roles[-1] != "assistant":
            raise DataError(f"{where} ends with a {roles[-1]} message; training data must end with the assistant's reply",
                            path=path, line=line, fix="drop trailing turns or add the assistant's answer")
        if not (messages[-1].get("content") or "").strip():
            raise DataError(f"{where} ends with an empty assistant message", path=path, line=line, fix="give the final reply text")
    return messages


# ------------------------------------------------------------------------------------ ShareGPT


def _is_sharegpt_turn(m: Any) -> bool:
    return isinstance(m, dict) and "from" in m and "role" not in m


def _from_sharegpt(value: Any, where: str, path: Path, line: int) -> Any:
    """ShareGPT turns (`{from, value}`) as `{role, content}` messages; anything else is returned as it is."""
    if _is_sharegpt_turn(value):
        value = [value]
    if not (isinstance(value, list) and value and any(_is_sharegpt_turn(m) for m in value)):
        return value
    out = []
    for i, m in enumerate(value, 1):
        if not _is_sharegpt_turn(m):
            out.append(m)
            continue
        role = SPEAKERS.get(str(m["from"]).lower())
        if role is None:
            raise DataError(f"{where} message {i} of {len(value)} is from {m['from']!r}; expected one of "
                            f"{', '.join(SPEAKERS)}", path=path, line=line, fix="ShareGPT turns are {\"from\": \"human\"|\"gpt\"|..., \"value\": ...}")
        out.append({"role": role, "content": m.get("value")})
    return out


# ---------------------------------------------------------------------------------------- chat


def read_chat(path: Path, training: bool = True, *, container: str = "auto", option: str = "--format") -> Iterator[ChatRecord]:
    """Conversations from chat records (`messages`, or ShareGPT `conversations`); with `training`,
    each must end with the assistant. `option` is the command's kind option, named in hints."""
    path = Path(path)
    container = detect_container(path) if container == "auto" else container
    yield from parse_rows(path, container, lambda line, obj: ChatRecord(
        record_id(obj, path, line), _chat_messages(obj, path, line, training, option), line))


def _chat_messages(obj: dict, path: Path, line: int, training: bool, option: str) -> list[dict]:
    if "messages" in obj:
        return check_messages(obj["messages"], path, line, "messages", final_assistant=training)
    if "conversations" in obj:
        converted = with_system(_from_sharegpt(obj["conversations"], "conversations", path, line), obj)
        return check_messages(converted, path, line, "conversations", final_assistant=training)
    raise DataError(f"missing field 'messages' ({found_fields(obj)})", path=path, line=line,
                    fix='chat records are {"messages": [{"role": ..., "content": ...}, ...]} or ShareGPT "conversations"; '
                        f"for other data pass {option} (arxiv, papers, qa, preference, built)")


# ---------------------------------------------------------------------------------- preference


def read_preference(path: Path, *, columns: Columns | None = None, container: str = "auto") -> Iterator[PreferenceRecord]:
    """Preference pairs (`prompt`, `chosen`, `rejected`), each a plain string or a list of messages;
    LLaMA-Factory's ShareGPT form (`conversations` + `chosen`/`rejected` objects) reads the same.
    Each row is judged by the DPO trainer's own validator, so what passes here trains."""
    path = Path(path)
    columns = columns or Columns()
    container = detect_container(path) if container == "auto" else container
    yield from parse_rows(path, container, lambda line, obj: _preference_record(obj, columns, path, line))


def _preference_record(obj: dict, columns: Columns, path: Path, line: int) -> PreferenceRecord:
    """One row through `toolkit.data.preference.parse_row`, with its reason as a `DataError` naming
    file and line; identical replies pass (`data check` counts them, training stops on them)."""
    try:
        row = parse_row(obj, columns=columns, allow_same=True)
    except BadPair as why:
        raise DataError(str(why), path=path, line=line, fix=PAIR_FIX) from None
    prompt, chosen, rejected = row.given
    return PreferenceRecord(record_id(obj, path, line), prompt, chosen, rejected, line)


def text_of(value: str | list[dict], role: str) -> str:
    """A preference field's text: the string itself, or the last `role` message of a list."""
    if isinstance(value, str):
        return value
    for m in reversed(value):
        if m["role"] == role:
            return m.get("content") or ""
    return value[-1].get("content") or ""

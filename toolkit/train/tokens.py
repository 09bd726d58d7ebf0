"""Examples to token ids: `tokenize_example` turns an `Example` into `(input_ids, labels)` in the
model's chat template or the tagged `<problem>..</problem><approach>..</approach>` format; the loss
sees only the response and the end-of-turn token (masked by position, because this model's pad
token *is* its EOS). `load_rows` reads and tokenizes a whole data file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.chat.detect import match
from toolkit.chat.families import end_of_turn_tokens
from toolkit.data.readers import load_examples
from toolkit.errors import ConfigError, DataError, ModelError
from toolkit.train.config import TrainConfig

TAGS = ("<problem>", "</problem>", "<approach>", "</approach>")
IGNORE = -100  # label value the loss skips
# The tagged format as a chat template, so the same tokenization path serves both formats and the
# merged model (and its GGUF) prompts itself correctly: user -> <problem>..</problem>, the
# generation prompt opens <approach>, an assistant turn ends with </approach> and EOS.
TAGGED_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ '<problem>' + message['content'] + '</problem>\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<approach>' + message['content'] + '</approach>' + eos_token }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<approach>' }}{%- endif -%}"
)


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn: that of the chat family whose template the tokenizer
    carries (toolkit/chat/detect.py; EOS for the families that end turns with it, like Zephyr or
    Mistral), so the labels end with the token the exported Modelfile stops on. For a template of
    no known family: the first family end-of-turn token in the vocabulary (toolkit/chat/families.py),
    else EOS."""
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if template == TAGGED_TEMPLATE and tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id  # the tagged format ends a reply with </approach> and EOS
    family = template_end_of_turn(template, tokenizer.bos_token or "", tokenizer.eos_token or "") if template else None
    if family is not None and not family and tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id  # the family ends turns with EOS
    for token in (family or ()) + end_of_turn_tokens():
        if token in vocab:
            return vocab[token]
    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no EOS or end-of-turn token", fix="use a chat/instruct model")
    return tokenizer.eos_token_id


def adds_bos(tokenizer) -> bool:
    """Whether llama.cpp starts this model's prompts with BOS: `add_bos_token` of its
    tokenizer_config.json, which the GGUF converter copies (transformers' generic tokenizer class
    does not apply it itself), else whether the tokenizer adds BOS to a text."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    flag = _config_add_bos(str(getattr(tokenizer, "name_or_path", "") or ""))
    return flag if flag is not None else tokenizer("a")["input_ids"][:1] == [bos]


@functools.lru_cache(maxsize=16)
def _config_add_bos(folder: str) -> bool | None:
    import json

    try:
        flag = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8")).get("add_bos_token")
    except (OSError, ValueError):
        return None
    return flag if isinstance(flag, bool) else None


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A prompt's token ids exactly as llama.cpp will see them from the exported model: special
    tokens read as such, BOS first when the tokenizer adds it, never twice (as
    toolkit/runtime/tokenize.py does at inference)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return [bos, *ids] if adds_bos(tokenizer) and ids[:1] != [bos] else ids


@functools.lru_cache(maxsize=16)
def template_end_of_turn(template: str, bos: str, eos: str) -> tuple[str, ...] | None:
    """The end-of-turn tokens of the chat family that renders `template` exactly (empty: it ends
    turns with EOS), or None when no family does. Remembered: every example asks, and fitting a
    family runs the parity suite."""
    try:
        found, _ = match(template, bos=bos, eos=eos)
    except Exception:  # a template the suite cannot even render is of no known family
        return None
    return None if found is None else found.family.end_of_turn


def prepare_tokenizer(tokenizer, fmt: str) -> list[int]:
    """Set the tokenizer up for `fmt`; for `tagged`, add the tag tokens and the tagged chat template.

    Returns the ids of the tokens added to the vocabulary (empty when none were new).
    """
    if fmt == "chat":
        if not tokenizer.chat_template:
            raise ModelError("this model's tokenizer has no chat template", fix="use --format tagged, or an instruct model")
        return []
    if fmt != "tagged":
        raise ConfigError(f"unknown format {fmt!r}", fix="use chat or tagged")
    before = len(tokenizer)
    tokenizer.add_tokens(list(TAGS), special_tokens=True)
    tokenizer.chat_template = TAGGED_TEMPLATE
    return list(range(before, len(tokenizer)))


def messages_for(example, fmt: str, system: str = "") -> list[dict]:
    """The conversation to train on: [system] + user prompt + assistant response (or a chat example's turns)."""
    meta = getattr(example, "meta", None) or {}
    messages = meta.get("messages")
    if not (isinstance(messages, list) and messages and messages[-1].get("role") == "assistant"):
        messages = [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.response}]
    messages = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    if fmt == "chat" and system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    if fmt == "tagged":
        messages = [m for m in messages if m["role"] != "system"]  # the tagged format has no system turn
    return messages


def render(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """(prompt text up to the assistant's reply, full text) through the tokenizer's chat template."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ModelError("the chat template renders a reply that does not start with its generation prompt",
                         fix="use --format tagged, or a model whose template appends the reply")
    return prompt, full


def tokenize_example(tokenizer, example, fmt: str = "chat", max_length: int = 512, system: str = "") -> tuple[list[int], list[int]]:
    """`(input_ids, labels)` for one example: labels are -100 on the prompt, the reply's tokens and its
    end-of-turn token after it; anything the template adds after end-of-turn (a newline) is dropped.

    Prompt and reply are tokenized separately, exactly as at inference time, where the prompt is
    tokenized alone (BOS first when the tokenizer adds it: `prompt_ids`) and the model writes the rest. An example longer than `max_length` keeps its
    prompt and loses the end of its reply; one whose prompt alone fills `max_length` has no labels.
    """
    if fmt == "tagged" and TAGS[0] not in tokenizer.get_vocab():
        raise ModelError("the tokenizer has no tag tokens", fix="call prepare_tokenizer(tokenizer, 'tagged') first")
    prompt, full = render(tokenizer, messages_for(example, fmt, system))
    prompt_tokens = prompt_ids(tokenizer, prompt)
    reply_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    eot = end_of_turn_id(tokenizer)
    if eot in reply_ids:  # keep through the last end-of-turn token: it is what teaches the model to stop
        reply_ids = reply_ids[: len(reply_ids) - reply_ids[::-1].index(eot)]
    input_ids = (prompt_tokens + reply_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_tokens) + reply_ids)[:max_length]
    return input_ids, labels


@dataclass
class Tokenized:
    """A tokenized dataset and what was left out of it."""

    rows: list[dict]
    truncated: int = 0
    empty: int = 0
    too_long: int = 0

    @property
    def lengths(self) -> list[int]:
        return [len(r["input_ids"]) for r in self.rows]


def tokenize_dataset(tokenizer, examples: Sequence, cfg: TrainConfig, path: str | os.PathLike) -> Tokenized:
    """Tokenize `examples`; a DataError names the file when no row is usable."""
    from toolkit.console import track

    data = Tokenized([])
    eot = end_of_turn_id(tokenizer)
    # a bar only where tokenizing takes noticeable time (a Kaggle-sized split: minutes)
    for ex in track(examples, f"Tokenizing {Path(path).name}") if len(examples) > 5000 else examples:
        if not str(ex.response).strip():
            data.empty += 1
            continue
        input_ids, labels = tokenize_example(tokenizer, ex, cfg.format, cfg.max_length, cfg.system)
        if all(label == IGNORE for label in labels):
            data.too_long += 1
            continue
        data.truncated += labels[-1] != eot
        data.rows.append({"id": ex.id, "input_ids": input_ids, "labels": labels})
    if not data.rows:
        why = []
        if data.empty:
            why.append(f"{data.empty} with an empty response")
        if data.too_long:
            why.append(f"{data.too_long} whose prompt fills max_length={cfg.max_length}")
        raise DataError(f"no usable rows ({', '.join(why) or 'the file has no examples'})", path=path,
                        fix="each row needs a prompt and a non-empty response (built split: prompt/response; QA: question/answer)")
    return data


def load_rows(tokenizer, path: str | os.PathLike, cfg: TrainConfig, role: str = "train") -> Tokenized:
    if not Path(path).exists():
        fix = ("build the splits with `toolkit data build data/sample/abstracts.jsonl`, or pass --train-data FILE" if role == "train"
               else "pass --validation-data FILE, or --validation-data '' to train without validation")
        raise DataError(f"{role} file not found", path=path, fix=fix)
    return tokenize_dataset(tokenizer, load_examples(Path(path)), cfg, path)

"""Counting tokens for the build's length limits, with a cheap exact lower bound that skips most of the work.

`token_counter(tokenizer)` counts many texts at once with a model's `tokenizer.json` (or counts
words). Its `lower_bound(text)` is a number the token count can never be below: for a byte-level
BPE tokenizer with no normalizer (GPT-2, SmolLM2, Qwen, Llama-3 style), every whitespace-separated
word becomes at least one token of its own, because the pre-tokenizer never puts two words in one
piece and BPE never merges across pieces. So a response with at least `--min-approach-tokens`
words passes that limit without being tokenized, and the decision is exactly the one a full count
would give. Tokenizers this argument does not cover get no bound (0) and are always counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.errors import ModelError
from toolkit.models import resolve

__all__ = ["token_counter", "TokenCounter"]

_TOKENIZERS: dict[str, Any] = {}
# characters Python splits words on that a tokenizer's regex does not treat as whitespace
_NOT_REGEX_SPACE = re.compile("[\x1c-\x1f]")


class TokenCounter:
    """`counter(texts)` -> token counts; `counter.lower_bound(text)` -> a count it cannot be below (0: none known)."""

    def __init__(self, count: Callable[[list[str]], list[int]], words_bound: bool, vanishing: str = ""):
        self._count = count
        self.words_bound = words_bound
        # a text with one of these characters gets no bound: see _words_are_a_bound
        self._unsafe = re.compile(f"[\x1c-\x1f{re.escape(vanishing)}]")

    def __call__(self, texts: list[str]) -> list[int]:
        return self._count(texts)

    def lower_bound(self, text: str) -> int:
        if not self.words_bound or self._unsafe.search(text):
            return 0
        return len(text.split())


def token_counter(tokenizer: str = "smollm2") -> TokenCounter:
    """A function counting tokens of many texts at once (no special tokens added).

    `tokenizer` is a model spec for `toolkit.models.resolve` (its `tokenizer.json` is used), a path
    to a `tokenizer.json`, or `words` for whitespace-separated words. Loaded tokenizers are cached
    per process.
    """
    if tokenizer == "words":
        return TokenCounter(lambda texts: [len(t.split()) for t in texts], True)
    entry = _TOKENIZERS.get(tokenizer)
    if entry is None:
        tok = _load_tokenizer(tokenizer)
        entry = _TOKENIZERS[tokenizer] = (tok, *_words_are_a_bound(tok))
    tok, bound, vanishing = entry
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # the same ids, without offsets

    def count(texts: list[str], batch: int = 4096) -> list[int]:
        counts: list[int] = []
        for i in range(0, len(texts), batch):
            counts.extend(len(e.ids) for e in encode(texts[i : i + batch], add_special_tokens=False))
        return counts

    return TokenCounter(count, bound, vanishing)


def _words_are_a_bound(tok: Any) -> tuple[bool, str]:
    """Whether every whitespace-separated word is at least one token of its own (see the module doc),
    and the ASCII characters that are not in the vocabulary (a word of only those would vanish)."""
    try:
        config = json.loads(tok.to_str())
    except (ValueError, AttributeError):
        return False, ""
    if config.get("normalizer") is not None:
        return False, ""
    if any(any(c.isspace() for c in t.get("content", "")) for t in config.get("added_tokens") or []):
        return False, ""
    pre = config.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel" and p.get("use_regex", True)]
    vocab = (config.get("model") or {}).get("vocab")
    if not byte_level or any(p.get("type") not in ("ByteLevel", "Digits") for p in parts) or not isinstance(vocab, dict):
        return False, ""
    # a multi-byte character always keeps a token (every continuation byte is in a byte-level
    # vocabulary); an ASCII byte missing from the vocabulary is dropped
    missing = "".join(chr(b) for b, c in enumerate(_byte_chars()) if b < 0x80 and c not in vocab)
    if any(c not in vocab for b, c in enumerate(_byte_chars()) if 0x80 <= b < 0xC0):
        return False, ""
    return True, missing


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map, indexed by byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _load_tokenizer(tokenizer: str) -> Any:
    from tokenizers import Tokenizer

    given = Path(tokenizer).expanduser()
    if given.is_file() and given.suffix == ".json":
        file = given
    else:
        file = resolve(tokenizer).require_hf() / "tokenizer.json"
    if not file.is_file():
        raise ModelError(f"{file} not found: cannot count tokens for {tokenizer!r}",
                         fix="pass a model that has tokenizer.json, or --tokenizer words")
    tok = Tokenizer.from_file(str(file))
    tok.no_truncation()
    tok.no_padding()
    return tok

"""Lexing a Go text/template: text and `{{ action }}` items, with `{{-`/`-}}` trimming applied,
comments dropped, and each action split into tokens (Go's literals, fields, variables, words)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from toolkit.chat.gotemplate.errors import TemplateError

_SPACE = " \t\r\n"


@dataclass
class Tok:
    kind: str  # space field dot var ident string number bool nil | ( ) , := =
    value: Any = None


def _right_trim_at(src: str, i: int) -> bool:
    """A " -}}" closing delimiter starts at i."""
    return i + 1 < len(src) and src[i] in _SPACE and src[i + 1] == "-" and src.startswith("}}", i + 2)


def lex(src: str) -> list[tuple]:
    """Split into ("text", str) and ("action", [Tok], line) items, applying trim markers."""
    items: list[tuple] = []
    pos, trim_next = 0, False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            if text:
                items.append(("text", text))
            return items
        inner = start + 2
        if src[inner: inner + 1] == "-" and src[inner + 1: inner + 2] in tuple(_SPACE):
            text = text.rstrip(_SPACE)
            inner += 2
        if text:
            items.append(("text", text))
        line = src.count("\n", 0, start) + 1
        if src.startswith("/*", inner):
            pos, trim_next = _lex_comment(src, inner, line)
            continue
        toks, pos, trim_next = _lex_action(src, inner, line)
        items.append(("action", toks, line))


def _lex_comment(src: str, i: int, line: int) -> tuple[int, bool]:
    end = src.find("*/", i + 2)
    if end < 0:
        raise TemplateError("unclosed comment", line=line)
    end += 2
    if src.startswith("}}", end):
        return end + 2, False
    if _right_trim_at(src, end):
        return end + 4, True
    raise TemplateError("comment ends before closing delimiter", line=line)


_NUMBER = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|"
                     r"(?:[0-9][0-9_]*)?\.?[0-9_]*(?:[eE][+-]?[0-9_]+)?)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", '"': '"', "'": "'"}


def _lex_action(src: str, i: int, line: int) -> tuple[list[Tok], int, bool]:
    toks: list[Tok] = []
    n = len(src)
    while True:
        if src.startswith("}}", i):
            return toks, i + 2, False
        if _right_trim_at(src, i):
            return toks, i + 4, True
        if i >= n:
            raise TemplateError("unclosed action", line=line)
        ch = src[i]
        if ch in _SPACE:
            j = i
            while j < n and src[j] in _SPACE and not _right_trim_at(src, j):
                j += 1
            if j > i:
                toks.append(Tok("space"))
            i = j
        elif ch in "|(),":
            toks.append(Tok(ch))
            i += 1
        elif src.startswith(":=", i):
            toks.append(Tok(":="))
            i += 2
        elif ch == "=":
            toks.append(Tok("="))
            i += 1
        elif ch == '"':
            value, i = _lex_quoted(src, i, line)
            toks.append(Tok("string", value))
        elif ch == "`":
            end = src.find("`", i + 1)
            if end < 0:
                raise TemplateError("unterminated raw quoted string", line=line)
            toks.append(Tok("string", src[i + 1: end]))
            i = end + 1
        elif ch == "'":
            value, i = _lex_char(src, i, line)
            toks.append(Tok("number", value))
        elif ch == "$":
            m = re.compile(r"[A-Za-z0-9_]*").match(src, i + 1)
            toks.append(Tok("var", "$" + m.group(0)))
            i = m.end()
        elif ch == "." and i + 1 < n and (src[i + 1].isalpha() or src[i + 1] == "_"):
            m = _IDENT.match(src, i + 1)
            toks.append(Tok("field", m.group(0)))
            i = m.end()
        elif ch == "." and not (i + 1 < n and src[i + 1].isdigit()):
            toks.append(Tok("dot"))
            i += 1
        elif ch.isdigit() or ch in "+-.":
            value, i = _lex_number(src, i, line)
            toks.append(Tok("number", value))
        elif ch.isalpha() or ch == "_":
            m = _IDENT.match(src, i)
            word = m.group(0)
            kind = "bool" if word in ("true", "false") else "nil" if word == "nil" else "ident"
            toks.append(Tok(kind, word == "true" if kind == "bool" else word))
            i = m.end()
        else:
            raise TemplateError(f"unexpected {ch!r} in action", line=line)


def _lex_quoted(src: str, i: int, line: int) -> tuple[str, int]:
    """A Go interpreted string literal starting at src[i] == '"'."""
    out, i = [], i + 1
    while i < len(src):
        ch = src[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\n":
            break
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = src[i + 1: i + 2]
        if esc in _ESCAPES and esc != "'":
            out.append(_ESCAPES[esc])
            i += 2
        elif esc in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits = src[i + 2: i + 2 + width]
            if not re.fullmatch(f"[0-9a-fA-F]{{{width}}}", digits):
                raise TemplateError("invalid escape in quoted string", line=line)
            out.append(chr(int(digits, 16)))  # \x yields a byte in Go; fine for ASCII
            i += 2 + width
        elif re.fullmatch(r"[0-7]{3}", src[i + 1: i + 4]):
            out.append(chr(int(src[i + 1: i + 4], 8)))
            i += 4
        else:
            raise TemplateError(f"unknown escape \\{esc} in quoted string", line=line)
    raise TemplateError("unterminated quoted string", line=line)


def _lex_char(src: str, i: int, line: int) -> tuple[int, int]:
    m = re.compile(r"'(\\.[^']*|[^'\\])'").match(src, i)
    if not m:
        raise TemplateError("bad character constant", line=line)
    body = m.group(1)
    if body.startswith("\\"):
        body, _ = _lex_quoted('"' + body + '"', 0, line)
    return ord(body[0]), m.end()


def _lex_number(src: str, i: int, line: int) -> tuple[int | float, int]:
    """A Go number literal: ints (decimal, 0x, 0o, 0b, legacy octal) stay ints, else float."""
    m = _NUMBER.match(src, i)
    text = m.group(0) if m else ""
    body = text.lstrip("+-").replace("_", "")
    if not any(c.isdigit() for c in body):
        raise TemplateError(f"bad number syntax: {src[i:i + 10]!r}", line=line)
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+", body):
            value: int | float = int(body, 0)
        elif re.fullmatch(r"0[0-7]+", body):
            value = int(body, 8)
        elif body.isdigit():
            value = int(body)
        else:
            value = float(body)
    except ValueError:
        raise TemplateError(f"bad number syntax: {text!r}", line=line) from None
    return (-value if text.startswith("-") else value), m.end()

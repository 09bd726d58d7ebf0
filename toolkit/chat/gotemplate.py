"""A small Go text/template evaluator that renders Ollama chat templates exactly as Ollama does.

Go side: actions, `{{-`/`-}}` trimming, comments, if/else if/else, range (with `$i, $m :=` and
else), with, break/continue, variables (`$`, `:=`, `=`), pipelines, parenthesised pipelines, and
the builtins eq ne lt le gt ge and or not len index slice print printf println, plus Ollama's
`json`, `currentDate` and `yesterdayDate`. Not supported: define/template/block, method calls,
html/js/urlquery/call and `toTypeScriptType` (they raise TemplateUnsupported).

Ollama side (`template.Template.Execute`): a template that mentions `.Messages` runs once with the
system messages joined by "\\n\\n" into `.System` and consecutive same-role messages merged
(except tool); any other template runs once per system/user/assistant turn with `.System`,
`.Prompt` and `.Response`, and for the last turn everything after `{{ .Response }}` is cut.
A template mentioning neither `.Messages` nor `.Response` gets `{{ .Response }}` appended.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from toolkit.errors import ConfigError

# ChatML, as Ollama ships it (template/chatml.gotmpl + chatml.json); SmolLM2 uses it.
CHATML_TEMPLATE = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
                   "{{ end }}<|im_start|>assistant\n")
CHATML_STOPS = ["<|im_start|>", "<|im_end|>"]
# SmolLM2's HF template adds this system turn when the first message is not a system message.
# Ollama gets the same prompt from the ChatML template plus `SYSTEM <this>` in the Modelfile,
# because Ollama inserts the Modelfile SYSTEM exactly when a request has no system message.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

LLAMA3_TEMPLATE = ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
                   "{{ .Content }}<|eot_id|>\n{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
LLAMA3_STOPS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
PHI3_TEMPLATE = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"
PHI3_STOPS = ["<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


class TemplateError(ConfigError):
    """A Go template that does not parse or cannot be executed."""

    def __init__(self, message: str, *, line: int | None = None, fix: str | None = None):
        self.line = line
        self.detail = message  # without the line prefix
        super().__init__(f"line {line}: {message}" if line else message, fix=fix)


class TemplateUnsupported(TemplateError):
    """Valid Go template syntax that this evaluator does not implement."""


# ----------------------------------------------------------------------------------------------
# Lexer
# ----------------------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_KEYWORDS = {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"}


@dataclass
class Tok:
    kind: str  # space field dot var ident string number bool nil | ( ) , := =
    value: Any = None


def _right_trim_at(src: str, i: int) -> bool:
    """A " -}}" closing delimiter starts at i."""
    return i + 1 < len(src) and src[i] in _SPACE and src[i + 1] == "-" and src.startswith("}}", i + 2)


def _lex(src: str) -> list[tuple]:
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


# ----------------------------------------------------------------------------------------------
# Parse tree
# ----------------------------------------------------------------------------------------------

@dataclass
class Field:
    idents: tuple[str, ...]


@dataclass
class Var:
    name: str
    idents: tuple[str, ...] = ()


@dataclass
class Dot:
    pass


@dataclass
class Func:
    name: str


@dataclass
class Lit:
    value: Any
    is_nil: bool = False


@dataclass
class Pipe:
    decl: list[str]
    assign: bool
    cmds: list[list[Any]]
    line: int = 0


@dataclass
class SubPipe:
    pipe: Pipe


@dataclass
class Chain:
    node: Any
    idents: tuple[str, ...]


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipe: Pipe


@dataclass
class Branch:
    kind: str  # if | range | with
    pipe: Pipe
    body: list
    else_: list | None


@dataclass
class Break:
    pass


@dataclass
class Continue:
    pass


# Functions a Go template may call here: Go's builtins plus Ollama's additions.
BUILTINS = {"and", "or", "not", "len", "index", "slice", "print", "printf", "println", "eq", "ne",
            "lt", "le", "gt", "ge", "html", "js", "urlquery", "call", "json", "currentDate",
            "yesterdayDate", "toTypeScriptType"}


class _Cursor:
    """Tokens of one action, with space-aware peeking."""

    def __init__(self, toks: list[Tok], line: int):
        self.toks, self.i, self.line = toks, 0, line

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self) -> Tok | None:
        tok = self.peek()
        self.i += 1
        return tok

    def skip_space(self) -> None:
        while self.peek() is not None and self.peek().kind == "space":
            self.i += 1

    def error(self, message: str) -> TemplateError:
        return TemplateError(message, line=self.line)


class _Parser:
    def __init__(self, src: str):
        self.items = _lex(src)
        self.pos = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0

    def parse(self) -> list:
        nodes, end = self.parse_list()
        if end is not None:
            raise TemplateError(f"unexpected {{{{{end[0]}}}}}", line=end[1])
        return nodes

    def parse_list(self) -> tuple[list, tuple | None]:
        """Nodes up to {{end}}/{{else}} (returned as (keyword, line, cursor)) or EOF (None)."""
        nodes: list = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if item[0] == "text":
                nodes.append(Text(item[1]))
                continue
            cur = _Cursor(item[1], item[2])
            cur.skip_space()
            tok = cur.peek()
            word = tok.value if tok is not None and tok.kind == "ident" else None
            if word in ("end", "else"):
                cur.next()
                return nodes, (word, item[2], cur)
            if word in ("if", "range", "with"):
                cur.next()
                nodes.append(self.parse_branch(word, cur))
            elif word in ("break", "continue"):
                cur.next()
                cur.skip_space()
                if cur.peek() is not None:
                    raise cur.error(f"unexpected {cur.peek().kind} in {{{{{word}}}}}")
                if not self.range_depth:
                    raise cur.error(f"{{{{{word}}}}} outside {{{{range}}}}")
                nodes.append(Break() if word == "break" else Continue())
            elif word in ("define", "template", "block"):
                raise TemplateUnsupported(f"{{{{{word}}}}} is not supported by this renderer",
                                          line=item[2])
            else:
                nodes.append(Action(self.parse_pipe(cur, "command", allow_decl=True)))
        return nodes, None

    def parse_branch(self, kind: str, cur: _Cursor) -> Branch:
        """if/range/with from after the keyword through the matching {{end}}."""
        mark = len(self.vars)
        pipe = self.parse_pipe(cur, kind, allow_decl=True)
        self.range_depth += kind == "range"
        body, end = self.parse_list()
        self.range_depth -= kind == "range"
        else_ = None
        if end is None:
            raise TemplateError(f"unexpected EOF: {{{{{kind}}}}} has no {{{{end}}}}", line=cur.line)
        if end[0] == "else":
            else_, end = self.parse_else(kind, end)
        del self.vars[mark:]
        return Branch(kind, pipe, body, else_)

    def parse_else(self, kind: str, end: tuple) -> tuple[list, tuple]:
        cur: _Cursor = end[2]
        cur.skip_space()
        tok = cur.peek()
        if tok is not None and tok.kind == "ident" and tok.value in ("if", "with"):
            if tok.value != kind:
                raise cur.error(f"{{{{else {tok.value}}}}} inside {{{{{kind}}}}}")
            cur.next()
            # `else if` is a nested if that shares the outer {{end}}.
            return [self.parse_branch(kind, cur)], ("end", end[1], None)
        if tok is not None:
            raise cur.error(f"unexpected {tok.kind} after {{{{else}}}}")
        else_, last = self.parse_list()
        if last is None or last[0] != "end":
            raise TemplateError(f"expected {{{{end}}}} after {{{{else}}}} of {{{{{kind}}}}}", line=end[1])
        return else_, last

    def parse_pipe(self, cur: _Cursor, context: str, allow_decl: bool = False,
                   closing: str | None = None) -> Pipe:
        cur.skip_space()
        decl, assign = self.parse_decl(cur, context) if allow_decl else ([], False)
        cmds: list[list] = []
        while True:
            cur.skip_space()
            tok = cur.peek()
            if tok is None or tok.kind == closing:
                break
            cmds.append(self.parse_command(cur, closing))
            if cur.peek() is not None and cur.peek().kind == "|":
                cur.next()
                continue
        if not cmds:
            raise cur.error(f"missing value for {context}")
        for i, cmd in enumerate(cmds[1:], start=2):
            if isinstance(cmd[0], (Lit, Dot)):
                raise cur.error(f"non executable command in pipeline stage {i}")
        if not assign:
            self.vars.extend(decl)
        return Pipe(decl, assign, cmds, cur.line)

    def parse_decl(self, cur: _Cursor, context: str) -> tuple[list[str], bool]:
        """`$x :=`, `$x =` or (range only) `$i, $x :=` at the cursor, else nothing."""
        start = cur.i
        names: list[str] = []
        while True:
            tok = cur.peek()
            if tok is None or tok.kind != "var":
                break
            cur.next()
            cur.skip_space()
            op = cur.peek()
            if op is not None and op.kind in (":=", "="):
                cur.next()
                names.append(tok.value)
                if op.kind == "=" and any(name not in self.vars for name in names):
                    raise cur.error(f'undefined variable "{names[0]}"')
                if len(names) > 1 and context != "range":
                    raise cur.error("too many declarations in command")
                return names, op.kind == "="
            if op is not None and op.kind == "," and not names and context == "range":
                cur.next()
                cur.skip_space()
                names.append(tok.value)
                continue
            break
        cur.i = start
        return [], False

    def parse_command(self, cur: _Cursor, closing: str | None) -> list:
        args: list = []
        while True:
            cur.skip_space()
            tok = cur.peek()
            if tok is None or tok.kind in ("|", closing):
                break
            args.append(self.parse_operand(cur))
            after = cur.peek()
            if after is not None and after.kind not in ("space", "|", closing):
                raise cur.error(f"unexpected {after.kind} {after.value or ''} in operand".replace("  ", " "))
        if not args:
            raise cur.error("empty command")
        return args

    def parse_operand(self, cur: _Cursor) -> Any:
        node = self.parse_term(cur)
        fields = []
        while cur.peek() is not None and cur.peek().kind == "field":
            fields.append(cur.next().value)
        if not fields:
            return node
        if isinstance(node, Field):
            return Field(node.idents + tuple(fields))
        if isinstance(node, Var):
            return Var(node.name, node.idents + tuple(fields))
        if isinstance(node, (Lit, Func)):
            raise cur.error("unexpected . after term")
        return Chain(node, tuple(fields))

    def parse_term(self, cur: _Cursor) -> Any:
        tok = cur.next()
        kind = tok.kind
        if kind == "dot":
            return Dot()
        if kind == "field":
            return Field((tok.value,))
        if kind == "var":
            if tok.value not in self.vars:
                raise cur.error(f'undefined variable "{tok.value}"')
            return Var(tok.value)
        if kind in ("string", "number", "bool"):
            return Lit(tok.value)
        if kind == "nil":
            return Lit(None, is_nil=True)
        if kind == "(":
            pipe = self.parse_pipe(cur, "parenthesized pipeline", closing=")")
            if cur.next() is None:
                raise cur.error("unclosed left paren")
            return SubPipe(pipe)
        if kind == "ident":
            if tok.value in _KEYWORDS:
                raise cur.error(f"unexpected {{{{{tok.value}}}}} in command")
            if tok.value not in BUILTINS:
                raise cur.error(f'function "{tok.value}" not defined')
            return Func(tok.value)
        raise cur.error(f"unexpected {kind!r} in operand")


class Template:
    """A parsed Go template."""

    def __init__(self, source: str):
        self.source = source
        self.root: list = _Parser(source).parse()

    def identifiers(self) -> set[str]:
        """Lower-cased field and variable names, as Ollama's `Template.Vars` collects them."""
        names: set[str] = set()
        for node in _walk_nodes(self.root):
            if isinstance(node, Field):
                names.update(i.lower() for i in node.idents)
            elif isinstance(node, Var):
                names.update(i.lower() for i in (node.name, *node.idents))
        return names

    def execute(self, data: Any, root: list | None = None) -> str:
        """Run the template (or an edited copy of its tree) with `data` as dot and `$`."""
        ex = _Exec(data)
        ex.walk(data, self.root if root is None else root)
        return "".join(ex.out)


def _walk_nodes(nodes: list) -> Iterator[Any]:
    """Every pipe argument Ollama's `Identifiers` visits (chains are skipped, as there)."""
    for node in nodes:
        if isinstance(node, Action):
            yield from _walk_pipe(node.pipe)
        elif isinstance(node, Branch):
            yield from _walk_pipe(node.pipe)
            yield from _walk_nodes(node.body)
            yield from _walk_nodes(node.else_ or [])


def _walk_pipe(pipe: Pipe) -> Iterator[Any]:
    for cmd in pipe.cmds:
        for arg in cmd:
            yield arg
            if isinstance(arg, SubPipe):
                yield from _walk_pipe(arg.pipe)


def parse(source: str) -> Template:
    """Parse a Go template; raise TemplateError (a ConfigError) naming the line on failure."""
    return Template(source)


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------

class GoStruct(dict):
    """A Go struct value: fields by Go name; `json_names` keeps the JSON tags in field order.

    Unlike a map it is always true in `if`, and a missing field is an error, not a zero value.
    `stringer` marks Ollama types whose String() method prints them as JSON (Tool, ToolFunction).
    """

    def __init__(self, type_name: str, fields: list[tuple[str, str, Any]], stringer: bool = False):
        super().__init__((go, value) for go, _, value in fields)
        self.type_name = type_name
        self.json_names = [(go, tag) for go, tag, _ in fields]
        self.stringer = stringer


class JSONMap(dict):
    """A Go map type with a String() method that prints JSON (ToolCallFunctionArguments)."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_MISSING = object()


def _truth(value: Any) -> bool:
    """Go template truth: zero values, nil and empty containers are false; structs are true."""
    if isinstance(value, GoStruct):
        return True
    if value is None:
        return False
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    if isinstance(value, (bool, int, float)):
        return value != 0
    return True


def _type_name(value: Any) -> str:
    if isinstance(value, GoStruct):
        return value.type_name
    return {bool: "bool", int: "int", float: "float64", str: "string", list: "[]interface {}",
            dict: "map[string]interface {}", JSONMap: "api.ToolCallFunctionArguments"}.get(type(value), type(value).__name__)


class _Exec:
    """One execution: the variable stack and the output."""

    def __init__(self, data: Any):
        self.vars: list[list] = [["$", data]]
        self.out: list[str] = []
        self.line = 0

    def error(self, message: str) -> TemplateError:
        return TemplateError(message, line=self.line or None)

    # -- control flow --------------------------------------------------------------------------
    def walk(self, dot: Any, nodes: list) -> None:
        for node in nodes:
            if isinstance(node, Text):
                self.out.append(node.text)
            elif isinstance(node, Action):
                # Declared variables persist to the enclosing {{end}}; declarations print nothing.
                value = self.eval_pipe(dot, node.pipe)
                if not node.pipe.decl:
                    self.out.append(go_print(value, top=True))
            elif isinstance(node, Branch):
                mark = len(self.vars)
                try:
                    if node.kind == "range":
                        self.walk_range(dot, node)
                    else:
                        self.walk_if_with(dot, node)
                finally:
                    del self.vars[mark:]
            elif isinstance(node, Break):
                raise _Break()
            elif isinstance(node, Continue):
                raise _Continue()

    def walk_if_with(self, dot: Any, node: Branch) -> None:
        value = self.eval_pipe(dot, node.pipe)
        if _truth(value):
            self.walk(value if node.kind == "with" else dot, node.body)
        elif node.else_ is not None:
            self.walk(dot, node.else_)

    def walk_range(self, dot: Any, node: Branch) -> None:
        value = self.eval_pipe(dot, node.pipe)
        if value is None:
            pairs: list = []
        elif isinstance(value, (list, tuple)):
            pairs = list(enumerate(value))
        elif isinstance(value, dict) and not isinstance(value, GoStruct):
            pairs = [(k, value[k]) for k in sorted(value)]  # Go ranges over maps in key order
        elif isinstance(value, int) and not isinstance(value, bool):
            pairs = [(i, i) for i in range(value)]
        else:
            raise self.error(f"range can't iterate over {go_print(value)}")
        decl, mark = node.pipe.decl, len(self.vars)
        try:
            for index, elem in pairs:
                self.set_range_vars(decl, node.pipe.assign, index, elem)
                try:
                    self.walk(elem, node.body)
                except _Continue:
                    pass
                finally:
                    del self.vars[mark:]
        except _Break:
            pass
        if not pairs and node.else_ is not None:
            self.walk(dot, node.else_)

    def set_range_vars(self, decl: list[str], assign: bool, index: Any, elem: Any) -> None:
        if not decl:
            return
        values = [elem] if len(decl) == 1 else [index, elem]
        for name, value in zip(decl, values):
            if assign:
                self.set_var(name, value)
            else:
                self.find_var(name)[1] = value

    # -- variables -----------------------------------------------------------------------------
    def find_var(self, name: str) -> list:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry
        raise self.error(f'undefined variable "{name}"')

    def set_var(self, name: str, value: Any) -> None:
        self.find_var(name)[1] = value

    # -- pipelines -----------------------------------------------------------------------------
    def eval_pipe(self, dot: Any, pipe: Pipe) -> Any:
        self.line = pipe.line or self.line
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.assign:
                self.set_var(name, value)
            else:
                self.vars.append([name, value])
        return value

    def eval_command(self, dot: Any, cmd: list, final: Any) -> Any:
        first, args = cmd[0], cmd[1:]
        if isinstance(first, Func):
            return self.call(dot, first.name, args, final)
        if args or final is not _MISSING:
            raise self.error(f"can't give argument to non-function {_describe(first)}")
        if isinstance(first, Lit) and first.is_nil:
            raise self.error("nil is not a command")
        return self.eval_arg(dot, first)

    def eval_arg(self, dot: Any, node: Any) -> Any:
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Field):
            return self.fields(dot, node.idents)
        if isinstance(node, Var):
            return self.fields(self.find_var(node.name)[1], node.idents)
        if isinstance(node, SubPipe):
            return self.eval_pipe(dot, node.pipe)
        if isinstance(node, Chain):
            return self.fields(self.eval_arg(dot, node.node), node.idents)
        if isinstance(node, Func):
            return self.call(dot, node.name, [], _MISSING)
        raise self.error(f"cannot evaluate {node!r}")  # pragma: no cover

    def fields(self, value: Any, idents: tuple[str, ...]) -> Any:
        for name in idents:
            value = self.field(value, name)
        return value

    def field(self, value: Any, name: str) -> Any:
        if isinstance(value, GoStruct):
            if name not in value:
                raise self.error(f"can't evaluate field {name} in type {value.type_name}")
            return value[name]
        if isinstance(value, dict):
            return value.get(name)  # missingkey=zero: a missing map key is the zero value
        if value is None:
            raise self.error(f"nil pointer evaluating interface {{}}.{name}")
        raise self.error(f"can't evaluate field {name} in type {_type_name(value)}")

    # -- functions -----------------------------------------------------------------------------
    def call(self, dot: Any, name: str, args: list, final: Any) -> Any:
        if name in ("and", "or"):
            return self.call_logic(dot, name, args, final)
        values = [self.eval_arg(dot, a) for a in args]
        if final is not _MISSING:
            values.append(final)
        fn = _FUNCS.get(name)
        if fn is None:
            raise TemplateUnsupported(f"function {name} is not supported by this renderer", line=self.line)
        try:
            return fn(*values)
        except TemplateError:
            raise
        except (TypeError, ValueError, IndexError, KeyError) as e:
            raise self.error(f"error calling {name}: {e}") from None

    def call_logic(self, dot: Any, name: str, args: list, final: Any) -> Any:
        """`and`/`or` evaluate lazily and return the deciding argument (Go 1.18+)."""
        thunks: list[Callable[[], Any]] = [lambda a=a: self.eval_arg(dot, a) for a in args]
        if final is not _MISSING:
            thunks.append(lambda: final)
        if not thunks:
            raise self.error(f"wrong number of args for {name}: want at least 1 got 0")
        value = None
        for thunk in thunks:
            value = thunk()
            if _truth(value) != (name == "and"):
                return value
        return value


def _describe(node: Any) -> str:
    if isinstance(node, Field):
        return "." + ".".join(node.idents)
    if isinstance(node, Var):
        return ".".join((node.name, *node.idents))
    if isinstance(node, Lit):
        return repr(node.value)
    return type(node).__name__


# ----------------------------------------------------------------------------------------------
# Builtin functions
# ----------------------------------------------------------------------------------------------

def _kind(value: Any) -> str:
    if value is None:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _eq(arg1: Any, *rest: Any) -> bool:
    if not rest:
        raise TemplateError("missing argument for comparison")
    k1 = _kind(arg1)
    for arg in rest:
        k2 = _kind(arg)
        if k1 != k2:
            if k1 != "invalid" and k2 != "invalid":
                raise TemplateError("incompatible types for comparison")
            continue
        if k1 == "other" and not isinstance(arg1, GoStruct):
            raise TemplateError(f"non-comparable type {_type_name(arg1)}")
        if arg1 == arg:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        raise TemplateError("incompatible types for comparison")
    if ka not in ("int", "float", "string"):
        raise TemplateError("invalid type for comparison")
    return a < b


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))  # Go counts bytes
    if isinstance(value, (list, tuple, dict)) and not isinstance(value, GoStruct):
        return len(value)
    raise TemplateError(f"len of type {_type_name(value)}")


def _index(item: Any, *indexes: Any) -> Any:
    for idx in indexes:
        if item is None:
            raise TemplateError("index of untyped nil")
        if isinstance(item, dict) and not isinstance(item, GoStruct):
            item = item.get(idx)
        elif isinstance(item, (list, tuple, str)):
            seq = item.encode("utf-8") if isinstance(item, str) else item
            if _kind(idx) != "int" or not 0 <= idx < len(seq):
                raise TemplateError(f"index out of range: {idx}")
            item = seq[idx]
        else:
            raise TemplateError(f"can't index item of type {_type_name(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if not isinstance(item, (list, tuple, str)):
        raise TemplateError(f"can't slice item of type {_type_name(item)}")
    if len(indexes) > 3 or (len(indexes) == 3 and isinstance(item, str)):
        raise TemplateError("too many slice indexes")
    seq = item.encode("utf-8") if isinstance(item, str) else item
    bounds = list(indexes) + [None] * (2 - len(indexes))
    lo = bounds[0] if bounds[0] is not None else 0
    hi = bounds[1] if bounds[1] is not None else len(seq)
    if not all(_kind(i) == "int" for i in (lo, hi)) or not 0 <= lo <= hi <= len(seq):
        raise TemplateError(f"index out of range: {lo}:{hi}")
    part = seq[lo:hi]
    return part.decode("utf-8", errors="replace") if isinstance(item, str) else list(part)


def _go_sprint(*args: Any) -> str:
    """fmt.Sprint: spaces between operands when neither side is a string."""
    out = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_print(arg))
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _printf(fmt: str, *args: Any) -> str:
    """fmt.Sprintf for the common verbs (%s %v %d %q %t %f %g %e %x %c %%)."""
    out, pos, argi = [], 0, 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos: m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_verb(flags, width, prec, verb, args[argi]))
        argi += 1
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{_type_name(a)}={go_print(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_verb(flags: str, width: str | None, prec: str | None, verb: str, arg: Any) -> str:
    if verb in "sv":
        text = go_print(arg)
        if prec is not None and verb == "s":
            text = text[: int(prec)]
    elif verb == "q":
        text = json.dumps(arg if isinstance(arg, str) else go_print(arg), ensure_ascii=False)
    elif verb == "t" and isinstance(arg, bool):
        text = "true" if arg else "false"
    elif verb == "d" and _kind(arg) == "int":
        text = ("+" if "+" in flags and arg >= 0 else "") + str(arg)
    elif verb in "gG" and prec is None and _kind(arg) in ("int", "float"):
        text = _go_float(float(arg))  # Go's %g is the shortest representation
    elif verb in "feEgG" and _kind(arg) in ("int", "float"):
        spec = "%" + flags.replace("0", "").replace("-", "") + ("." + prec if prec else "") + verb
        text = spec % float(arg)
    elif verb in "xX" and _kind(arg) == "int":
        text = format(arg, verb.lower() if verb == "x" else "X")
    elif verb in "xX" and isinstance(arg, str):
        text = arg.encode("utf-8").hex()
        text = text.upper() if verb == "X" else text
    elif verb == "c" and _kind(arg) == "int":
        text = chr(arg)
    else:
        return f"%!{verb}({_type_name(arg)}={go_print(arg)})"
    if width:
        pad = "0" if "0" in flags and "-" not in flags and verb not in "sqv" else " "
        text = text.ljust(int(width)) if "-" in flags else text.rjust(int(width), pad)
    return text


def _unsupported(name: str) -> Callable[..., Any]:
    def fn(*_: Any) -> Any:
        raise TemplateUnsupported(f"function {name} is not supported by this renderer")
    return fn


_FUNCS: dict[str, Callable[..., Any]] = {
    "not": lambda x: not _truth(x),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _go_sprint,
    "println": lambda *a: " ".join(go_print(x) for x in a) + "\n",
    "printf": _printf,
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _lt,
    "le": lambda a, b: _lt(a, b) or _eq(a, b),
    "gt": lambda a, b: not (_lt(a, b) or _eq(a, b)),
    "ge": lambda a, b: not _lt(a, b),
    "json": lambda v: go_json(v),
    "currentDate": lambda *_: datetime.date.today().isoformat(),
    "yesterdayDate": lambda *_: (datetime.date.today() - datetime.timedelta(days=1)).isoformat(),
    "html": _unsupported("html"),
    "js": _unsupported("js"),
    "urlquery": _unsupported("urlquery"),
    "call": _unsupported("call"),
    "toTypeScriptType": _unsupported("toTypeScriptType"),
}


# ----------------------------------------------------------------------------------------------
# Go printing and JSON
# ----------------------------------------------------------------------------------------------

def _shortest(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of |value| and the decimal exponent of the first digit."""
    _, digits, exponent = Decimal(repr(abs(value))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    return text, len(digits) + exponent - 1


def _float_text(value: float, use_exponent: bool) -> str:
    """Go's shortest formatting ('f' or 'e' with precision -1)."""
    if not use_exponent:
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    digits, exp = _shortest(value)
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if value < 0 else ''}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def _go_float(value: float) -> str:
    """fmt %v of a float64: %g with the shortest digits, exponent below 1e-4 or from 1e21."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    exp = _shortest(value)[1]
    return _float_text(value, not -4 <= exp < 21)


def _json_float(value: float) -> str:
    """encoding/json of a float64: 'e' below 1e-6 or from 1e21, with e-07 shortened to e-7."""
    if not math.isfinite(value):
        raise TemplateError(f"json: unsupported value: {_go_float(value)}")
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    text = _float_text(value, abs(value) < 1e-6 or abs(value) >= 1e21)
    return re.sub(r"e-0(\d)$", r"e-\1", text)


def go_print(value: Any, top: bool = False) -> str:
    """A value as text/template prints it (fmt %v, Ollama's String() methods)."""
    if value is None:
        return "<no value>" if top else "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, GoStruct):
        if value.stringer:
            return go_json(value)
        return "{" + " ".join(go_print(v) for v in value.values()) + "}"
    if isinstance(value, JSONMap):
        return go_json(value)
    if isinstance(value, dict):
        return "map[" + " ".join(f"{go_print(k)}:{go_print(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    return str(value)


def _json_empty(value: Any) -> bool:
    """Go's omitempty: false, 0, "", nil and empty slices/maps (never a struct)."""
    if value is None or isinstance(value, GoStruct):
        return value is None
    if isinstance(value, (bool, int, float)):
        return value == 0
    return isinstance(value, (str, list, tuple, dict)) and len(value) == 0


def go_json(value: Any) -> str:
    """encoding/json.Marshal: struct fields in order with omitempty, sorted map keys,
    HTML-safe escaping and Go's float formatting."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                        ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            text = text.replace(ch, esc)
        return text
    if isinstance(value, GoStruct):
        parts = []
        for go_name, tag in value.json_names:
            name, _, opt = tag.partition(",")
            item = value[go_name]
            if opt == "omitempty" and _json_empty(item):
                continue
            parts.append(f"{go_json(name)}:{go_json(item)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{go_json(str(k))}:{go_json(value[k])}" for k in sorted(value, key=str)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TemplateError(f"json: unsupported type {type(value).__name__}")


# ----------------------------------------------------------------------------------------------
# Ollama's data model and execution
# ----------------------------------------------------------------------------------------------

def _get(d: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in d and d[key] is not None:
            return d[key]
    return default


def _tool_call(call: dict) -> GoStruct:
    fn = _get(call, "function", "Function", default={})
    args = _get(fn, "arguments", "Arguments", default={})
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        args = json.loads(args) if args.strip() else {}
    function = GoStruct("api.ToolCallFunction", [
        ("Index", "index", _get(fn, "index", "Index", default=0)),
        ("Name", "name", _get(fn, "name", "Name", default="")),
        ("Arguments", "arguments", JSONMap(args))])
    return GoStruct("api.ToolCall", [("ID", "id,omitempty", _get(call, "id", "ID", default="")),
                                     ("Function", "function", function)])


def _message(m: dict) -> GoStruct:
    """An api.Message from a chat message dict (Ollama/OpenAI JSON field names)."""
    if not isinstance(m, dict) or "role" not in m:
        raise ConfigError(f"chat message {m!r} needs a role", fix='use {"role": ..., "content": ...}')
    calls = _get(m, "tool_calls", default=None)
    return GoStruct("api.Message", [
        ("Role", "role", m["role"]),
        ("Content", "content", _get(m, "content", default="")),
        ("Thinking", "thinking,omitempty", _get(m, "thinking", default="")),
        ("Images", "images,omitempty", _get(m, "images", default=None)),
        ("ToolCalls", "tool_calls,omitempty", [_tool_call(c) for c in calls] if calls else None),
        ("ToolName", "tool_name,omitempty", _get(m, "tool_name", "name", default="")),
        ("ToolCallID", "tool_call_id,omitempty", _get(m, "tool_call_id", default=""))])


def _property(p: dict) -> GoStruct:
    return GoStruct("api.ToolProperty", [
        ("Type", "type,omitempty", _get(p, "type", default=None)),
        ("Items", "items,omitempty", _get(p, "items", default=None)),
        ("Description", "description,omitempty", _get(p, "description", default="")),
        ("Enum", "enum,omitempty", _get(p, "enum", default=None))])


def _tool(t: dict) -> GoStruct:
    """An api.Tool from the OpenAI-style tool schema Ollama's API takes."""
    fn = _get(t, "function", default={})
    params = _get(fn, "parameters", default={})
    properties = {k: _property(v) for k, v in (_get(params, "properties", default={}) or {}).items()}
    parameters = GoStruct("api.ToolFunctionParameters", [
        ("Type", "type", _get(params, "type", default="")),
        ("Defs", "$defs,omitempty", _get(params, "$defs", default=None)),
        ("Items", "items,omitempty", _get(params, "items", default=None)),
        ("Required", "required,omitempty", _get(params, "required", default=None)),
        ("Properties", "properties", properties)])
    function = GoStruct("api.ToolFunction", [
        ("Name", "name", _get(fn, "name", default="")),
        ("Description", "description,omitempty", _get(fn, "description", default="")),
        ("Parameters", "parameters", parameters)], stringer=True)
    return GoStruct("api.Tool", [("Type", "type", _get(t, "type", default="function")),
                                 ("Items", "items,omitempty", _get(t, "items", default=None)),
                                 ("Function", "function", function)], stringer=True)


def collate(messages: list[GoStruct]) -> tuple[str, list[GoStruct]]:
    """Ollama's collate: (system messages joined by "\\n\\n", same-role runs merged except tool)."""
    system: list[str] = []
    out: list[GoStruct] = []
    for m in messages:
        if m["Role"] == "system":
            system.append(m["Content"])
        if out and out[-1]["Role"] == m["Role"] and m["Role"] != "tool":
            out[-1]["Content"] += "\n\n" + m["Content"]
        else:
            out.append(m)
    return "\n\n".join(system), out


_RESPONSE_ACTION = Action(Pipe([], False, [[Field(("Response",))]]))


def _cut_after_response(nodes: list) -> list:
    """A copy of the tree without anything after the first `.Response` field (Ollama's deleteNode).

    Like Ollama it walks list items, branch bodies and action pipelines in order; branch
    conditions are not looked at, and `$.Response` (a variable) does not count.
    """
    state = {"cut": False}

    def hit(node: Any) -> bool:
        if isinstance(node, Field) and "Response" in node.idents:
            state["cut"] = True
            return False
        return state["cut"]

    def walk_list(items: list) -> list:
        kept = []
        for item in items:
            new = walk(item)
            if new is not None:
                kept.append(new)
        return kept

    def walk_pipe(pipe: Pipe) -> Pipe | None:
        cmds = []
        for cmd in pipe.cmds:
            args = [a for a in (walk(arg) for arg in cmd) if a is not None]
            if not args:
                return None
            cmds.append(args)
        return Pipe(pipe.decl, pipe.assign, cmds, pipe.line) if cmds else None

    def walk(node: Any) -> Any:
        if hit(node):
            return None
        if isinstance(node, Branch):
            body = walk_list(node.body)
            else_ = None if node.else_ is None else ([] if state["cut"] else walk_list(node.else_))
            return Branch(node.kind, node.pipe, body, else_)
        if isinstance(node, Action):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else Action(pipe)
        if isinstance(node, SubPipe):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else SubPipe(pipe)
        return node

    return walk_list(nodes)


def render_chat(template: str, messages: list[dict], *, tools: list[dict] | None = None,
                system: str | None = None) -> str:
    """The prompt Ollama builds from a Go TEMPLATE for a chat request.

    `messages` are chat dicts (role, content, and optionally images, tool_calls, tool_name,
    tool_call_id, thinking); `tools` use the OpenAI/Ollama schema. `system` is a Modelfile
    SYSTEM: like Ollama it is put first when the conversation does not start with a system
    message. Raises TemplateError for a broken template.
    """
    tmpl = parse(template)
    names = tmpl.identifiers()
    root = tmpl.root
    if "messages" not in names and "response" not in names:
        root = root + [_RESPONSE_ACTION]  # Ollama appends {{ .Response }} to such templates
    if system and (not messages or messages[0].get("role") != "system"):
        messages = [{"role": "system", "content": system}, *messages]
    sys_text, msgs = collate([_message(m) for m in messages])
    think = {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    if "messages" in names or "document" in names:
        data = {"System": sys_text, "Messages": msgs, "Tools": [_tool(t) for t in tools or []],
                "Response": "", **think}
        return tmpl.execute(data, root)
    return _render_legacy(tmpl, root, msgs, think)


def _render_legacy(tmpl: Template, root: list, msgs: list[GoStruct], think: dict) -> str:
    """Run a .System/.Prompt/.Response template once per turn; cut the last after .Response."""
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(tmpl.execute({**turn, **think}, root))
        turn.update(System="", Prompt="", Response="")

    for m in msgs:
        role, content = m["Role"], m["Content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    out.append(tmpl.execute({**turn, **think}, _cut_after_response(root)))
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# HF chat template -> Ollama template
# ----------------------------------------------------------------------------------------------

_FAMILIES = [
    (("<|im_start|>", "<|im_end|>"), CHATML_TEMPLATE, CHATML_STOPS),
    (("<|start_header_id|>", "<|eot_id|>"), LLAMA3_TEMPLATE, LLAMA3_STOPS),
    (("<|assistant|>", "<|end|>"), PHI3_TEMPLATE, PHI3_STOPS),
]


def ollama_template_for(hf_chat_template: str) -> tuple[str, list[str]] | None:
    """(Go template, stop tokens) for a Hugging Face Jinja chat template, or None if unsure.

    Recognises the turn markers of ChatML (SmolLM2, Qwen), Llama 3 and Phi-3 and returns the
    template Ollama ships for that family. Like Ollama's own auto-detection it keeps only the
    turn format: pass `default_system_prompt(...)` as the Modelfile SYSTEM to keep a default
    system message, and note that tool-calling sections are not carried over.
    """
    for markers, template, stops in _FAMILIES:
        if all(marker in hf_chat_template for marker in markers):
            return template, list(stops)
    return None


_DEFAULT_SYSTEM = [
    # SmolLM2/Qwen: '<|im_start|>system\n<text><|im_end|>\n' as one string literal
    re.compile(r"""(['"])<\|im_start\|>system(?:\\n|\n)((?:(?!\1).)*?)<\|im_end\|>""", re.S),
    # {% set system_message = '<text>' %} in the branch taken when there is no system message
    re.compile(r"""set\s+system_message\s*=\s*(['"])((?:(?!\1).)+?)\1""", re.S),
]


def default_system_prompt(hf_chat_template: str) -> str | None:
    """The literal default system message a ChatML Jinja template inserts, if it has one.

    SmolLM2 and Qwen templates write `'<|im_start|>system\\n<text><|im_end|>'` as a string
    literal when the conversation has no system message; Ollama gets the same prompt from the
    Modelfile SYSTEM, which it uses exactly when a request has no system message.
    """
    for pattern in _DEFAULT_SYSTEM:
        m = pattern.search(hf_chat_template)
        if m:
            text = m.group(2)
            return text.replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"')
    return None

"""Parsing a Go text/template into its tree (`parse`), with Go's checks: defined variables and
functions, `{{end}}` matching, break/continue only inside range. `Template` runs the tree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from toolkit.chat.gotemplate.errors import TemplateError, TemplateUnsupported
from toolkit.chat.gotemplate.execute import Execution
from toolkit.chat.gotemplate.lexer import Tok, lex
from toolkit.chat.gotemplate.nodes import Action, Branch, Break, Chain, Continue, Dot, Field, Func, Lit, Pipe, SubPipe, Text, Var

_KEYWORDS = {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"}

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
        self.items = lex(src)
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
        ex = Execution(data)
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

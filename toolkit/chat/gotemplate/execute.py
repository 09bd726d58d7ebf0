"""Executing a parsed Go template: control flow, variables, pipelines, field access and function
calls (`and`/`or` lazily), with Go's error texts.

`bounded(Budget(...))` bounds every execution run inside it (a template from an untrusted request,
as `toolkit serve` takes one): steps, characters written or returned by a function, and wall time
are shared by all executions in the block, and running past one raises TemplateError naming it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from toolkit.chat.gotemplate.errors import TemplateError, TemplateUnsupported
from toolkit.chat.gotemplate.funcs import FUNCS
from toolkit.chat.gotemplate.nodes import Action, Branch, Break, Chain, Continue, Dot, Field, Func, Lit, Pipe, SubPipe, Text, Var
from toolkit.chat.gotemplate.values import GoStruct, go_print, truth, type_name


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_MISSING = object()


@dataclass
class Budget:
    """What the executions in a `bounded` block may use together: steps (nodes run, range
    iterations, function calls), characters (written, or returned by one function) and seconds."""

    steps: int
    chars: int
    seconds: float
    deadline: float = 0.0
    used_steps: int = 0
    used_chars: int = 0

    def spend(self, steps: int = 1, chars: int = 0) -> None:
        self.used_steps += steps
        self.used_chars += chars
        if self.used_steps > self.steps:
            raise TemplateError(f"template execution took more than {self.steps} steps")
        if self.used_chars > self.chars:
            raise TemplateError(f"template output is over {self.chars} characters")
        if time.monotonic() > self.deadline:
            raise TemplateError(f"template execution took longer than {self.seconds:g} s")


_BUDGET: ContextVar[Budget | None] = ContextVar("gotemplate_budget", default=None)


@contextlib.contextmanager
def bounded(budget: Budget) -> Iterator[Budget]:
    """Run the executions inside this block within `budget` (this thread or task only)."""
    budget.deadline = time.monotonic() + budget.seconds
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


class Execution:
    """One execution: the variable stack and the output."""

    def __init__(self, data: Any):
        self.vars: list[list] = [["$", data]]
        self.out: list[str] = []
        self.line = 0
        self.budget = _BUDGET.get()  # None: unbounded (templates the toolkit itself ships)

    def spend(self, steps: int = 1, chars: int = 0) -> None:
        if self.budget is not None:
            self.budget.spend(steps, chars)

    def fits(self, chars: int) -> None:
        """Raise if a value of `chars` characters would not fit what is left of the budget."""
        if self.budget is not None and chars > self.budget.chars - self.budget.used_chars:
            self.budget.spend(0, chars)

    def error(self, message: str) -> TemplateError:
        return TemplateError(message, line=self.line or None)

    # -- control flow --------------------------------------------------------------------------
    def walk(self, dot: Any, nodes: list) -> None:
        for node in nodes:
            self.spend()
            if isinstance(node, Text):
                self.spend(0, len(node.text))
                self.out.append(node.text)
            elif isinstance(node, Action):
                # Declared variables persist to the enclosing {{end}}; declarations print nothing.
                value = self.eval_pipe(dot, node.pipe)
                if not node.pipe.decl:
                    text = go_print(value, top=True)
                    self.spend(0, len(text))
                    self.out.append(text)
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
        if truth(value):
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
            budget = self.budget  # {{range 100000000}} past the budget fails before making the list
            if budget is not None and value > budget.steps - budget.used_steps:
                self.spend(value)
            pairs = [(i, i) for i in range(value)]
        else:
            raise self.error(f"range can't iterate over {go_print(value)}")
        decl, mark = node.pipe.decl, len(self.vars)
        try:
            for index, elem in pairs:
                self.spend()
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
        raise self.error(f"can't evaluate field {name} in type {type_name(value)}")

    # -- functions -----------------------------------------------------------------------------
    def call(self, dot: Any, name: str, args: list, final: Any) -> Any:
        if name in ("and", "or"):
            return self.call_logic(dot, name, args, final)
        values = [self.eval_arg(dot, a) for a in args]
        if final is not _MISSING:
            values.append(final)
        fn = FUNCS.get(name)
        if fn is None:
            raise TemplateUnsupported(f"function {name} is not supported by this renderer", line=self.line)
        self.spend()
        if name == "printf" and values and isinstance(values[0], str):
            self.fits(_widest(values[0]))  # a padded field is refused before it is made
        try:
            result = fn(*values)
            if isinstance(result, str):
                self.fits(len(result))  # a string doubled in a loop never grows past the budget
            return result
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
            if truth(value) != (name == "and"):
                return value
        return value


_WIDTHS = re.compile(r"%[-+# 0]*(\d{0,8})(?:\.(\d{0,8}))?(?!\d)")


def _widest(fmt: str) -> int:
    """The largest width or precision in a printf format (9 digits or more print nothing: see funcs)."""
    return max((int(n) for m in _WIDTHS.finditer(fmt) for n in m.groups() if n), default=0)


def _describe(node: Any) -> str:
    if isinstance(node, Field):
        return "." + ".".join(node.idents)
    if isinstance(node, Var):
        return ".".join((node.name, *node.idents))
    if isinstance(node, Lit):
        return repr(node.value)
    return type(node).__name__

"""The parse tree of a Go template: pipelines and their operands, and the text, action and
if/range/with nodes a template is a list of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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

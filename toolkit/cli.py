"""The `toolkit` command: a thin map from subcommands to plain typed functions.

Each command is an ordinary function elsewhere in the package. Its signature gives the options
(parameters without a default are positional), its type hints give their types, and its docstring
is the `--help`: the first paragraph describes the command and an `Args:` section describes each
option. Modules are imported only to build the parser, and keep heavy imports (torch, llama_cpp,
bert_score) inside functions, so `toolkit --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.params import DEFAULTS, SPECS, DecodingParams

DECODING_PREFIX = "decoding:"

# command words -> "module:function"; groups ("data") come from the first word.
COMMANDS: dict[str, str] = {
    "doctor": "toolkit.doctor:doctor",
    "data build": "toolkit.data.build:build",
    "data check": "toolkit.data.check:check",
    "data prefs": "toolkit.data.prefs:prefs",
    "models": "toolkit.models:show",
    "train": "toolkit.train.command:train",
    "train search": "toolkit.train.search:search",
    "merge": "toolkit.train.merge:merge",
    "generate": "toolkit.generate:generate",
    "export": "toolkit.export.convert:export",
    "verify": "toolkit.export.verify:verify",
    "ollama create": "toolkit.export.convert:ollama_create",
    "chat": "toolkit.generate:chat",
    "serve": "toolkit.serve.server:serve",
    "sweep": "toolkit.evaluate.sweep.command:sweep",
    "compare": "toolkit.evaluate.compare:compare",
    "rate": "toolkit.evaluate.rate:rate",
    "gaps": "toolkit.gaps.command:gaps",
    "demo": "toolkit.demo:demo",
}
GROUP_HELP = {
    "data": "Read, check and build datasets (arXiv abstracts, QA, chat, preference).",
    "ollama": "Register exported models with an Ollama server.",
}


def _load(target: str) -> Callable[..., Any]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into its description and the per-argument help."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    desc: list[str] = []
    args: dict[str, str] = {}
    current = None
    in_args = False
    for line in lines:
        if line.strip() in {"Args:", "Arguments:"}:
            in_args = True
            continue
        if in_args and line and not line.startswith(" ") and line.rstrip().endswith(":"):
            in_args = False  # another section (Returns:, Raises:)
        if not in_args:
            desc.append(line)
            continue
        stripped = line.strip()
        if line.startswith("    ") and not line.startswith("        ") and ":" in stripped:
            current, text = stripped.split(":", 1)
            args[current.strip()] = text.strip()
        elif current and stripped:
            args[current] += " " + stripped
    return "\n".join(desc).strip(), args


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(element type, is_list) for a hint, unwrapping Optional."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0]) if args else (str, False)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return (args[0] if args else str), True
    return hint, False


def _add_argument(parser: argparse.ArgumentParser, name: str, param: inspect.Parameter, hint: Any, help_text: str,
                  first: bool = False) -> None:
    base, is_list = _base_type(hint)
    help_text = help_text.replace("%", "%%")  # argparse %-formats help: "~30% slower" must stay text
    kwargs: dict[str, Any] = {"help": help_text or None}
    if typing.get_origin(base) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(base))
        base = type(kwargs["choices"][0])
    flag = "--" + name.replace("_", "-")
    if is_list and first and param.default in ((), []):  # a leading optional list: positional values
        parser.add_argument(name, type=base, nargs="*", default=list(param.default), **kwargs)
        return
    if param.default is inspect.Parameter.empty:
        parser.add_argument(name, type=base, nargs="+" if is_list else None, **kwargs)
        return
    if base is bool:
        # argparse reads any `--no-X` as the off form of X, so `--no-base` could never be switched on
        action = "store_true" if name.startswith("no_") and param.default is False else argparse.BooleanOptionalAction
        parser.add_argument(flag, dest=name, action=action, default=param.default, **kwargs)
        return
    shown = param.default if not isinstance(param.default, (list, tuple)) else " ".join(map(str, param.default))
    if param.default is not None:  # None means "not given": the help text states the real default
        kwargs["help"] = f"{help_text} (default: {shown})" if help_text else f"(default: {shown})"
    parser.add_argument(flag, dest=name, type=base, nargs="+" if is_list else None, default=param.default, **kwargs)


def _add_command(sub: argparse._SubParsersAction, word: str, target: str, prog: str | None = None) -> None:
    fn = _load(target)
    desc, arg_help = parse_docstring(fn.__doc__)
    parser = sub.add_parser(
        word,
        prog=prog,
        help=desc.splitlines()[0] if desc else None,
        description=desc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(fn)
    for i, (name, param) in enumerate(inspect.signature(fn).parameters.items()):
        if hints.get(name) is DecodingParams:
            _add_decoding_options(parser, name)
            continue
        _add_argument(parser, name, param, hints.get(name, str), arg_help.get(name, ""), first=i == 0)
    parser.set_defaults(_func=fn)


def _add_decoding_options(parser: argparse.ArgumentParser, name: str) -> None:
    """A `DecodingParams` parameter becomes one option per field, bounds and defaults from its specs."""
    group = parser.add_argument_group("decoding parameters")
    for field, spec in SPECS.items():
        default = getattr(DEFAULTS, field)
        group.add_argument(
            "--" + field.replace("_", "-"), dest=f"{DECODING_PREFIX}{name}.{field}", type=spec.type, default=None,
            metavar=field.upper(), help=f"{spec.help} (default: {default}; range {spec.low}..{spec.high})",
        )
    group.add_argument("--stop", dest=f"{DECODING_PREFIX}{name}.stop", action="append", default=None,
                       metavar="TEXT", help="stop sequence (repeatable)")


def _collect_decoding(args: dict[str, Any]) -> dict[str, Any]:
    """Fold the `--temperature`-style options back into `DecodingParams` arguments."""
    grouped: dict[str, dict[str, Any]] = {}
    for key in [k for k in args if k.startswith(DECODING_PREFIX)]:
        param, field = key[len(DECODING_PREFIX):].split(".")
        value = args.pop(key)
        grouped.setdefault(param, {})
        if value is not None:
            grouped[param][field] = value
    for param, values in grouped.items():
        args[param] = DEFAULTS.replace(**values)
    return args


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every command module is imported, so modules keep heavy imports inside functions."""
    from toolkit import __version__

    parser = argparse.ArgumentParser(
        prog="toolkit",
        description="Fine-tune a small LLM on CPU, ship it as GGUF, serve it, sweep decoding parameters, compare.",
    )
    parser.add_argument("--version", action="version", version=f"toolkit {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for command, target in COMMANDS.items():
        parts = command.split()
        if len(parts) == 1:
            _add_command(sub, parts[0], target)
            continue
        group, word = parts
        if group in COMMANDS:  # `train search` beside `train`: a top-level `train-search`, see main()
            _add_command(sub, f"{group}-{word}", target, prog=f"toolkit {group} {word}")
            continue
        if group not in groups:
            gp = sub.add_parser(group, help=GROUP_HELP.get(group), description=GROUP_HELP.get(group))
            groups[group] = gp.add_subparsers(title="commands", metavar="COMMAND")
            gp.set_defaults(_group=gp)
        _add_command(groups[group], word, target)
    return parser


def quiet_libraries() -> None:
    """Silence library chatter that says nothing to our users (configuration only: no heavy import)."""
    import logging
    import warnings

    # bitsandbytes tries to fetch an optional CPU kernel from the hub on import (peft imports it)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # peft still asks transformers 5 for the renamed `is_gradient_checkpointing`
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `toolkit` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here ever needs the hub unless asked
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own rich bars show progress
    quiet_libraries()
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in COMMANDS and argv[0] in COMMANDS:
        argv[:2] = [f"{argv[0]}-{argv[1]}"]
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    fn = args.pop("_func", None)
    group = args.pop("_group", None)
    if fn is None:
        (group or parser).print_help()
        return 0 if not argv else 2
    from toolkit.errors import ToolkitError

    try:
        result = fn(**_collect_decoding(args))
    except ToolkitError as exc:
        from toolkit.console import err

        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


__all__ = ["main", "build_parser", "parse_docstring", "Path"]

"""The `toolkit` command: a thin map from subcommands to plain typed functions.

Each command is an ordinary function elsewhere in the package. Its signature gives the options
(parameters without a default are positional), its type hints give their types, and its docstring
is the `--help`: the first paragraph describes the command and an `Args:` section describes each
option. A parameter typed with an option set (toolkit/options.py: a dataclass whose fields carry
their help) or with `DecodingParams` becomes a group of options, one per field, folded back into
the dataclass before the call.

`COMMANDS` is the one place a command's module is imported (by importlib, in `_load`), and only for
the command being run: `toolkit CMD ...` (also `toolkit CMD --help`) imports CMD's module alone,
and `toolkit --help` imports none, reading each summary line from the function's source (`summary`).
A command module may import much (the light toolkit modules it needs, at its top); that cost is paid
by its own command only. `build_parser()` without arguments still loads every command (the tests).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import inspect
import os
import re
import sys
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from toolkit import __version__
from toolkit.errors import ToolkitError
from toolkit.options import flag_of, is_option_set
from toolkit.params import SPECS, DecodingParams
from toolkit.runtime.threads import ThreadOptions
from toolkit.runtime.threads import apply as share_cpu

OPTION_SETS = "_option_sets"  # the parser's default: parameter -> (default instance, {dest: field})

# command words -> "module:function"; groups ("data") come from the first word.
COMMANDS: dict[str, str] = {
    "doctor": "toolkit.doctor:doctor",
    "data build": "toolkit.data.build:build",
    "data check": "toolkit.data.check:check",
    "data prefs": "toolkit.data.prefs:prefs",
    "data synth": "toolkit.synth.command:synth",
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
    "eval": "toolkit.evaluate.harness.command:evaluate",
    "rate": "toolkit.evaluate.rate:rate",
    "gaps": "toolkit.gaps.command:gaps",
    "demo": "toolkit.demo:demo",
}
# Commands that run a model take --threads (one option set, ThreadOptions, for all of them). serve
# and chat answer a person and keep their priority; every other command is batch work, niced
# (toolkit.runtime.threads).
RUNS_MODELS = frozenset({"doctor", "data prefs", "data synth", "train", "train search", "merge", "generate", "export",
                         "verify", "chat", "serve", "sweep", "compare", "eval", "gaps", "demo"})
INTERACTIVE = frozenset({"serve", "chat"})
SHARING = "_sharing"  # the parser's key for a command's ThreadOptions
GROUP_HELP = {
    "data": "Read, check and build datasets (arXiv abstracts, QA, chat, preference).",
    "ollama": "Register exported models with an Ollama server.",
}


def _load(target: str) -> Callable[..., Any]:
    """The command function: its module is imported here, the one lazy import of the CLI."""
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def summary(target: str) -> str:
    """The first line of a command function's docstring, read from its source without importing its
    module (what the module imports is what makes loading a command slow), so `toolkit --help`
    imports no command. Only the function's own lines are parsed; the whole file if they do not parse."""
    module, func = target.split(":")
    source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    # from `def func(` to the next line that starts a top-level statement (or the end)
    match = re.search(rf"^def {func}\(.*?(?=^[^\s#)]|\Z)", source, re.M | re.S)
    try:
        tree = ast.parse(match.group(0) if match else source)
    except SyntaxError:
        tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
    desc, _ = parse_docstring(ast.get_docstring(fn, clean=False))
    return desc.splitlines()[0] if desc else ""


def named_command(argv: list[str]) -> str | None:
    """The `COMMANDS` entry argv names (`data build`, `train search` or `train-search`, `sweep`), or None."""
    words = [w for w in argv[:2] if not w.startswith("-")]
    for key in (" ".join(words), words[0] if words else "", words[0].replace("-", " ", 1) if words else ""):
        if key in COMMANDS:
            return key
    return None


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
    elif isinstance(base, type) and hasattr(base, "choices"):  # a name from a registry (runtime's BackendName)
        kwargs["choices"], base = list(base.choices()), str
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
    if first and name == "model" and not is_list:  # `toolkit models M`, `chat M`: --model's value may also come first
        parser.add_argument(name, type=base, nargs="?", default=argparse.SUPPRESS, metavar=name.upper(),
                            help=f"the same as --{name}")


def _add_command(sub: argparse._SubParsersAction, word: str, target: str, prog: str | None = None, load: bool = True) -> None:
    """The command's parser; unloaded (`load=False`), only its summary line: enough for a listing."""
    if not load:
        sub.add_parser(word, prog=prog, help=summary(target) or None)
        return
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
    sets = {}
    for i, (name, param) in enumerate(inspect.signature(fn).parameters.items()):
        hint = hints.get(name, str)
        if hint is DecodingParams or is_option_set(hint):
            sets[name] = _add_option_set(parser, hint, param.default, arg_help.get(name, ""))
            continue
        _add_argument(parser, name, param, hint, arg_help.get(name, ""), first=i == 0)
    if target in {COMMANDS[c] for c in RUNS_MODELS}:
        sets[SHARING] = _add_option_set(parser, ThreadOptions, ThreadOptions(), "")
    parser.set_defaults(_func=fn, **{OPTION_SETS: sets})


def _set_fields(cls: type, default: Any) -> list[tuple[str, str, Any, Any, str]]:
    """(field, CLI name, type hint, default, help) of each option of an option set; `DecodingParams`'
    come from its specs, with None defaults ("not given") and bounds in the help."""
    if cls is DecodingParams:
        return [(name, name, spec.type, None, f"{spec.help} (default: {getattr(default, name)}; range {spec.low}..{spec.high})")
                for name, spec in SPECS.items()]
    hints = typing.get_type_hints(cls)
    return [(f.name, flag_of(f), hints[f.name], getattr(default, f.name), f.metadata["help"]) for f in dataclasses.fields(cls)]


def _add_option_set(parser: argparse.ArgumentParser, cls: type, default: Any, description: str) -> tuple[Any, dict[str, str]]:
    """One option per field, in a group titled by the dataclass's first docstring line; returns what
    `collect_options` needs to fold the values back."""
    default = cls() if default is inspect.Parameter.empty else default
    title = "decoding parameters" if cls is DecodingParams else (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
    group = parser.add_argument_group(title, description or None)
    dests = {}
    for field, flag, hint, value, help_text in _set_fields(cls, default):
        _add_argument(group, flag, inspect.Parameter(flag, inspect.Parameter.KEYWORD_ONLY, default=value), hint, help_text)
        dests[flag] = field
    if cls is DecodingParams:  # repeatable rather than several values after one flag
        group.add_argument("--stop", dest="stop", action="append", default=None, metavar="TEXT", help="stop sequence (repeatable)")
        dests["stop"] = "stop"
    return default, dests


def collect_options(args: dict[str, Any]) -> dict[str, Any]:
    """Fold each option set's options back into its dataclass: the parameter's default with every
    option given (not None) replaced, validated by the dataclass as any Python caller's would be."""
    sets = args.pop(OPTION_SETS, {})
    # every option out first: a parameter may share its name with an option (compare's `judge`)
    given = {name: {field: args.pop(dest) for dest, field in dests.items()} for name, (_, dests) in sets.items()}
    for name, (default, _) in sets.items():
        args[name] = dataclasses.replace(default, **{k: v for k, v in given[name].items() if v is not None})
    return args


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; only those in `load` (`COMMANDS` keys; None: all) have their
    module imported and their options, the others are listed by their summary line."""
    parser = argparse.ArgumentParser(
        prog="toolkit",
        description="Fine-tune a small LLM on CPU, ship it as GGUF, serve it, sweep decoding parameters, compare.",
    )
    parser.add_argument("--version", action="version", version=f"toolkit {__version__}")
    parser.add_argument("--verbose", action="store_true",  # taken out of argv by main(), with any command
                        help="show the libraries' log lines too (llama.cpp's load log, hub notices)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for command, target in COMMANDS.items():
        parts = command.split()
        loaded = load is None or command in load
        if len(parts) == 1:
            _add_command(sub, parts[0], target, load=loaded)
            continue
        group, word = parts
        if group in COMMANDS:  # `train search` beside `train`: a top-level `train-search`, see main()
            _add_command(sub, f"{group}-{word}", target, prog=f"toolkit {group} {word}", load=loaded)
            continue
        if group not in groups:
            gp = sub.add_parser(group, help=GROUP_HELP.get(group), description=GROUP_HELP.get(group))
            groups[group] = gp.add_subparsers(title="commands", metavar="COMMAND")
            gp.set_defaults(_group=gp)
        _add_command(groups[group], word, target, load=loaded)
    return parser


def quiet_libraries() -> None:
    """Silence library chatter that says nothing to our users (configuration only: no heavy import)."""
    import logging
    import warnings

    # bitsandbytes tries to fetch an optional CPU kernel from the hub on import (peft imports it),
    # and the `kernels` package says offline that it skips its publisher trust check
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("kernels").setLevel(logging.ERROR)
    # peft still asks transformers 5 for the renamed `is_gradient_checkpointing`
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def take_verbose(argv: list[str]) -> bool:
    """Remove `--verbose` from `argv` (any position before a `--`, so it goes with every command);
    True when it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = "--verbose" in argv[:end]
    argv[:end] = [a for a in argv[:end] if a != "--verbose"]
    return found


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `toolkit` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here ever needs the hub unless asked
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own rich bars show progress
    if take_verbose(argv):
        os.environ["TOOLKIT_VERBOSE"] = "1"  # llama.cpp's log too (toolkit/runtime/llamacpp.py: quiet_logs)
    else:
        quiet_libraries()
    command = named_command(argv)
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in COMMANDS and argv[0] in COMMANDS:
        argv[:2] = [f"{argv[0]}-{argv[1]}"]
    parser = build_parser(load={command} if command else ())  # only the command that runs is imported
    args = vars(parser.parse_args(argv))
    args.pop("verbose", None)  # taken above: listed in the parser for --help only
    fn = args.pop("_func", None)
    group = args.pop("_group", None)
    if fn is None:
        (group or parser).print_help()
        return 0 if not argv else 2

    try:
        args = collect_options(args)
        # before the command imports torch or llama_cpp, whose thread pools read what this sets
        share_cpu(args.pop(SHARING, ThreadOptions()).threads, interactive=command in INTERACTIVE)
        result = fn(**args)
    except ToolkitError as exc:
        from toolkit.console import err

        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


__all__ = ["main", "build_parser", "parse_docstring", "Path"]

"""Option sets: dataclasses whose fields carry their own `--help` text, for commands with many options.

A command parameter typed with an option set becomes one CLI option per field (toolkit/cli.py): the
field's type hint gives the option's type (Literal -> choices, bool -> --x/--no-x, list -> several
values), its default the option's default (None = "not given") and `option()`'s text its --help
line. The command receives the dataclass, so the CLI, Python callers and a stored run's settings
(`plain` writes them, `restore` reads them back) share one list of fields.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError


def option(default: Any, help: str, *, flag: str = "") -> Any:
    """An option-set field: its default, its --help text, and `flag`, the CLI name where it is not
    the field's own (`JudgeSettings.model` is `--judge`)."""
    metadata = {"help": help, "flag": flag} if flag else {"help": help}
    if isinstance(default, list):  # a fresh list per instance
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_option_set(hint: Any) -> bool:
    """Whether `hint` is an option set: a dataclass every field of which has help text."""
    if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        return False
    fields = dataclasses.fields(hint)
    return bool(fields) and all("help" in f.metadata for f in fields)


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh list for list fields)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


def flag_of(f: dataclasses.Field) -> str:
    """The field's CLI name, underscores and all (`judge_backend` -> `--judge-backend`)."""
    return f.metadata.get("flag") or f.name


def plain(settings: Any) -> dict[str, Any]:
    """An option set's values, JSON-ready (paths as strings), in field order."""
    return {f.name: _jsonable(getattr(settings, f.name)) for f in dataclasses.fields(settings)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


def restore(cls: type, values: dict[str, Any], where: str) -> Any:
    """The option set `plain` wrote: path fields back to `Path`; a field the file lacks (written
    before the field existed) takes its default; a key that is no field is a ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r}", fix=f"valid settings: {', '.join(names)}")
    return cls(**{k: Path(v) if v is not None and Path in (hints[k], *typing.get_args(hints[k])) else v for k, v in values.items()})


def overrides(cls: type, name: str, doc: str) -> type:
    """`cls`'s fields, each optional (None = not given), for options that go on top of a config file;
    the made class's `given()` holds the ones set. Each help text ends with the field's real default."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        default = default_of(f)
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        text = f"{f.metadata['help']} (default: {shown})" if shown != "" else f.metadata["help"]
        fields.append((f.name, hints[f.name] | None, dataclasses.field(default=None, metadata={**f.metadata, "help": text})))
    made = dataclasses.make_dataclass(name, fields, frozen=True, kw_only=True, namespace={"__doc__": doc, "given": _given})
    made.__module__ = cls.__module__
    return made


def _given(self: Any) -> dict[str, Any]:
    """The options that were set (not None), by field name."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return {k: v for k, v in values.items() if v is not None}

"""The checks `ollama create` makes after parsing a Modelfile, and `validate_file` for a user's
file. They live here, not beside the parser in toolkit/modelfile/, because a TEMPLATE is checked
with the Go template interpreter of toolkit/chat/."""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.chat.gotemplate.errors import TemplateError, TemplateUnsupported
from toolkit.chat.gotemplate.parser import parse as parse_template
from toolkit.modelfile.parser import Modelfile, ModelfileError, check_requires, command_lines, read_file, typed_parameters


def check(mf: Modelfile, *, base_dir: str | os.PathLike | None = None,
          check_template: bool = True) -> list[str]:
    """Apply the checks `ollama create` makes after parsing; return warnings, raise on errors.

    Parameters must be known and well typed, REQUIRES must be a version, each TEMPLATE must be
    a Go template Ollama can parse, and with `base_dir` an ADAPTER must exist there.
    """
    _, warnings = typed_parameters(mf)
    for (name, value), line in zip(mf.commands, command_lines(mf)):
        where = dict(path=mf.path or "Modelfile", line=line)
        if name == "requires":
            check_requires(mf, value)
        elif name == "template" and check_template:
            _check_template(value, where)
        elif name == "adapter" and base_dir is not None:
            target = Path(value).expanduser()
            if not target.is_absolute():
                target = Path(base_dir) / target
            if not target.exists():
                raise ModelfileError(f'ADAPTER "{value}" does not exist', fix=f"looked for {target}",
                                     kind="CreateRequest", ollama_error="no such file or directory",
                                     **where)
    return warnings


def _check_template(template: str, where: dict) -> None:
    # local import: only templates need the evaluator

    try:
        parse_template(template)
    except TemplateUnsupported:
        pass  # valid Go we do not evaluate; Ollama will judge it
    except TemplateError as e:
        line = where["line"]
        if line is not None and e.line:
            line += e.line - 1  # the template text starts on the TEMPLATE line
        raise ModelfileError(f"TEMPLATE is not a valid Go template: {e.detail}",
                             fix=e.fix or "see https://pkg.go.dev/text/template",
                             kind="CreateRequest", ollama_error=f"template error: {e.detail}",
                             path=where["path"], line=line) from None


def validate_file(path: str | os.PathLike) -> Modelfile:
    """Read and fully check a user's Modelfile; return it with any warnings in `.warnings`."""
    path = Path(path)
    mf = read_file(path)
    mf.warnings = check(mf, base_dir=path.parent)
    return mf

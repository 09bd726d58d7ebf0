"""The errors of the Go template evaluator: a template that does not parse or run, and valid Go
template syntax that this evaluator does not implement."""

from __future__ import annotations

from toolkit.errors import ConfigError


class TemplateError(ConfigError):
    """A Go template that does not parse or cannot be executed."""

    def __init__(self, message: str, *, line: int | None = None, fix: str | None = None):
        self.line = line
        self.detail = message  # without the line prefix
        super().__init__(f"line {line}: {message}" if line else message, fix=fix)


class TemplateUnsupported(TemplateError):
    """Valid Go template syntax that this evaluator does not implement."""

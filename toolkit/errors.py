"""The toolkit's error family.

Every error a user can cause (a bad file, a missing server, a wrong option) is a `ToolkitError`
whose message is one line naming the file, line or field and saying how to fix it. The CLI prints
that line without a traceback and exits with `exit_code`; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """A user-facing error: one line, names what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message} ({fix})" if fix else message)


class DataError(ToolkitError):
    """Malformed or unusable input data: names the file and line."""

    def __init__(self, message: str, *, path=None, line: int | None = None, fix: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message, fix=fix)
        self.path = path
        self.line = line


class ConfigError(ToolkitError):
    """A bad option or config value: names the field and the accepted values."""


class ModelError(ToolkitError):
    """A model that cannot be found, loaded or used as asked."""


class BackendError(ToolkitError):
    """A generation backend that is unreachable or failed."""

    exit_code = 3

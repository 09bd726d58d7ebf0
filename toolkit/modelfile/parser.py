"""Ollama Modelfiles read exactly as Ollama reads them: `parse`, `read_file`, and the typed
parameter checks `ollama create` makes.

`parse` is a rune-for-rune port of Ollama's `parser.ParseFile` state machine (ollama/ollama
`parser/parser.go`), so a file is valid here exactly when `ollama create` can read it, and its
commands come out as the same `(name, value)` pairs in Ollama's naming (FROM -> "model",
PARAMETER -> the parameter's own name, MESSAGE -> "role: content"). A quoted value only loses
its quotes: nothing is unescaped (a backslash stays a backslash), as in Ollama. The parser alone
accepts any parameter name, like Ollama's; the typed checks applied afterwards (known names,
int/float/bool values) live in `typed_parameters` and `Modelfile.parameters`. The checks that need
the Go template interpreter (`check`, `validate_file`) are in toolkit/export/modelfile/checks.py.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import DataError
from toolkit.modelfile.values import TYPE_WORDS, parse_value
from toolkit.params import OLLAMA_OPTION_TYPES

# The instruction keywords Ollama accepts (case-insensitively), in the order of its error text.
INSTRUCTIONS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
                "parameter", "message", "requires")
# Command names that are not PARAMETERs (FROM is stored as "model").
NON_PARAMETER_COMMANDS = frozenset({"model", "license", "template", "system", "adapter", "draft",
                                    "renderer", "parser", "requires", "message"})
MESSAGE_ROLES = ("system", "user", "assistant")

# `ollama create` drops these with "warning: parameter X is deprecated".
DEPRECATED_PARAMETERS = ("penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only",
                         "use_mlock", "mirostat", "mirostat_tau", "mirostat_eta")

# Ollama's own error texts, reproduced so users can search for them.
ERR_INVALID_COMMAND = ('command must be one of "from", "license", "template", "system", "adapter", '
                       '"draft", "renderer", "parser", "parameter", "message", or "requires"')
ERR_INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'
ERR_MISSING_FROM = "no FROM line"
ERR_EOF = "unexpected EOF"

_SEMVER = re.compile(r"v?(0|[1-9]\d*)(\.(0|[1-9]\d*)(\.(0|[1-9]\d*))?)?"
                     r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?")


class ModelfileError(DataError):
    """A Modelfile that Ollama would reject: one line naming the file, line and fix.

    `kind` is Ollama's error class ("ParserError", "ErrUnexpectedEOF", "errMissingFrom", or
    "FormatParams"/"CreateRequest" for the checks `ollama create` makes after parsing) and
    `ollama_error` is the exact text Ollama prints for the same input.
    """

    def __init__(self, message: str, *, path=None, line: int | None = None, fix: str | None = None,
                 kind: str = "", ollama_error: str = ""):
        super().__init__(message, path=path, line=line, fix=fix)
        self.kind = kind
        self.ollama_error = ollama_error


@dataclass
class Modelfile:
    """Parsed Modelfile: the ordered `(name, value)` commands, in Ollama's naming.

    Equality compares commands only; `lines` (1-based line of each command's instruction),
    `path` and `warnings` are bookkeeping for error messages.
    """

    commands: list[tuple[str, str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list, compare=False, repr=False)
    path: str | None = field(default=None, compare=False, repr=False)
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    def values(self, name: str) -> list[str]:
        """Every value of command `name`, in file order."""
        return [value for cmd, value in self.commands if cmd == name]

    def _last(self, name: str) -> str | None:
        found = self.values(name)
        return found[-1] if found else None

    @property
    def model(self) -> str | None:
        """The first FROM (the base model; a later FROM is usually a projector)."""
        found = self.values("model")
        return found[0] if found else None

    @property
    def template(self) -> str | None:
        """The TEMPLATE in force: the last one wins, as in Ollama."""
        return self._last("template")

    @property
    def system(self) -> str | None:
        """The SYSTEM in force: the last one wins."""
        return self._last("system")

    @property
    def adapter(self) -> str | None:
        """The ADAPTER in force: Ollama keeps only the last one."""
        return self._last("adapter")

    @property
    def requires(self) -> str | None:
        return self._last("requires")

    @property
    def licenses(self) -> list[str]:
        return self.values("license")

    @property
    def messages(self) -> list[dict[str, str]]:
        """MESSAGE seeds as chat messages (split at the first ": ", like CreateRequest)."""
        out = []
        for value in self.values("message"):
            role, _, content = value.partition(": ")
            out.append({"role": role, "content": content})
        return out

    @property
    def stops(self) -> list[str]:
        """Every `PARAMETER stop` value, in order."""
        return self.values("stop")

    @property
    def raw_parameters(self) -> list[tuple[str, str]]:
        """PARAMETER commands as written (any name, untyped)."""
        return [(n, v) for n, v in self.commands if n not in NON_PARAMETER_COMMANDS]

    @property
    def parameters(self) -> dict[str, object]:
        """Typed parameters as `ollama create` sends them: stop is a list, the last scalar wins.

        Raises ModelfileError for an unknown name or a badly typed value; deprecated names are
        dropped, as Ollama does.
        """
        return typed_parameters(self)[0]

    def create_request(self) -> dict[str, object]:
        """The `/api/create` body Ollama's CLI builds from this Modelfile.

        FROM goes to "from" as written: uploading local files as blobs (Ollama's "files" digest
        map) is the caller's job, and ADAPTER/DRAFT paths are left out for the same reason.
        """
        req: dict[str, object] = {}
        for name in ("model", "template", "system", "renderer", "parser"):
            value = self._last(name)
            if value is not None:
                req["from" if name == "model" else name] = value
        if self.requires is not None:
            req["requires"] = check_requires(self, self.requires).removeprefix("v")
        if self.licenses:
            req["license"] = self.licenses
        params = self.parameters
        if params:
            req["parameters"] = params
        if self.messages:
            req["messages"] = self.messages
        return req


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

def decode(data: bytes, *, path=None, strict: bool = False) -> str:
    """Decode Modelfile bytes like Ollama's `unicode.BOMOverride(UTF8)` reader.

    A UTF-8 BOM is stripped, UTF-16 LE/BE with a BOM is decoded, anything else is UTF-8. Ollama
    turns undecodable bytes into U+FFFD silently; with `strict` we raise a one-line error instead.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        encoding, data = "utf-8", data[3:]
    elif data.startswith(b"\xff\xfe"):
        encoding, data = "utf-16-le", data[2:]
    elif data.startswith(b"\xfe\xff"):
        encoding, data = "utf-16-be", data[2:]
    else:
        encoding = "utf-8"
    try:
        return data.decode(encoding, errors="strict" if strict else "replace")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1 if encoding == "utf-8" else None
        raise ModelfileError(f"not valid {encoding.upper()} (byte {e.start} cannot be decoded)",
                             path=path or "Modelfile", line=line,
                             fix="save the Modelfile as UTF-8", kind="encoding") from None


# ----------------------------------------------------------------------------------------------
# Parsing: a port of parser.ParseFile
# ----------------------------------------------------------------------------------------------

_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


def _is_space(ch: str) -> bool:
    return ch == " " or ch == "\t"


def _is_newline(ch: str) -> bool:
    return ch == "\r" or ch == "\n"


def _is_alpha(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def is_print(ch: str) -> bool:
    # Python's isprintable() is Go's strconv.IsPrint: letters, marks, numbers, punctuation,
    # symbols and the ASCII space; other separators and all control/format runes are not.
    return ch.isprintable()


def _unquote(s: str) -> tuple[str, bool]:
    """Ollama's unquote: strip triple or double quotes; False while a quote is still open."""
    if s.startswith('"""'):
        if len(s) >= 6 and s.endswith('"""'):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


def _value_closed(buf: list[str]) -> bool:
    """Whether `_unquote(_go_trim(buf))` succeeds, without joining the buffer.

    Ollama re-checks the whole value at every newline; doing that by joining would make long
    multi-line values (licenses) quadratic, so only the ends are inspected.
    """
    i, j = 0, len(buf) - 1
    while i <= j and buf[i] in " \t\r\n":
        i += 1
    while j >= i and buf[j] in " \t\r\n":
        j -= 1
    if i > j or buf[i] != '"':
        return True
    length = j - i + 1
    if length >= 3 and buf[i + 1] == '"' and buf[i + 2] == '"':
        return length >= 6 and buf[j] == buf[j - 1] == buf[j - 2] == '"'
    return length >= 2 and buf[j] == '"'


def _go_trim(s: str) -> str:
    # Only these whitespace runes can reach the buffer (other Unicode spaces are not IsPrint).
    return s.strip(" \t\r\n")


def _next_state(ch: str, state: int) -> tuple[int, str | None, str | None]:
    """parseRuneForState: (next state, rune to keep or None, error kind or None)."""
    if state == _NIL:
        if ch == "#":
            return _COMMENT, None, None
        if _is_space(ch) or _is_newline(ch):
            return _NIL, None, None
        return _NAME, ch, None
    if state == _NAME:
        if _is_alpha(ch):
            return _NAME, ch, None
        if _is_space(ch):
            return _VALUE, None, None
        return _NIL, None, "ParserError"
    if state == _VALUE:
        if _is_newline(ch) or _is_space(ch):
            return _NIL, ch, None
        return _VALUE, ch, None
    if state in (_PARAMETER, _MESSAGE):
        ok = _is_alpha(ch) or (state == _PARAMETER and ("0" <= ch <= "9" or ch == "_"))
        if ok:
            return state, ch, None
        if _is_space(ch):
            return _VALUE, None, None
        return _NIL, None, "ErrUnexpectedEOF"
    # _COMMENT
    return (_NIL if _is_newline(ch) else _COMMENT), None, None


class _Parser:
    """State for one ParseFile run, plus the real line numbers Ollama does not track."""

    def __init__(self, text: str, path) -> None:
        self.text = text
        self.path = path if path is not None else "Modelfile"
        self.state = _NIL
        self.buf: list[str] = []
        self.name = ""
        self.role = ""
        self.keyword = ""  # the instruction as written, for messages
        self.pos = 0
        self.ollama_line = 1  # Ollama's counter: bumped on every \r and \n read
        self.line = 1  # the real line (CRLF counts once)
        self.cmd_line = 1  # the real line where the current instruction starts
        self.mf = Modelfile(path=None if path is None else str(path))

    def error(self, kind: str, ollama: str, message: str, fix: str, line: int | None = None):
        raise ModelfileError(message, path=self.path, line=line or self.cmd_line, fix=fix,
                             kind=kind, ollama_error=ollama)

    def run(self) -> Modelfile:
        text = self.text
        for i, ch in enumerate(text):
            self.pos = i
            if _is_newline(ch):
                self.ollama_line += 1
            self.step(ch)
            if ch == "\n" or (ch == "\r" and text[i + 1: i + 2] != "\n"):
                self.line += 1
        self.flush()
        if "model" not in (name for name, _ in self.mf.commands):
            self.error("errMissingFrom", ERR_MISSING_FROM, ERR_MISSING_FROM,
                       'add "FROM <model name or path/to/model.gguf>"', line=1)
        return self.mf

    def rest(self) -> str:
        """The rest of the current word after the rune being read, for messages."""
        match = re.match(r"[^\s]*", self.text[self.pos + 1:])
        return one_line(match.group(0)[:40]) if match else ""

    def step(self, ch: str) -> None:
        state = self.state
        nxt, keep, err = _next_state(ch, state)
        if err:
            self.fail_on_rune(ch, err)
        if nxt != state:
            if state == _NIL:
                self.cmd_line = self.line
            elif state == _NAME:
                nxt = self.end_keyword(nxt)
            elif state == _PARAMETER:
                self.name = "".join(self.buf)
            elif state == _MESSAGE:
                self.end_role()
            elif state == _VALUE:
                if _is_space(ch) or not _value_closed(self.buf):
                    self.buf.append(ch)  # inner space, or a newline inside an open quote
                    return
                self.append(_unquote(_go_trim("".join(self.buf)))[0])
            self.buf = []
            self.state = nxt
        if keep is not None and is_print(keep):
            self.buf.append(keep)

    def end_keyword(self, nxt: int) -> int:
        word = "".join(self.buf)
        lower = word.lower()
        if lower not in INSTRUCTIONS:
            self.error("ParserError", f"(line {self.ollama_line}): {ERR_INVALID_COMMAND}",
                       f'unknown instruction "{word}"', _instruction_fix(word))
        self.keyword = word.upper()
        if lower == "from":
            self.name = "model"
        elif lower == "parameter":
            return _PARAMETER
        elif lower == "message":
            self.name = "message"
            return _MESSAGE
        else:
            self.name = lower
        return nxt

    def end_role(self) -> None:
        role = "".join(self.buf)
        if role not in MESSAGE_ROLES:
            got = f'role "{role}" is invalid' if role else "role is empty (two spaces after MESSAGE?)"
            self.error("ParserError", f"(line {self.ollama_line}): {ERR_INVALID_ROLE}",
                       f"MESSAGE {got}", ERR_INVALID_ROLE + ", in lowercase")
        self.role = role

    def append(self, value: str) -> None:
        if self.role:
            value = f"{self.role}: {value}"
            self.role = ""
        self.mf.commands.append((self.name, value))
        self.mf.lines.append(self.cmd_line)

    def fail_on_rune(self, ch: str, kind: str) -> None:
        """An unexpected rune inside an instruction keyword, PARAMETER name or MESSAGE role."""
        word = "".join(self.buf)
        shown = "a line break" if _is_newline(ch) else f'"{one_line(ch)}"'
        if kind == "ParserError":
            ollama = f"(line {self.ollama_line}): {ERR_INVALID_COMMAND}"
            if word.lower() in INSTRUCTIONS and _is_newline(ch):
                self.error(kind, ollama, f"{word.upper()} has no value",
                           f'write "{word.upper()} <value>" on one line')
            if word.lower() in INSTRUCTIONS:
                self.error(kind, ollama, f"unexpected {shown} after {word}",
                           "put a space or tab between the instruction and its value")
            self.error(kind, ollama, f'unknown instruction "{word}{"" if _is_newline(ch) else ch + self.rest()}"',
                       _instruction_fix(word))
        ollama = f"{ERR_EOF}: {word}"
        if _is_newline(ch):
            self.fail_missing_value(ollama, word)
        if self.state == _PARAMETER:
            self.error(kind, ollama, f'invalid character {shown} in PARAMETER name "{word}{ch}{self.rest()}"',
                       "parameter names use only letters, digits and _, e.g. top_k")
        self.error(kind, ollama, f'invalid character {shown} after MESSAGE role "{word}"',
                   'write "MESSAGE <system|user|assistant> <content>"')

    def flush(self) -> None:
        """End of input: finish the last value, or report what was left open."""
        if self.state in (_NIL, _COMMENT):
            return
        if self.state == _VALUE:
            raw = _go_trim("".join(self.buf))
            value, ok = _unquote(raw)
            if ok:
                self.append(value)
                return
            quote = '"""' if raw.startswith('"""') else '"'
            if quote in raw[len(quote):]:
                self.error("ErrUnexpectedEOF", ERR_EOF, f"{self.keyword} has text after its closing {quote}",
                           "a quoted value must end with its closing quotes; quote the whole value")
            self.error("ErrUnexpectedEOF", ERR_EOF, f"{self.keyword} value opens {quote} that is never closed",
                       f"end the value with {quote}, with nothing after it on that line")
        word = "".join(self.buf)
        if self.state == _NAME and word.lower() not in INSTRUCTIONS:
            self.error("ErrUnexpectedEOF", ERR_EOF, f'unknown instruction "{word}"', _instruction_fix(word))
        if self.state == _NAME:
            self.error("ErrUnexpectedEOF", ERR_EOF, f"{word.upper()} has no value",
                       f'write "{word.upper()} <value>"')
        self.fail_missing_value(ERR_EOF, word)

    def fail_missing_value(self, ollama: str, word: str) -> None:
        """A PARAMETER name or MESSAGE role with nothing after it."""
        what, part = ("PARAMETER", "value") if self.state == _PARAMETER else ("MESSAGE", "content")
        word = word or ("<name>" if what == "PARAMETER" else "<role>")
        self.error("ErrUnexpectedEOF", ollama, f"{what} {word} has no {part}",
                   f'write "{what} {word} <{part}>" on one line')


def _instruction_fix(word: str) -> str:
    close = difflib.get_close_matches(word.lower(), INSTRUCTIONS, n=1)
    hint = f"did you mean {close[0].upper()}? " if close else ""
    valid = ", ".join(name.upper() for name in INSTRUCTIONS)
    return f"{hint}command must be one of {valid}; comments start with #"


def one_line(s: str) -> str:
    """Show a value inside a one-line message."""
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def parse(text: str | bytes, *, path=None) -> Modelfile:
    """Parse Modelfile text exactly like Ollama's `parser.ParseFile`.

    Bytes are decoded as Ollama does (BOM override, lenient UTF-8). Raises ModelfileError (a
    DataError: `path:line: message (fix)`) for anything Ollama rejects.
    """
    if isinstance(text, (bytes, bytearray)):
        text = decode(bytes(text), path=path)
    elif text.startswith("\ufeff"):
        text = text[1:]
    return _Parser(text, path).run()


# ----------------------------------------------------------------------------------------------
# Typed checks (what `ollama create` does after parsing)
# ----------------------------------------------------------------------------------------------

def typed_parameters(mf: Modelfile) -> tuple[dict[str, object], list[str]]:
    """(parameters, warnings) as `Modelfile.CreateRequest` builds them.

    Stop values accumulate into a list; for other names the last line wins. Deprecated names are
    dropped with a warning. Unknown names and bad values raise ModelfileError.
    """
    params: dict[str, object] = {}
    warnings: list[str] = []
    for (name, raw), line in zip(mf.commands, command_lines(mf)):
        if name in NON_PARAMETER_COMMANDS:
            continue
        where = dict(path=mf.path or "Modelfile", line=line)
        if name in DEPRECATED_PARAMETERS:
            warnings.append(f"{where['path']}:{line}: parameter {name} is deprecated; Ollama ignores it")
            continue
        if name not in OLLAMA_OPTION_TYPES:
            raise _unknown_parameter(name, raw, where)
        try:
            value = parse_value(name, raw)
        except ValueError as e:
            raise ModelfileError(f'PARAMETER {name} "{one_line(raw)}" is not {TYPE_WORDS[OLLAMA_OPTION_TYPES[name]]}',
                                 fix=f"Ollama says: {e}", kind="FormatParams",
                                 ollama_error=str(e), **where) from None
        if isinstance(value, list):
            params.setdefault(name, [])
            params[name].extend(value)  # type: ignore[union-attr]
        else:
            params[name] = value
    return params, warnings


def _unknown_parameter(name: str, raw: str, where: dict) -> ModelfileError:
    ollama = f"unknown parameter '{name}'"
    valid = ", ".join(OLLAMA_OPTION_TYPES)
    if not name:
        return ModelfileError("empty parameter name (two spaces after PARAMETER?)",
                              fix=f'write "PARAMETER <name> <value>"; valid: {valid}',
                              kind="FormatParams", ollama_error=ollama, **where)
    close = difflib.get_close_matches(name.lower(), OLLAMA_OPTION_TYPES, n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return ModelfileError(f'unknown parameter "{name}"', fix=f"{hint}valid: {valid}",
                          kind="FormatParams", ollama_error=ollama, **where)


def command_lines(mf: Modelfile) -> list[int | None]:
    """The line of each command, or None for each when `mf` was built by hand without lines."""
    return list(mf.lines) if len(mf.lines) == len(mf.commands) else [None] * len(mf.commands)


def _line_of(mf: Modelfile, name: str, last: bool = True) -> int | None:
    found = [line for (n, _), line in zip(mf.commands, command_lines(mf)) if n == name]
    return (found[-1] if last else found[0]) if found else None


def check_requires(mf: Modelfile, value: str) -> str:
    """REQUIRES must be a semantic version, as `ollama create` demands; returns it unchanged."""
    if not _SEMVER.fullmatch(value):
        raise ModelfileError(f'REQUIRES "{one_line(value)}" is not a version',
                             path=mf.path or "Modelfile", line=_line_of(mf, "requires"),
                             fix="use a version like 0.14.0", kind="CreateRequest",
                             ollama_error="requires must be a valid semver (e.g. 0.14.0)")
    return value


def read_file(path: str | os.PathLike) -> Modelfile:
    """Read and parse a user's Modelfile: bytes decoded strictly (a bad byte is an error naming
    its line, not a silent U+FFFD), then parsed as Ollama does."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("Modelfile not found", path=path, fix="check the path") from None
    except IsADirectoryError:
        raise DataError("is a directory, not a Modelfile", path=path,
                        fix="pass the Modelfile inside it") from None
    return parse(decode(data, path=path, strict=True), path=path)

"""Modelfile parser, renderer, checks and builder, against Ollama's own conformance cases.

The cases are read from ../shared/conformance/ollama (next to the repository); those tests skip
when it is absent. Nothing from that folder is copied here.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from toolkit.chat.families import CHATML, SMOLLM2_DEFAULT_SYSTEM
from toolkit.errors import ConfigError, DataError
from toolkit.export.modelfile import checks, writer
from toolkit.modelfile import parser, values
from toolkit.modelfile.parser import ModelfileError
from toolkit.params import OLLAMA_OPTION_TYPES

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared/conformance/ollama"
MISSING = pytest.mark.skip(reason=f"Ollama conformance material not found at {CONFORMANCE}")


def _load_cases() -> list[dict] | None:
    path = CONFORMANCE / "parser-cases.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


CASES = _load_cases()


def _case_id(index: int, case: dict) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", (case.get("name") or case.get("note") or "").lower()).strip("-")
    return f"{index:03d}-{'valid' if case['valid'] else 'invalid'}-{slug[:40]}"


def _params(select=lambda case: True) -> list:
    if CASES is None:
        return [pytest.param(None, marks=MISSING, id="conformance-missing")]
    return [pytest.param(c, id=_case_id(i, c)) for i, c in enumerate(CASES) if select(c)]


def _input_bytes(case: dict) -> bytes:
    if case.get("input_b64") is not None:
        return base64.b64decode(case["input_b64"])
    return case["input"].encode("utf-8")


def test_conformance_corpus_is_complete():
    if CASES is None:
        pytest.skip(f"Ollama conformance material not found at {CONFORMANCE}")
    assert len(CASES) == 136
    assert sum(c["valid"] for c in CASES) == 114


# ---------------------------------------------------------------------------------------------
# Conformance: every parser case
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _params())
def test_parser_case(case):
    """Valid exactly when Ollama's ParseFile accepts it, with the same commands or error."""
    data = _input_bytes(case)
    if case["valid"]:
        mf = parser.parse(data)
        assert [list(c) for c in mf.commands] == case["commands"]
        assert len(mf.lines) == len(mf.commands)
        return
    with pytest.raises(ModelfileError) as info:
        parser.parse(data)
    err = info.value
    assert err.kind == case["error_kind"]
    assert err.ollama_error == case["error"]  # Ollama's exact text, kept on the exception
    message = str(err)
    assert "\n" not in message and message.startswith(f"Modelfile:{err.line}: ")
    assert err.fix  # every error says how to fix it
    if "error_line" in case:
        # Ollama counts a line when it reads the newline, so an error raised *by* that newline
        # (e.g. "FROM\n") is reported one line late; we name the instruction's own line.
        text = data.decode("utf-8")
        by_newline = text.splitlines()[err.line - 1].strip().isalpha()
        assert err.line == case["error_line"] - (1 if by_newline else 0)


@pytest.mark.parametrize("case", _params(lambda c: c["valid"]))
def test_parser_case_text_input(case):
    """Parsing the decoded text gives the same commands as parsing the bytes."""
    assert [list(c) for c in parser.parse(case["input"]).commands] == case["commands"]


@pytest.mark.parametrize("case", _params(lambda c: "roundtrip" in c))
def test_render_matches_ollama_string(case):
    """render() is Ollama's Modelfile.String(), and re-parses to the same commands
    except where Ollama's own form loses a FROM's surrounding spaces (FROM is never quoted)."""
    mf = parser.parse(_input_bytes(case))
    text = writer.render(mf)
    assert text == case["roundtrip"]
    lossy = any(n == "model" and v != v.strip() for n, v in mf.commands)
    if not lossy:
        assert parser.parse(text).commands == mf.commands


@pytest.mark.parametrize("case", _params(lambda c: "create_request" in c))
def test_create_request(case):
    assert parser.parse(_input_bytes(case)).create_request() == case["create_request"]


@pytest.mark.parametrize("case", _params(lambda c: c["valid"]))
def test_typed_parameters_follow_ollama_create(case):
    """Names outside api.Options/Runner are rejected like `ollama create` does;
    deprecated ones are dropped with a warning."""
    mf = parser.parse(_input_bytes(case))
    names = [n for n, _ in mf.raw_parameters]
    unknown = [n for n in names
               if n not in OLLAMA_OPTION_TYPES and n not in parser.DEPRECATED_PARAMETERS]
    if unknown:
        with pytest.raises(ModelfileError) as info:
            parser.typed_parameters(mf)
        assert info.value.ollama_error == f"unknown parameter '{unknown[0]}'"
        return
    params, warnings = parser.typed_parameters(mf)
    assert set(params) == {n for n in names if n in OLLAMA_OPTION_TYPES}
    assert len(warnings) == sum(n in parser.DEPRECATED_PARAMETERS for n in names)


# ---------------------------------------------------------------------------------------------
# Accessors and typing
# ---------------------------------------------------------------------------------------------

EXAMPLE = """# a fine-tune
FROM ./model.gguf
FROM ./mmproj.gguf
TEMPLATE first
TEMPLATE \"\"\"{{ .Prompt }}\"\"\"
PARAMETER stop <|im_start|>
PARAMETER stop "<|im_end|>"
PARAMETER temperature 0.7
PARAMETER temperature 0.2
PARAMETER num_ctx 4096
PARAMETER use_mmap false
PARAMETER penalize_newline true
SYSTEM You are terse.
LICENSE MIT
LICENSE Apache-2.0
MESSAGE user Hi: there
MESSAGE assistant Hello!
ADAPTER ./a.gguf
REQUIRES v0.14.0
"""


def test_accessors():
    mf = parser.parse(EXAMPLE, path="Modelfile")
    assert mf.model == "./model.gguf"
    assert mf.template == "{{ .Prompt }}"  # the last TEMPLATE wins, as in Ollama
    assert mf.system == "You are terse."
    assert mf.stops == ["<|im_start|>", "<|im_end|>"]
    assert mf.licenses == ["MIT", "Apache-2.0"]
    assert mf.messages == [{"role": "user", "content": "Hi: there"},
                           {"role": "assistant", "content": "Hello!"}]
    assert mf.adapter == "./a.gguf" and mf.requires == "v0.14.0"
    assert mf.parameters == {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2,
                             "num_ctx": 4096, "use_mmap": False}
    assert mf.lines[:3] == [2, 3, 4]
    assert mf.create_request()["requires"] == "0.14.0"


def test_float_parameters_are_float32_like_ollama():
    mf = parser.parse("FROM x\nPARAMETER top_p 0.1\nPARAMETER min_p 1e-3\nPARAMETER temperature 1\n")
    assert mf.parameters == {"top_p": 0.1, "min_p": 0.001, "temperature": 1.0}
    assert values.parse_value("temperature", "0.123456789") == 0.12345679  # float32 precision


@pytest.mark.parametrize("name, raw", [("num_ctx", "1.0"), ("num_ctx", "4k"), ("top_k", "1e3"),
                                       ("temperature", "hot"), ("temperature", "nan"),
                                       ("temperature", "1e39"), ("use_mmap", "yes")])
def test_bad_parameter_values(name, raw):
    mf = parser.parse(f"FROM x\n\nPARAMETER {name} {raw}\n", path="Modelfile")
    with pytest.raises(ModelfileError) as info:
        _ = mf.parameters
    message = str(info.value)
    assert message.startswith(f"Modelfile:3: PARAMETER {name} \"{raw}\" is not ")
    assert "\n" not in message
    assert info.value.ollama_error.startswith("invalid ")


def test_go_bool_and_int_spellings():
    assert values.parse_value("use_mmap", "T") is True
    assert values.parse_value("use_mmap", "0") is False
    assert values.parse_value("seed", "-1") == -1
    assert values.parse_value("seed", "+7") == 7


# ---------------------------------------------------------------------------------------------
# One-line error messages
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("FROM x\nPARAMETER temprature 0.7\n",
     'Modelfile:2: unknown parameter "temprature" (did you mean "temperature"? valid: '),
    ("FROM x\nPARAMTER temperature 0.7\n",
     'Modelfile:2: unknown instruction "PARAMTER" (did you mean PARAMETER? command must be one of FROM'),
    ("FROM x\nPARAMETER top-k 40\n", 'Modelfile:2: invalid character "-" in PARAMETER name "top-k"'),
    ("FROM x\nMESSAGE User hi\n", 'Modelfile:2: MESSAGE role "User" is invalid (message role must be one of'),
    ("FROM x\n\nSYSTEM \"\"\"never closed\n", 'Modelfile:3: SYSTEM value opens """ that is never closed'),
    ('FROM x\nSYSTEM "a" b\n', 'Modelfile:2: SYSTEM has text after its closing "'),
    ("PARAMETER seed 1\n", 'Modelfile:1: no FROM line (add "FROM '),
    ("FROM\n", "Modelfile:1: FROM has no value"),
    ("FROM x\r\n\r\nPARAMETER seed\r\n", "Modelfile:3: PARAMETER seed has no value"),
    ("FROM x\nPARAMETER  seed 1\n", "Modelfile:2: empty parameter name"),
    ("FROM x\nREQUIRES soon\n", 'Modelfile:2: REQUIRES "soon" is not a version'),
    ("FROM x\nTEMPLATE \"\"\"ok\n{{ if .System }}\"\"\"\n", "Modelfile:3: TEMPLATE is not a valid Go template"),
])
def test_error_messages_are_one_line_with_line_and_fix(text, expected):
    with pytest.raises(DataError) as info:
        mf = parser.parse(text)
        checks.check(mf)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message and message.endswith(")")  # "(fix)" closes the line


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def test_validate_file_reads_bytes_and_reports_encoding(tmp_path):
    good = tmp_path / "Modelfile"
    good.write_bytes("\ufeffFROM ./m.gguf\nSYSTEM café\nPARAMETER mirostat 1\n".encode("utf-16"))
    mf = checks.validate_file(good)
    assert mf.system == "café" and mf.path == str(good)
    assert mf.warnings == [f"{good}:3: parameter mirostat is deprecated; Ollama ignores it"]

    bad = tmp_path / "Latin1"
    bad.write_bytes(b"FROM x\nSYSTEM caf\xe9\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}:2: not valid UTF-8 .*\(save the Modelfile as UTF-8\)$"):
        checks.validate_file(bad)
    assert parser.parse(b"FROM x\nSYSTEM caf\xe9\n").system == "caf\ufffd"  # Ollama is lenient

    with pytest.raises(DataError, match="Modelfile not found"):
        checks.validate_file(tmp_path / "nope")


def test_validate_file_checks_adapter_relative_to_the_file(tmp_path):
    path = tmp_path / "Modelfile"
    path.write_text("FROM x\nADAPTER ./lora.gguf\n")
    with pytest.raises(ModelfileError, match=r":2: ADAPTER \"./lora.gguf\" does not exist"):
        checks.validate_file(path)
    (tmp_path / "lora.gguf").write_bytes(b"GGUF")
    assert checks.validate_file(path).adapter == "./lora.gguf"


def test_write_is_atomic_and_refuses_invalid_text(tmp_path):
    mf = parser.parse("FROM x\nSYSTEM \"\"\"two\nlines\"\"\"\n")
    out = writer.write(tmp_path / "sub" / "Modelfile", mf)
    assert out.read_text() == 'FROM x\nSYSTEM "two\nlines"\n'
    with pytest.raises(ModelfileError):
        writer.write(tmp_path / "bad", "SYSTEM no from\n")
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------

def _build(**kwargs) -> str:
    args = dict(from_="./smollm2-135m.Q8_0.gguf", template=CHATML.template,
                stops=list(CHATML.stops))
    args.update(kwargs)
    return writer.build_modelfile(**args)


def test_build_modelfile_layout():
    text = _build(system=SMOLLM2_DEFAULT_SYSTEM,
                  parameters={"temperature": 0.7, "num_ctx": 2048, "use_mmap": True},
                  license="Apache License 2.0\n\n\"as is\"\n")
    lines = text.splitlines()
    assert lines[0] == "FROM ./smollm2-135m.Q8_0.gguf"
    assert lines[1].startswith('TEMPLATE """{{- $role := "" }}{{ range .Messages }}')
    mf = parser.parse(text)
    assert [n for n, _ in mf.commands] == ["model", "template", "stop", "stop", "system",
                                           "temperature", "num_ctx", "use_mmap", "license"]
    assert mf.template == CHATML.template
    assert mf.parameters == {"stop": list(CHATML.stops), "temperature": 0.7,
                             "num_ctx": 2048, "use_mmap": True}
    assert "PARAMETER stop <|im_end|>\n" in text and text.endswith("\n")
    checks.check(mf)


@pytest.mark.parametrize("value", ["\n", "  padded  ", '"quoted"', 'say "hi"', "a\r\nb", '"""',
                                   "ends with quote\"", "x\n\"\"\"\ny", "tab\tinside", "#hash",
                                   "", "'single'", "emoji 👋 ok", '"', '""', 'a"\nb'])
def test_build_modelfile_round_trips_awkward_values(value):
    """Any value is either written so that Ollama reads it back exactly, or refused."""
    for kwargs in ({"stops": ["<|im_end|>", value]}, {"system": value}, {"license": value}):
        try:
            text = _build(**kwargs)
        except ConfigError as e:
            # Refused: the empty stop token, and text no Modelfile quoting can carry (a line
            # that is just """ ends a triple quote, and a line ending in " ends a double one).
            assert ("stops" in kwargs and not value) or value == 'x\n"""\ny', str(e)
            continue
        mf = parser.parse(text)
        if "system" in kwargs:
            assert mf.system == value
        elif "license" in kwargs:
            assert mf.licenses == [value]
        else:
            assert mf.stops == ["<|im_end|>", value]


def test_build_modelfile_accepts_decoding_params_options():
    text = _build(parameters={"temperature": 0.8, "top_k": 40, "num_predict": 256, "seed": 42,
                              "repeat_penalty": 1.1, "min_p": 0.0, "stop": ["<|im_end|>", "</s>"]})
    mf = parser.parse(text)
    assert mf.stops == ["<|im_start|>", "<|im_end|>", "</s>"]  # merged, no duplicates
    assert mf.parameters["min_p"] == 0.0 and mf.parameters["seed"] == 42


@pytest.mark.parametrize("kwargs, message", [
    ({"parameters": {"temprature": 0.7}}, 'unknown Ollama parameter "temprature" (did you mean "temperature"?'),
    ({"parameters": {"num_ctx": 2048.5}}, "parameter num_ctx=2048.5 must be a whole number"),
    ({"parameters": {"top_k": True}}, "parameter top_k=True must be a whole number"),
    ({"parameters": {"temperature": float("inf")}}, "parameter temperature must be finite"),
    ({"parameters": {"mirostat": 1}}, "parameter mirostat is deprecated"),
    ({"stops": [""]}, "stop token '' must be a non-empty string"),
    ({"template": "{{ if .Messages }}"}, "TEMPLATE is not a valid Go template"),
    ({"template": "  "}, "TEMPLATE is empty"),
    ({"from_": " m"}, "FROM ' m' is empty or has surrounding spaces"),
    ({"system": "bell\x07"}, "SYSTEM value contains '\\x07'"),
])
def test_build_modelfile_rejects_with_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as info:
        _build(**kwargs)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_build_modelfile_refuses_values_no_quoting_can_carry():
    # A line ending in """ closes a triple quote early and a line ending in " closes a double one.
    with pytest.raises(ConfigError, match="cannot be written in a Modelfile"):
        _build(system='one"""\ntwo"\nthree')

"""Go template evaluator: Ollama's upstream template renders, its execution modes, and Go semantics.

Expected renders are read from ../shared/conformance/ollama (next to the repository); those tests
skip when it is absent. Nothing from that folder is copied here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from toolkit.chat.detect import match, ollama_template_for
from toolkit.chat.families import CHATML, FAMILIES, SMOLLM2_DEFAULT_SYSTEM, default_system_prompt, end_of_turn_tokens
from toolkit.chat.gotemplate.errors import TemplateError, TemplateUnsupported
from toolkit.chat.gotemplate.parser import parse
from toolkit.chat.parity import run_suite
from toolkit.chat.render import render_chat
from toolkit.errors import ConfigError

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared/conformance/ollama"
MISSING = pytest.mark.skip(reason=f"Ollama conformance material not found at {CONFORMANCE}")


def _load() -> dict | None:
    path = CONFORMANCE / "template-cases.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


CASES = _load()
# Upstream TestTemplate strips one trailing space from these templates' output before comparing.
TRAILING_SPACE_STRIPPED = {"chatqa", "llama2-chat", "mistral-instruct", "openchat", "vicuna"}


def _render_params() -> list:
    if CASES is None:
        return [pytest.param(None, None, marks=MISSING, id="conformance-missing")]
    return [pytest.param(t, fixture, id=f"{t['name']}-{fixture}")
            for t in CASES["templates"] for fixture in sorted(t.get("expected") or {})]


def _template_params() -> list:
    if CASES is None:
        return [pytest.param(None, marks=MISSING, id="conformance-missing")]
    return [pytest.param(t, id=t["name"]) for t in CASES["templates"]]


def _fixtures() -> dict[str, list[dict]]:
    if CASES is None:
        pytest.skip(f"Ollama conformance material not found at {CONFORMANCE}")
    return CASES["fixtures"]


# ---------------------------------------------------------------------------------------------
# Conformance: every upstream template x fixture
# ---------------------------------------------------------------------------------------------

def test_conformance_corpus_is_complete():
    if CASES is None:
        pytest.skip(f"Ollama conformance material not found at {CONFORMANCE}")
    assert len(CASES["templates"]) == 20
    assert sum(len(t.get("expected") or {}) for t in CASES["templates"]) == 60


@pytest.mark.parametrize("template, fixture", _render_params())
def test_upstream_render(template, fixture):
    out = render_chat(template["gotmpl"], CASES["fixtures"][fixture])
    if template["name"] in TRAILING_SPACE_STRIPPED and out.endswith(" "):
        out = out[:-1]
    assert out == template["expected"][fixture]


# Ollama's label for an HF reference -> the families of ours that may render it exactly.
OUR_NAMES = {"chatml": {"chatml"}, "zephyr": {"zephyr"}, "phi-3": {"phi-3", "phi-3.5"},
             "llama3-instruct": {"llama3-instruct", "llama3.1-instruct"}, "gemma-instruct": {"gemma-instruct"},
             "gemma3-instruct": {"gemma-instruct"}, "llama2-chat": {"llama2-chat"}, "command-r": {"command-r"},
             "mistral-instruct": {"mistral-instruct", "mistral-instruct-legacy", "mistral-instruct-v3"}}
BOS_EOS = {"zephyr": ("<s>", "</s>"), "phi-3": ("<s>", "<|endoftext|>"), "gemma-instruct": ("<bos>", "<eos>"),
           "gemma3-instruct": ("<bos>", "<eos>"), "llama3-instruct": ("<|begin_of_text|>", "<|eot_id|>")}


@pytest.mark.parametrize("template", _template_params())
def test_detection_never_picks_a_family_that_renders_differently(template):
    """Each HF reference in Ollama's index maps to a family whose Go template renders the whole
    parity suite exactly as that reference does, or to nothing; never to a wrongly named one
    (Ollama's edit distance takes Phi-3-mini for Zephyr)."""
    bos, eos = BOS_EOS.get(template["name"], ("<s>", "</s>"))
    for reference in template["jinja_references"]:
        found, _ = match(reference, bos=bos, eos=eos)
        if found is None:
            continue
        assert all(c.ok for c in run_suite(reference, found.template, bos=bos, eos=eos, system=found.system))
        if template["name"] in OUR_NAMES:
            assert found.family.name in OUR_NAMES[template["name"]], (template["name"], found.family.name)
        if template["name"] == "phi-3":
            assert found.family.name != "zephyr"


def test_family_table_names_and_ollama_chatml_equivalence():
    assert [f.name for f in FAMILIES][:4] == ["chatml", "llama3-instruct", "llama3.1-instruct", "gemma-instruct"]
    if CASES is None:
        pytest.skip(f"Ollama conformance material not found at {CONFORMANCE}")
    # our ChatML renders Ollama's upstream fixtures (all end with a user turn) exactly as Ollama's does
    chatml = next(t for t in CASES["templates"] if t["name"] == "chatml")
    for fixture, expected in chatml["expected"].items():
        assert render_chat(CHATML.template, CASES["fixtures"][fixture]) == expected


def test_end_of_turn_tokens_cover_every_family_in_table_order():
    # training takes the first of these in a vocabulary, so the order ChatML, Llama 3, Gemma stays first
    assert end_of_turn_tokens() == ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|end_of_text|>",
                                    "<|END_OF_TURN_TOKEN|>")


# ---------------------------------------------------------------------------------------------
# Conformance: legacy (.System/.Prompt/.Response) equivalence from templates.md
# ---------------------------------------------------------------------------------------------

def _templates_md() -> str:
    path = CONFORMANCE / "templates.md"
    if not path.exists():
        pytest.skip(f"Ollama conformance material not found at {CONFORMANCE}")
    return path.read_text(encoding="utf-8")


def _json_after(text: str, label: str) -> str:
    match = re.search(re.escape(label) + r"\s*`(\"(?:[^\"\\]|\\.)*\")`", text)
    assert match, f"templates.md no longer has {label!r}"
    return json.loads(match.group(1))


def _md_messages(line: str) -> list[dict]:
    return [{"role": r, "content": c} for r, c in re.findall(r'(system|user|assistant) "([^"]*)"', line)]


def test_chatml_legacy_and_messages_templates_render_identically():
    md = _templates_md()
    legacy = _json_after(md, "ChatML legacy template:")
    messages_tmpl = _json_after(md, "ChatML messages template:")
    expected = _json_after(md, "Expected render from both:")
    messages = _md_messages(re.search(r"^- Messages:.*$", md, re.M).group(0))
    assert len(messages) == 4
    assert render_chat(legacy, messages) == expected
    assert render_chat(messages_tmpl, messages) == expected


def test_mistral_legacy_cuts_after_response_only_on_the_last_turn():
    md = _templates_md()
    paragraph = re.search(r"^Mistral legacy .*$", md, re.M).group(0)
    templates = [json.loads(f'"{t}"') for t in re.findall(r"`([^`\"]*\{\{[^`]*)`", paragraph)]
    renders = [json.loads(r) for r in re.findall(r"`(\"(?:[^\"\\]|\\.)*\")`", paragraph)]
    conversation = _md_messages(paragraph.split(" renders ")[0])
    continuation = re.search(r'trailing assistant "([^"]*)"', paragraph).group(1)
    assert len(templates) == 2 and len(renders) == 2 and len(conversation) == 3
    assert render_chat(templates[0], conversation) == renders[0]
    tail = [*conversation, {"role": "assistant", "content": continuation}]
    assert render_chat(templates[1], tail) == renders[1]


# ---------------------------------------------------------------------------------------------
# SmolLM2: HF Jinja vs ChatML + Modelfile SYSTEM
# ---------------------------------------------------------------------------------------------

# SmolLM2-Instruct's chat_template (our default model), as in its tokenizer_config.json.
SMOLLM2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def test_smollm2_maps_to_chatml_with_its_default_system():
    assert ollama_template_for(SMOLLM2_JINJA) == (CHATML.template, tuple(CHATML.stops))
    assert default_system_prompt(SMOLLM2_JINJA) == SMOLLM2_DEFAULT_SYSTEM
    escaped = SMOLLM2_JINJA.replace("\n", "\\n")  # the same template with Jinja-escaped newlines
    assert default_system_prompt(escaped) == SMOLLM2_DEFAULT_SYSTEM


@pytest.mark.parametrize("conversation", [
    [{"role": "user", "content": "2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!\nHow can I help?"},
     {"role": "user", "content": "Tell me {{ nothing }}"}],
])
def test_smollm2_go_render_equals_hf_jinja_render(conversation):
    jinja2 = pytest.importorskip("jinja2")
    hf = jinja2.Environment().from_string(SMOLLM2_JINJA).render(messages=conversation,
                                                                add_generation_prompt=True)
    ours = render_chat(CHATML.template, conversation, system=SMOLLM2_DEFAULT_SYSTEM)
    assert ours == hf


def test_smollm2_equivalence_on_upstream_fixtures():
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(SMOLLM2_JINJA)
    for messages in _fixtures().values():
        hf = template.render(messages=messages, add_generation_prompt=True)
        assert render_chat(CHATML.template, messages, system=SMOLLM2_DEFAULT_SYSTEM) == hf


# ---------------------------------------------------------------------------------------------
# Ollama execution semantics
# ---------------------------------------------------------------------------------------------

U, A = "user", "assistant"


def _m(role: str, content: str, **extra) -> dict:
    return {"role": role, "content": content, **extra}


def test_messages_mode_collates_and_joins_system():
    tmpl = "{{ .System }}|{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}"
    msgs = [_m("system", "s1"), _m("system", "s2"), _m(U, "a"), _m(U, "b"),
            _m("tool", "t1"), _m("tool", "t2"), _m(A, "c")]
    assert render_chat(tmpl, msgs) == "s1\n\ns2|[system:s1\n\ns2][user:a\n\nb][tool:t1][tool:t2][assistant:c]"


def test_messages_mode_is_chosen_by_dollar_messages_too():
    tmpl = "{{ range $i, $_ := $.Messages }}{{ $i }}{{ end }}"
    assert render_chat(tmpl, [_m(U, "a"), _m(A, "b")]) == "01"


def test_prompt_only_template_gets_response_appended():
    # Ollama appends {{ .Response }} when a template names neither .Messages nor .Response.
    msgs = [_m(U, "q1"), _m(A, "r1"), _m(U, "q2")]
    assert render_chat("<{{ .Prompt }}>", msgs) == "<q1>r1<q2>"


def test_legacy_mode_turns_and_final_cut():
    tmpl = "{{ if .System }}S:{{ .System }};{{ end }}U:{{ .Prompt }};A:{{ .Response }}<end>;"
    msgs = [_m("system", "sys"), _m(U, "q1"), _m(A, "r1"), _m("system", "sys2"), _m(U, "q2")]
    assert render_chat(tmpl, msgs) == "S:sys;U:q1;A:r1<end>;S:sys2;U:q2;A:"


def test_legacy_cut_keeps_text_before_response_inside_branches():
    tmpl = "{{ if .Prompt }}[{{ .Prompt }}|{{ .Response }}|after]{{ end }}tail"
    assert render_chat(tmpl, [_m(U, "q")]) == "[q|"


def test_modelfile_system_is_used_only_without_a_system_message():
    tmpl = CHATML.template
    with_default = render_chat(tmpl, [_m(U, "hi")], system="Default.")
    assert with_default.startswith("<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\nhi")
    own = render_chat(tmpl, [_m("system", "Mine."), _m(U, "hi")], system="Default.")
    assert "Default." not in own and own.startswith("<|im_start|>system\nMine.")


def test_tools_and_tool_calls_print_as_ollama_json():
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather <now> & later",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string", "description": "City"}}}}}]
    tmpl = ("{{ range .Tools }}{{ .Function }}{{ end }}|{{ json .Tools }}|"
            "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Name }}({{ .Function.Arguments }})"
            "{{ end }}{{ end }}|{{ range $k, $v := (index .Tools 0).Function.Parameters.Properties }}"
            "{{ $k }}={{ $v.Type }}{{ end }}")
    calls = [{"function": {"name": "get_weather", "arguments": {"unit": "C", "city": "Paris"}}}]
    out = render_chat(tmpl, [_m(U, "?"), _m(A, "", tool_calls=calls)], tools=tools)
    fn = ('{"name":"get_weather","description":"Weather \\u003cnow\\u003e \\u0026 later",'
          '"parameters":{"type":"object","required":["city"],'
          '"properties":{"city":{"type":"string","description":"City"}}}}')
    assert out == (f'{fn}|[{{"type":"function","function":{fn}}}]|'
                   'get_weather({"city":"Paris","unit":"C"})|city=string')


def test_no_tools_is_false_and_missing_keys_print_no_value():
    tmpl = "{{ if .Tools }}T{{ else }}none{{ end }}|{{ .Nope }}|{{ if .Nope }}x{{ end }}"
    assert render_chat(tmpl, [_m(U, "q")]) == "none|<no value>|"


# ---------------------------------------------------------------------------------------------
# Go text/template semantics
# ---------------------------------------------------------------------------------------------

def run(src: str, data: object = None) -> str:
    return parse(src).execute(data if data is not None else {})


@pytest.mark.parametrize("src, data, expected", [
    ("a  {{- 1 -}}  b", {}, "a1b"),
    ("a\n\t{{- /* comment */ -}}\n b", {}, "ab"),
    ("{{/* c */}}x{{-3}}", {}, "x-3"),
    ("{{ if eq .X 1 }}one{{ else if eq .X 2 }}two{{ else }}many{{ end }}", {"X": 2}, "two"),
    ("{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ else }}empty{{ end }}", {"L": ["a", "b"]}, "0=a;1=b;"),
    ("{{ range .L }}x{{ else }}empty{{ end }}", {"L": []}, "empty"),
    ("{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}",
     {"L": [1, 2, 3, 4, 5]}, "13"),
    ("{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }}", {"M": {"b": 2, "a": 1}}, "a1b2"),
    ("{{ range 3 }}{{ . }}{{ end }}", {}, "012"),
    ("{{ with .X }}[{{ . }}]{{ else }}none{{ end }}", {"X": ""}, "none"),
    ("{{ with $y := .X }}{{ $y }}{{ end }}", {"X": "v"}, "v"),
    ("{{ $x := 1 }}{{ range .L }}{{ $x = . }}{{ $tmp := 9 }}{{ end }}{{ $x }}", {"L": [5, 6]}, "6"),
    ("{{ $s := \"\" }}{{ range .L }}{{ $s = printf \"%s%s\" $s . }}{{ end }}{{ $s }}", {"L": ["a", "b"]}, "ab"),
    ("{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 \"\" }} {{ or 0 \"z\" 1 }} {{ not 0 }}", {}, "0 2  z true"),
    ("{{ and .Missing .Missing.Field }}", {}, "<no value>"),  # short-circuit: never evaluated
    ("{{ eq .R \"a\" \"b\" \"c\" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ ge \"b\" \"a\" }}", {"R": "c"}, "true true true true"),
    ("{{ len .S }} {{ len .L }} {{ len .M }}", {"S": "héllo", "L": [1, 2], "M": {"a": 1}}, "6 2 1"),
    ("{{ index .L 1 }} {{ index .M \"k\" }} {{ index .N 0 1 }}", {"L": [1, 2], "M": {"k": "v"}, "N": [[0, 7]]}, "2 v 7"),
    ("{{ len (slice .L 1) }} {{ slice .L 1 2 }} {{ slice \"hello\" 1 3 }}", {"L": [1, 2, 3]}, "2 [2] el"),
    ("{{ printf \"%s|%d|%v|%q|%5.2f|%t|%%|%x\" \"a\" 3 .L \"q\" 3.14159 true 255 }}", {"L": [1, "b"]},
     'a|3|[1 b]|"q"| 3.14|true|%|ff'),
    ("{{ print \"a\" 1 2 \"b\" }}|{{ println 1 \"x\" }}", {}, "a1 2b|1 x\n"),
    ("{{ .F }} {{ .G }} {{ .H }} {{ .I }}", {"F": 1.5, "G": 1e21, "H": 0.00001, "I": 100.0}, "1.5 1e+21 1e-05 100"),
    ("{{ json .X }}", {"X": {"b": [1, 2.5, None, True], "a": "<&>"}}, '{"a":"\\u003c\\u0026\\u003e","b":[1,2.5,null,true]}'),
    ("{{ .A.B }}", {"A": {"B": "deep"}}, "deep"),
    ("{{ (index .L 0).Name }}", {"L": [{"Name": "n"}]}, "n"),
    ("{{ .X | printf \"<%s>\" }}", {"X": "p"}, "<p>"),
    ("{{ \"a\\tb\\n\\u00e9\" }}{{ `raw\\n` }}{{ 'A' }}{{ 0x10 }}{{ 1_000 }}", {}, "a\tb\néraw\\n6516" + "1000"),
    ("{{ $ }}", "dot", "dot"),
    ("{{ nil | not }}", {}, None),
])
def test_go_semantics(src, data, expected):
    if expected is None:
        with pytest.raises(TemplateError):
            run(src, data)
        return
    assert run(src, data) == expected


@pytest.mark.parametrize("src, message", [
    ("{{ if .X }}a", "line 1: unexpected EOF: {{if}} has no {{end}}"),
    ("a\n{{ end }}", "line 2: unexpected {{end}}"),
    ("{{ .X | 3 }}", "line 1: non executable command in pipeline stage 2"),
    ("{{ foo .X }}", 'line 1: function "foo" not defined'),
    ("{{ $y }}", 'line 1: undefined variable "$y"'),
    ("{{ range .L }}{{ $v := 1 }}{{ end }}{{ $v }}", 'line 1: undefined variable "$v"'),
    ("{{ .X", "line 1: unclosed action"),
    ("{{ \"abc }}", "line 1: unterminated quoted string"),
    ("{{ break }}", "line 1: {{break}} outside {{range}}"),
    ("{{ if .A }}{{ else with .B }}{{ end }}", "line 1: {{else with}} inside {{if}}"),
    ("{{/* x */ }}", "line 1: comment ends before closing delimiter"),
])
def test_parse_errors_are_one_line_config_errors(src, message):
    with pytest.raises(ConfigError) as info:
        parse(src)
    assert str(info.value) == message


def test_unsupported_constructs_are_reported_as_such():
    with pytest.raises(TemplateUnsupported, match=r"line 2: \{\{define\}\} is not supported"):
        parse('x\n{{ define "t" }}{{ end }}')
    with pytest.raises(TemplateUnsupported, match="toTypeScriptType"):
        run("{{ toTypeScriptType .X }}", {"X": "string"})


@pytest.mark.parametrize("src, data, message", [
    ("{{ .A.B }}", {}, "nil pointer evaluating interface {}.B"),
    ("{{ .S.X }}", {"S": "str"}, "can't evaluate field X in type string"),
    ("{{ eq 1 1.0 }}", {}, "incompatible types for comparison"),
    ("{{ index .L 5 }}", {"L": [1]}, "index out of range: 5"),
    ("{{ range .S }}{{ end }}", {"S": "abc"}, "range can't iterate over abc"),
])
def test_execution_errors(src, data, message):
    with pytest.raises(TemplateError, match=re.escape(message)):
        run(src, data)


def test_message_fields_are_structs():
    # A struct field that does not exist is an error, as in Go; a map key is just zero.
    with pytest.raises(TemplateError, match="can't evaluate field Nope in type api.Message"):
        render_chat("{{ range .Messages }}{{ .Nope }}{{ end }}", [_m(U, "q")])
    assert render_chat("{{ range .Messages }}{{ if .ToolCalls }}T{{ end }}{{ .Thinking }}{{ end }}",
                         [_m(U, "q")]) == ""


def test_identifiers_match_ollama_vars():
    names = parse("{{ if .System }}{{ $x := $.Messages }}{{ (.Chain).Skipped }}{{ end }}"
                    "{{ range .Tools }}{{ .Function.Name }}{{ end }}").identifiers()
    assert names == {"system", "$", "messages", "tools", "function", "name"}

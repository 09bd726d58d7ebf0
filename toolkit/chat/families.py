"""The chat families the toolkit knows: one table that says, per family, how to recognise its
Hugging Face Jinja chat template, the Go TEMPLATE that renders conversations exactly as that
Jinja template does, the stop strings, the tokens that end a turn, and where its Jinja template
keeps a default system prompt.

Export (Modelfile TEMPLATE/stops/SYSTEM), verify, serve and training read families only here;
toolkit/chat/detect.py picks a family for a template (markers first, then the parity suite).

Conventions every Go template here follows, so that it renders what the HF template renders:
- it never writes the leading BOS: llama.cpp adds it on tokenize when the GGUF's
  `tokenizer.ggml.add_bos_token` is true (toolkit/chat/parity.py documents the rule);
- a conversation that ends with a user (or system) message gets the generation prompt, one that
  ends with an assistant message is rendered closed, as training sees it
  (HF `add_generation_prompt=False`);
- `@BOS@`/`@EOS@` stand for the model's own bos/eos token text (Zephyr ends turns with the eos of
  its tokenizer: `</s>` for TinyLlama and Zephyr, `<|endoftext|>` for StableLM-Zephyr), and other
  `@NAME@` placeholders are read from an HF render (`fills`).
Known, tested differences: Go templates cannot trim, so content with leading/trailing whitespace
is trimmed by the Llama 2/3, Gemma and command-r Jinja templates but not here; and a date that a
Jinja template takes from `strftime_now` is frozen at export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One chat format. `markers` must all appear in an HF Jinja template (and no `excludes`) for
    it to be a candidate; the parity suite then decides. `template` is our Go TEMPLATE."""

    name: str
    markers: tuple[str, ...]
    template: str
    stops: tuple[str, ...]
    end_of_turn: tuple[str, ...]
    # Searched in order in the HF template for the default system message it inserts (group 2).
    default_system: tuple[re.Pattern[str], ...] = ()
    excludes: tuple[str, ...] = ()
    # (placeholder, regex): the placeholder in `template` is group 1 of the regex on an HF render.
    fills: tuple[tuple[str, str], ...] = ()
    # What the HF templates of this family do that the Go template does differently (documented).
    note: str = ""

    def go_template(self, bos: str = "", eos: str = "", fills: dict[str, str] | None = None) -> str:
        """The Go TEMPLATE for a model whose bos/eos token texts are `bos`/`eos`."""
        text = self.template.replace("@BOS@", bos).replace("@EOS@", eos)
        for key, value in (fills or {}).items():
            text = text.replace(key, value)
        return text

    def stop_list(self, eos: str = "") -> list[str]:
        return [s.replace("@EOS@", eos) for s in self.stops if s.replace("@EOS@", eos)]

    @property
    def needs_eos(self) -> bool:
        return "@EOS@" in self.template


# {% set system_message = '<text>' %} in the branch taken when there is no system message
_SET_SYSTEM_MESSAGE = re.compile(r"""set\s+system_message\s*=\s*(['"])((?:(?!\1).)+?)\1""", re.S)
# SmolLM2/Qwen: '<|im_start|>system\n<text><|im_end|>\n' as one string literal
_CHATML_SYSTEM_LITERAL = re.compile(r"""(['"])<\|im_start\|>system(?:\\n|\n)((?:(?!\1).)*?)<\|im_end\|>""", re.S)

# SmolLM2's HF template adds this system turn when the first message is not a system message.
# Ollama gets the same prompt from the ChatML template plus `SYSTEM <this>` in the Modelfile,
# because Ollama inserts the Modelfile SYSTEM exactly when a request has no system message.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Go snippets shared by the templates: `$role` ends as the last message's role.
_GEN_IF_OPEN = '{{ if ne $role "assistant" }}'
# the first message, when it is a system message, is taken out of the turns (HF: messages[1:])
_FIRST_SYSTEM = '{{- if and (eq $i 0) (eq .Role "system") }}{{ $hasSys = true }}{{ $sys = .Content }}'
_SYS_VARS = '{{- $role := "" }}{{ $sys := "" }}{{ $hasSys := false }}{{ $first := true }}'

# ChatML (SmolLM2, Qwen 2/2.5): Ollama's chatml template, closing a final assistant turn.
CHATML = Family(
    name="chatml",
    markers=("<|im_start|>", "<|im_end|>"),
    template=('{{- $role := "" }}{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
              "{{ $role = .Role }}{{ end }}" + _GEN_IF_OPEN + "<|im_start|>assistant\n{{ end }}"),
    stops=("<|im_start|>", "<|im_end|>"),
    end_of_turn=("<|im_end|>",),
    default_system=(_CHATML_SYSTEM_LITERAL, _SET_SYSTEM_MESSAGE),
)

_LLAMA3_TURNS = ("<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>")
_LLAMA3_GEN = _GEN_IF_OPEN + "<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}"

LLAMA3 = Family(
    name="llama3-instruct",
    markers=("<|start_header_id|>", "<|eot_id|>"),
    excludes=("Cutting Knowledge Date",),
    template='{{- $role := "" }}{{ range .Messages }}' + _LLAMA3_TURNS + "{{ $role = .Role }}{{ end }}" + _LLAMA3_GEN,
    stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    end_of_turn=("<|eot_id|>",),
    default_system=(_SET_SYSTEM_MESSAGE,),
    note="HF trims message content; the Go template cannot.",
)

# Llama 3.1/3.2/3.3: a system block with the knowledge and today's date always comes first.
LLAMA31 = Family(
    name="llama3.1-instruct",
    markers=("<|start_header_id|>", "<|eot_id|>", "Cutting Knowledge Date"),
    template=(_SYS_VARS + "{{ range $i, $m := .Messages }}" + _FIRST_SYSTEM + "{{ end }}{{ end }}"
              "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: @KNOWLEDGE@\n"
              "Today Date: @DATE@\n\n{{ $sys }}<|eot_id|>"
              '{{- range $i, $m := .Messages }}{{ if not (and (eq $i 0) (eq .Role "system")) }}' + _LLAMA3_TURNS
              + "{{ end }}{{ $role = .Role }}{{ end }}" + _LLAMA3_GEN),
    stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    end_of_turn=("<|eot_id|>",),
    fills=(("@KNOWLEDGE@", r"Cutting Knowledge Date: (.*?)\n"), ("@DATE@", r"Today Date: (.*?)\n")),
    note=("The date in 'Today Date:' is the one the HF template wrote at export (Llama 3.1: its fixed "
          "date_string; Llama 3.2: strftime_now on the export day), frozen in the Modelfile. "
          "HF trims message content; the Go template cannot."),
)

# Gemma 1/2 (HF refuses system messages) and Gemma 3 (system text + blank line opens the first
# user turn): one Go template, folding the system message as Gemma 3 does.
GEMMA = Family(
    name="gemma-instruct",
    markers=("<start_of_turn>", "<end_of_turn>"),
    template=(_SYS_VARS + "{{ range $i, $m := .Messages }}" + _FIRST_SYSTEM
              + '{{- else }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
              "{{ if and $first $hasSys }}{{ $sys }}\n\n{{ end }}{{ .Content }}<end_of_turn>\n"
              "{{ $first = false }}{{ end }}{{ $role = .Role }}{{ end }}" + _GEN_IF_OPEN + "<start_of_turn>model\n{{ end }}"),
    stops=("<start_of_turn>", "<end_of_turn>"),
    end_of_turn=("<end_of_turn>",),
    note=("Gemma 1/2 HF templates refuse system messages; the Go template folds them into the first "
          "user turn as Gemma 3 does. HF trims message content; the Go template cannot."),
)

_PHI3_TURN = "<|{{ .Role }}|>\n{{ .Content }}<|end|>\n"
_PHI3_TAIL = _GEN_IF_OPEN + "<|assistant|>\n{{ else }}@EOS@{{ end }}"
_PHI3_STOPS = ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>")

# Phi-3 (mini-4k/128k as updated, small, medium): every role as a turn, eos closes a conversation.
PHI3 = Family(
    name="phi-3",
    markers=("<|assistant|>", "<|end|>"),
    template='{{- $role := "" }}{{ range .Messages }}' + _PHI3_TURN + "{{ $role = .Role }}{{ end }}" + _PHI3_TAIL,
    stops=_PHI3_STOPS,
    end_of_turn=("<|end|>",),
    default_system=(_SET_SYSTEM_MESSAGE,),
)

# Phi-3.5: like Phi-3, but an empty system message writes nothing.
PHI35 = Family(
    name="phi-3.5",
    markers=("<|assistant|>", "<|end|>"),
    template=('{{- $role := "" }}{{ range .Messages }}{{ if or (ne .Role "system") .Content }}' + _PHI3_TURN
              + "{{ end }}{{ $role = .Role }}{{ end }}" + _PHI3_TAIL),
    stops=_PHI3_STOPS,
    end_of_turn=("<|end|>",),
)

# Granite 3.x: role headers, <|end_of_text|> ends a turn; 3.1+ insert a default system message
# (with today's date) that detection reads from an HF render and the Modelfile SYSTEM keeps.
GRANITE = Family(
    name="granite3",
    markers=("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"),
    template=('{{- $role := "" }}{{ range .Messages }}<|start_of_role|>{{ .Role }}<|end_of_role|>{{ .Content }}'
              "<|end_of_text|>\n{{ $role = .Role }}{{ end }}" + _GEN_IF_OPEN + "<|start_of_role|>assistant<|end_of_role|>{{ end }}"),
    stops=("<|end_of_text|>", "<|start_of_role|>"),
    end_of_turn=("<|end_of_text|>",),
    note="Granite 3.1+ write today's date into their default system message; it is frozen at export.",
)

# command-r: its Jinja template names a default preamble in a branch that never runs
# (`elif false == true`), so no default system is read from it.
COMMAND_R = Family(
    name="command-r",
    markers=("<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|CHATBOT_TOKEN|>"),
    template=('{{- $role := "" }}{{ range .Messages }}<|START_OF_TURN_TOKEN|>{{ if eq .Role "user" }}<|USER_TOKEN|>'
              '{{ else if eq .Role "assistant" }}<|CHATBOT_TOKEN|>{{ else }}<|SYSTEM_TOKEN|>{{ end }}'
              "{{ .Content }}<|END_OF_TURN_TOKEN|>{{ $role = .Role }}{{ end }}"
              + _GEN_IF_OPEN + "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{{ end }}"),
    stops=("<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>"),
    end_of_turn=("<|END_OF_TURN_TOKEN|>",),
    note="HF strips message content; the Go template cannot.",
)

# Zephyr (TinyLlama-Chat, Zephyr-7B, StableLM-Zephyr): <|role|> headers, the model's eos ends a
# turn. Never a candidate for a template that ends turns with <|end|> (Phi-3).
ZEPHYR = Family(
    name="zephyr",
    markers=("<|user|>", "<|assistant|>", "eos_token"),
    excludes=("<|end|>",),
    template=('{{- $role := "" }}{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}@EOS@\n'
              "{{ $role = .Role }}{{ end }}" + _GEN_IF_OPEN + "<|assistant|>\n{{ end }}"),
    stops=("<|system|>", "<|user|>", "<|assistant|>", "@EOS@"),
    end_of_turn=(),
)

# Llama-2-chat: BOS opens every [INST]; the <<SYS>> block only when there is a system message.
LLAMA2 = Family(
    name="llama2-chat",
    markers=("[INST]", "[/INST]", "<<SYS>>"),
    template=(_SYS_VARS + "{{ range $i, $m := .Messages }}" + _FIRST_SYSTEM
              + '{{- else if eq .Role "user" }}{{ if not $first }}@BOS@{{ end }}[INST] {{ if and $first $hasSys }}'
              "<<SYS>>\n{{ $sys }}\n<</SYS>>\n\n{{ end }}{{ .Content }} [/INST]{{ $first = false }}"
              '{{- else if eq .Role "assistant" }} {{ .Content }} @EOS@{{ $first = false }}{{ end }}{{ end }}'),
    stops=("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "@EOS@"),
    end_of_turn=(),
    note="HF strips message content; the Go template cannot.",
)

_MISTRAL_MARKERS = ("[INST]", "[/INST]")
_MISTRAL_STOPS = ("[INST]", "[/INST]", "@EOS@")

# Mistral-Instruct v0.1/v0.2 as published since 2024 ("v1"): ` [INST] ... [/INST]`, the system
# text and a blank line open the first user turn.
MISTRAL = Family(
    name="mistral-instruct",
    markers=_MISTRAL_MARKERS,
    excludes=("<<SYS>>",),
    template=(_SYS_VARS + "{{ range $i, $m := .Messages }}" + _FIRST_SYSTEM
              + '{{- else if eq .Role "user" }} [INST] {{ if and $first $hasSys }}{{ $sys }}\n\n{{ end }}'
              "{{ .Content }} [/INST]{{ $first = false }}"
              '{{- else if eq .Role "assistant" }} {{ .Content }}@EOS@{{ $first = false }}{{ end }}{{ end }}'),
    stops=_MISTRAL_STOPS,
    end_of_turn=(),
)

# Mistral-Instruct v0.1/v0.2 as first published: `[INST] ... [/INST]answer</s>`, no system role
# (HF refuses one; the Go template folds it into the first user turn).
MISTRAL_LEGACY = Family(
    name="mistral-instruct-legacy",
    markers=_MISTRAL_MARKERS,
    excludes=("<<SYS>>",),
    template=(_SYS_VARS + "{{ range $i, $m := .Messages }}" + _FIRST_SYSTEM
              + '{{- else if eq .Role "user" }}[INST] {{ if and $first $hasSys }}{{ $sys }}\n\n{{ end }}'
              "{{ .Content }} [/INST]{{ $first = false }}"
              '{{- else if eq .Role "assistant" }}{{ .Content }}@EOS@{{ $first = false }}{{ end }}{{ end }}'),
    stops=_MISTRAL_STOPS,
    end_of_turn=(),
    note="The HF template refuses system messages; the Go template folds them into the first user turn.",
)

# Mistral-Instruct v0.3 ("v3"): `[INST] ...[/INST]`, and the system text opens the user turn only
# when that turn is the conversation's last message (so a closed conversation drops it, as in HF).
MISTRAL_V3 = Family(
    name="mistral-instruct-v3",
    markers=_MISTRAL_MARKERS,
    excludes=("<<SYS>>",),
    template=(_SYS_VARS + "{{ range $i, $m := .Messages }}" + _FIRST_SYSTEM
              + '{{- else if eq .Role "user" }}[INST] {{ if and $hasSys (eq (len (slice $.Messages $i)) 1) }}'
              "{{ $sys }}\n\n{{ end }}{{ .Content }}[/INST]"
              '{{- else if eq .Role "assistant" }} {{ .Content }}@EOS@{{ end }}{{ end }}'),
    stops=_MISTRAL_STOPS,
    end_of_turn=(),
    note="HF trims assistant content; the Go template cannot.",
)

# DeepSeek LLM chat (and DeepSeek-V2/V2-Lite chat): "User: ...\n\n" / "Assistant: ...<eos>".
DEEPSEEK = Family(
    name="deepseek-chat",
    markers=("'User: '", "'Assistant: '", "eos_token"),
    template=('{{- $role := "" }}{{ range .Messages }}{{ if eq .Role "user" }}User: {{ .Content }}\n\n'
              '{{ else if eq .Role "assistant" }}Assistant: {{ .Content }}@EOS@'
              '{{ else if eq .Role "system" }}{{ .Content }}\n\n{{ end }}{{ $role = .Role }}{{ end }}'
              + _GEN_IF_OPEN + "Assistant:{{ end }}"),
    stops=("User:", "@EOS@"),
    end_of_turn=(),
)

# DeepSeek-V2.5/V3 chat: the system text first, then <｜User｜>/<｜Assistant｜> turns.
DEEPSEEK_V3 = Family(
    name="deepseek-v3",
    markers=("<｜User｜>", "<｜Assistant｜>"),
    template=('{{- $role := "" }}{{ .System }}{{ range .Messages }}{{ if eq .Role "user" }}<｜User｜>{{ .Content }}'
              '{{ else if eq .Role "assistant" }}<｜Assistant｜>{{ .Content }}@EOS@{{ end }}{{ $role = .Role }}{{ end }}'
              + _GEN_IF_OPEN + "<｜Assistant｜>{{ end }}"),
    stops=("<｜User｜>", "<｜Assistant｜>", "@EOS@"),
    end_of_turn=(),
)

# Order matters twice: candidates are tried in this order (the first that passes the parity suite
# wins; Phi-3 comes before Zephyr), and training takes the first end-of-turn token found in a
# vocabulary (ChatML, Llama 3, Gemma, Phi-3 first).
FAMILIES: tuple[Family, ...] = (CHATML, LLAMA3, LLAMA31, GEMMA, PHI3, PHI35, GRANITE, COMMAND_R, ZEPHYR,
                                LLAMA2, MISTRAL, MISTRAL_LEGACY, MISTRAL_V3, DEEPSEEK, DEEPSEEK_V3)


def by_name(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)


def candidates(hf_chat_template: str) -> list[Family]:
    """Families whose markers all appear in a Jinja chat template (and none of their excludes)."""
    return [f for f in FAMILIES if all(m in hf_chat_template for m in f.markers)
            and not any(x in hf_chat_template for x in f.excludes)]


def default_system_prompt(hf_chat_template: str) -> str | None:
    """The literal default system message a Jinja chat template inserts, if it has one.

    SmolLM2 and Qwen templates write `'<|im_start|>system\\n<text><|im_end|>'` as a string
    literal when the conversation has no system message; Ollama gets the same prompt from the
    Modelfile SYSTEM, which it uses exactly when a request has no system message. (Detection
    finds defaults by rendering, see toolkit/chat/detect.py; this reads the source only.)
    """
    found = candidates(hf_chat_template)
    patterns = found[0].default_system if found else (_SET_SYSTEM_MESSAGE,)
    for pattern in patterns:
        m = pattern.search(hf_chat_template)
        if m:
            return m.group(2).replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"')
    return None


def end_of_turn_tokens() -> tuple[str, ...]:
    """Every family's end-of-turn tokens, in table order (the first in a vocabulary ends a turn)."""
    return tuple(dict.fromkeys(token for family in FAMILIES for token in family.end_of_turn))

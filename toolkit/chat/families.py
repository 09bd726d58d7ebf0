"""The chat families the toolkit knows: one table that says, per family, how to recognise its
Hugging Face Jinja chat template, the Go TEMPLATE and stop strings Ollama ships for it, the tokens
that end a turn, and where its Jinja template keeps a default system prompt.

Export (Modelfile TEMPLATE/stops/SYSTEM), verify, serve and training read families only here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One chat format. `markers` must all appear in an HF Jinja template for it to be this family;
    `ollama_template`/`stops` are Ollama's files for it (template/<name>.gotmpl and <name>.json)."""

    name: str
    markers: tuple[str, ...]
    ollama_template: str
    stops: tuple[str, ...]
    end_of_turn: tuple[str, ...]
    # Searched in order in the HF template for the default system message it inserts (group 2).
    default_system: tuple[re.Pattern[str], ...] = ()
    # False: known (its end of turn counts) but never picked for an HF template.
    detect: bool = True


# {% set system_message = '<text>' %} in the branch taken when there is no system message
_SET_SYSTEM_MESSAGE = re.compile(r"""set\s+system_message\s*=\s*(['"])((?:(?!\1).)+?)\1""", re.S)
# SmolLM2/Qwen: '<|im_start|>system\n<text><|im_end|>\n' as one string literal
_CHATML_SYSTEM_LITERAL = re.compile(r"""(['"])<\|im_start\|>system(?:\\n|\n)((?:(?!\1).)*?)<\|im_end\|>""", re.S)

# SmolLM2's HF template adds this system turn when the first message is not a system message.
# Ollama gets the same prompt from the ChatML template plus `SYSTEM <this>` in the Modelfile,
# because Ollama inserts the Modelfile SYSTEM exactly when a request has no system message.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# ChatML, as Ollama ships it (template/chatml.gotmpl + chatml.json); SmolLM2 and Qwen use it.
CHATML = Family(
    name="chatml",
    markers=("<|im_start|>", "<|im_end|>"),
    ollama_template=("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
                     "{{ end }}<|im_start|>assistant\n"),
    stops=("<|im_start|>", "<|im_end|>"),
    end_of_turn=("<|im_end|>",),
    default_system=(_CHATML_SYSTEM_LITERAL, _SET_SYSTEM_MESSAGE),
)

LLAMA3 = Family(
    name="llama3-instruct",
    markers=("<|start_header_id|>", "<|eot_id|>"),
    ollama_template=("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
                     "{{ .Content }}<|eot_id|>\n{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"),
    stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    end_of_turn=("<|eot_id|>",),
    default_system=(_SET_SYSTEM_MESSAGE,),
)

# Not detected: Gemma and Gemma 3 Jinja templates share these markers but Ollama ships different
# Go templates for them (gemma-instruct, gemma3-instruct), and both HF templates fold or refuse
# system messages, so no Modelfile could be proven equal. Training still ends turns on it.
GEMMA = Family(
    name="gemma-instruct",
    markers=("<start_of_turn>", "<end_of_turn>"),
    ollama_template=('{{- $system := "" }}\n{{- range .Messages }}\n{{- if eq .Role "system" }}\n'
                     "{{- if not $system }}{{ $system = .Content }}\n"
                     '{{- else }}{{ $system = printf "%s\\n\\n%s" $system .Content }}\n{{- end }}\n'
                     '{{- continue }}\n{{- else if eq .Role "user" }}<start_of_turn>user\n'
                     '{{- if $system }}\n{{ $system }}\n{{- $system = "" }}\n{{- end }}\n'
                     '{{- else if eq .Role "assistant" }}<start_of_turn>model\n{{- end }}\n'
                     "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"),
    stops=("<start_of_turn>", "<end_of_turn>"),
    end_of_turn=("<end_of_turn>",),
    default_system=(_SET_SYSTEM_MESSAGE,),
    detect=False,
)

PHI3 = Family(
    name="phi-3",
    markers=("<|assistant|>", "<|end|>"),
    ollama_template="{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
    stops=("<|end|>", "<|system|>", "<|user|>", "<|assistant|>"),
    end_of_turn=("<|end|>",),
    default_system=(_SET_SYSTEM_MESSAGE,),
)

# Order matters: detection takes the first family whose markers all appear, and training takes the
# first end-of-turn token found in a vocabulary.
FAMILIES: tuple[Family, ...] = (CHATML, LLAMA3, GEMMA, PHI3)


def family_of(hf_chat_template: str) -> Family | None:
    """The family a Hugging Face Jinja chat template belongs to, or None if unsure."""
    for family in FAMILIES:
        if family.detect and all(marker in hf_chat_template for marker in family.markers):
            return family
    return None


def ollama_template_for(hf_chat_template: str) -> tuple[str, list[str]] | None:
    """(Go template, stop tokens) for a Hugging Face Jinja chat template, or None if unsure.

    Recognises the turn markers of ChatML (SmolLM2, Qwen), Llama 3 and Phi-3 and returns the
    template Ollama ships for that family. Like Ollama's own auto-detection it keeps only the
    turn format: pass `default_system_prompt(...)` as the Modelfile SYSTEM to keep a default
    system message, and note that tool-calling sections are not carried over.
    """
    family = family_of(hf_chat_template)
    return None if family is None else (family.ollama_template, list(family.stops))


def default_system_prompt(hf_chat_template: str) -> str | None:
    """The literal default system message a Jinja chat template inserts, if it has one.

    SmolLM2 and Qwen templates write `'<|im_start|>system\\n<text><|im_end|>'` as a string
    literal when the conversation has no system message; Ollama gets the same prompt from the
    Modelfile SYSTEM, which it uses exactly when a request has no system message.
    """
    family = family_of(hf_chat_template)
    for pattern in family.default_system if family is not None else (_SET_SYSTEM_MESSAGE,):
        m = pattern.search(hf_chat_template)
        if m:
            return m.group(2).replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"')
    return None


def end_of_turn_tokens() -> tuple[str, ...]:
    """Every family's end-of-turn tokens, in table order (the first in a vocabulary ends a turn)."""
    return tuple(token for family in FAMILIES for token in family.end_of_turn)

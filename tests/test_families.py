"""Chat families: every common open model's HF chat template (our own reproductions of the
published formats, tests/chat_templates.py) is detected as its family, and the family's Go
TEMPLATE passes the parity suite against it; no model or GGUF needed."""

from __future__ import annotations

from datetime import datetime

import pytest
from chat_templates import CASES, COMMAND_R, GRANITE31, LLAMA32, MISTRAL_V3, PHI3, PHI35, ZEPHYR

from toolkit.chat.detect import match
from toolkit.chat.families import FAMILIES, by_name, candidates
from toolkit.chat.parity import SUITE, passed, pinned_date, run_suite
from toolkit.chat.render import render_chat


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_model_template_is_detected_and_passes_the_parity_suite(name):
    template, bos, eos, family = CASES[name]
    found, _ = match(template, bos=bos, eos=eos)
    assert found is not None and found.family.name == family
    assert passed(found.cases) and len(found.cases) == len(SUITE)
    compared = [c for c in found.cases if not c.refused]
    # refusing templates (Gemma 1/2, first Mistral) still compare every conversation without a system
    assert {c.name for c in compared} >= {"user only", "multi-turn", "closed turn (no generation prompt)",
                                          "template-like text", "non-ASCII"}
    assert "@" not in found.template.replace("@@", "")  # every placeholder filled


def test_every_family_is_exercised():
    assert {family for *_, family in CASES.values()} == {f.name for f in FAMILIES}


@pytest.mark.parametrize("eos", ["<|endoftext|>", "<|end|>"])
@pytest.mark.parametrize("template", [PHI3, PHI35])
def test_phi3_is_never_taken_for_zephyr(template, eos):
    assert "zephyr" not in [f.name for f in candidates(template)]
    found, _ = match(template, bos="<s>", eos=eos)
    assert found is not None and found.family.name.startswith("phi-3")
    assert "<|end|>" in found.stops


def test_zephyr_ends_turns_with_the_models_own_eos():
    for eos in ("</s>", "<|endoftext|>"):
        found, _ = match(ZEPHYR, bos="<s>", eos=eos)
        assert found.family.name == "zephyr" and f"{{{{ .Content }}}}{eos}\n" in found.template and eos in found.stops
    assert match(ZEPHYR, bos="<s>", eos="")[0] is None  # without an eos it cannot be expressed


def test_leading_bos_is_left_to_the_tokenizer():
    template, bos, eos, _ = CASES["llama-2-chat"]
    found, _ = match(template, bos=bos, eos=eos)
    multi = next(c for c in found.cases if c.name == "multi-turn")
    assert multi.leading_bos and not multi.go.startswith("<s>") and "</s><s>[INST]" in multi.go
    smol = match(*CASES["smollm2"][:1], bos="<|im_start|>", eos="<|im_end|>")[0]
    assert not any(c.leading_bos for c in smol.cases)  # its bos text is written by every turn, not as BOS


def test_llama2_writes_no_sys_block_without_a_system_message():
    template, bos, eos, _ = CASES["llama-2-chat"]
    found, _ = match(template, bos=bos, eos=eos)
    by = {c.name: c for c in found.cases}
    assert "<<SYS>>" not in by["user only"].go and "<<SYS>>\nYou are a terse reviewer.\n<</SYS>>" in by["system+user"].go


def test_mistral_v3_puts_the_system_text_in_the_last_user_turn_only():
    found, _ = match(MISTRAL_V3, bos="<s>", eos="</s>")
    by = {c.name: c.go for c in found.cases}
    assert by["system+multi-turn"].endswith("[INST] Answer in one line.\n\nWhy does it help?[/INST]")
    assert "Answer in one line." not in by["system+closed multi-turn (no generation prompt)"]


def test_command_r_has_no_default_system():
    found, _ = match(COMMAND_R, bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>")
    assert found.system is None


@pytest.mark.parametrize("template, fmt", [(LLAMA32, "%d %b %Y"), (GRANITE31, "%B %d, %Y")])
def test_a_date_from_strftime_now_is_frozen_at_export_and_found_again_by_verify(template, fmt):
    export_day = datetime(2025, 3, 7)
    found, _ = match(template, bos="<|begin_of_text|>", eos="<|eot_id|>", now=export_day)
    frozen = f"{found.template}\n{found.system or ''}"
    assert export_day.strftime(fmt) in frozen
    # the stated difference: on a later day the HF template writes another date ...
    later = run_suite(template, found.template, bos="<|begin_of_text|>", eos="<|eot_id|>", system=found.system,
                      now=datetime(2026, 1, 2))
    assert not passed(later)
    # ... so verify renders the HF template as of the date the Modelfile froze
    assert pinned_date(template, frozen) == export_day
    again = run_suite(template, found.template, bos="<|begin_of_text|>", eos="<|eot_id|>", system=found.system,
                      now=pinned_date(template, frozen))
    assert passed(again)


def test_a_hand_written_template_is_checked_conversation_by_conversation():
    template, bos, eos, _ = CASES["tinyllama-chat"]
    hand = "{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n"  # Ollama's zephyr
    cases = run_suite(template, hand, bos=bos, eos=eos)
    bad = [c for c in cases if not c.ok]
    # it always appends the generation prompt, so only the closed conversations differ
    assert {c.name for c in bad} == {"closed turn (no generation prompt)", "system+closed multi-turn (no generation prompt)"}
    assert all("differs from the HF chat template at character" in c.describe() for c in bad)
    assert bad[0].at == len(bad[0].hf)
    fixed = by_name("zephyr").go_template(bos, eos)
    assert passed(run_suite(template, fixed, bos=bos, eos=eos))


def test_template_like_content_is_rendered_as_text():
    template, bos, eos, _ = CASES["mistral-v0.2"]
    found, _ = match(template, bos=bos, eos=eos)
    text = render_chat(found.template, SUITE["template-like text"])
    assert "{{ .Content }}" in text and "{% raw %}" in text and "[INST] tags" in text

"""Export the real default model to GGUF, quantize it, and verify it against the HF model."""

import subprocess
import sys

import pytest

from toolkit.errors import ConfigError
from toolkit.export.convert import check_tokens, export
from toolkit.export.modelfile.checks import validate_file
from toolkit.export.verify import bos_problem, check_templates, compare_gguf, reference_sequences

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory, default_hf_dir):
    out = tmp_path_factory.mktemp("gguf")
    export("smollm2", out=out, quant=["Q8_0"])
    return out


def test_export_writes_gguf_and_modelfiles(exported, default_hf_dir):
    names = sorted(p.name for p in exported.iterdir() if not p.name.startswith("."))
    assert "SmolLM2-135M-Instruct-f16.gguf" in names and "SmolLM2-135M-Instruct-Q8_0.gguf" in names
    mf = validate_file(exported / "SmolLM2-135M-Instruct-Q8_0.Modelfile")
    assert mf.model == "./SmolLM2-135M-Instruct-Q8_0.gguf"
    assert {"<|im_end|>", "<|endoftext|>"} <= set(mf.stops)
    assert mf.system.startswith("You are a helpful AI assistant named SmolLM")
    for key in ("temperature", "top_p", "num_predict", "repeat_penalty", "seed", "num_ctx"):
        assert key in mf.parameters
    assert check_tokens(exported / "SmolLM2-135M-Instruct-f16.gguf", default_hf_dir) == []


def test_reexport_reuses_unless_forced(exported):
    gguf = exported / "SmolLM2-135M-Instruct-Q8_0.gguf"
    before = gguf.stat().st_mtime_ns
    export("smollm2", out=exported, quant=["Q8_0"])
    assert gguf.stat().st_mtime_ns == before
    export("smollm2", out=exported, quant=["Q8_0"], force=True)
    assert gguf.stat().st_mtime_ns != before


def test_fidelity_and_templates(exported, default_hf_dir):
    prompts = ["How can we make transformer training cheaper?", "What is a good baseline for retrieval?"]
    seqs, starts, logprobs = reference_sequences(default_hf_dir, prompts, 24)
    f16 = compare_gguf(exported / "SmolLM2-135M-Instruct-f16.gguf", seqs, starts, logprobs)
    assert f16.type == "F16" and f16.positions >= 2 * 20
    assert f16.top1_agreement >= 0.99 and f16.mean_kl < 1e-3 and f16.passed
    q8 = compare_gguf(exported / "SmolLM2-135M-Instruct-Q8_0.gguf", seqs, starts, logprobs)
    assert q8.type == "Q8_0" and q8.mean_kl < 0.05
    gguf = exported / "SmolLM2-135M-Instruct-f16.gguf"
    assert check_templates(default_hf_dir, gguf, gguf.with_suffix(".Modelfile")) == []


def test_template_mismatch_names_the_first_differing_character(exported, default_hf_dir, tmp_path):
    gguf = exported / "SmolLM2-135M-Instruct-f16.gguf"
    bad = tmp_path / "bad.Modelfile"
    text = gguf.with_suffix(".Modelfile").read_text()
    bad.write_text(text.replace("<|im_start|>{{ .Role }}\n", "<|im_start|>{{ .Role }} \n").replace("PARAMETER stop <|endoftext|>\n", ""))
    problems = check_templates(default_hf_dir, gguf, bad)
    assert any("Modelfile TEMPLATE differs from the HF chat template at character" in p for p in problems)
    assert any("'<|endoftext|>' is not a PARAMETER stop" in p for p in problems)


def test_bad_quant_type_is_one_line(exported):
    with pytest.raises(ConfigError, match="unknown quantization 'Q9_X'"):
        export("smollm2", out=exported, quant=["Q9_X"])


def test_generate_streams_from_an_exported_gguf(exported):
    proc = subprocess.run([sys.executable, "-m", "toolkit", "generate", "Say hello.", "--model",
                           str(exported / "SmolLM2-135M-Instruct-Q8_0.gguf"), "--max-tokens", "12", "--temperature", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and "tok/s" in proc.stderr


def test_bos_mismatch_says_what_to_change():
    """verify names the file once (its caller does) and says which setting to change."""
    assert bos_problem(True, True) is None and bos_problem(False, False) is None
    for add_bos, writes in ((False, True), (True, False)):
        msg = bos_problem(add_bos, writes)
        assert f'set "add_bos_token": {str(writes).lower()} in the HF tokenizer_config.json' in msg
        assert "{{ bos_token }}" in msg and "chat template" in msg and ".gguf" not in msg

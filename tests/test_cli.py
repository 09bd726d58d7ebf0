import subprocess
import sys

from toolkit.cli import build_parser, parse_docstring

HEAVY = ("torch", "transformers", "llama_cpp", "bert_score", "peft", "optuna")


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, **kw)


def test_help_lists_commands_without_heavy_imports():
    code = f"import sys; from toolkit.cli import build_parser; build_parser(); print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"heavy modules imported by --help: {out}"
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("doctor", "data", "generate", "demo", "models"):
        assert command in proc.stdout


def test_every_command_has_help(repo_root):
    from toolkit.cli import COMMANDS

    for command in COMMANDS:
        proc = run(*command.split(), "--help")
        assert proc.returncode == 0, proc.stderr
        assert "usage: toolkit" in proc.stdout
        assert " object at 0x" not in proc.stdout, f"{command}: a % in a help text was formatted by argparse"
    assert "~30% slower" in run("train", "--help").stdout


def test_decoding_options_come_from_decoding_params():
    args = build_parser().parse_args(["generate", "hi", "--temperature", "0.3", "--top-p", "0.5"])
    from toolkit.cli import _collect_decoding

    values = _collect_decoding(vars(args))
    assert values["params"].temperature == 0.3 and values["params"].top_p == 0.5
    assert values["params"].max_tokens == 256


def test_user_error_is_one_line_without_traceback():
    proc = run("generate", "hi", "--top-p", "1.5")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "top_p" in lines[0]


def test_missing_model_path_is_one_line():
    proc = run("generate", "hi", "--model", "/nonexistent/model.gguf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr


def test_docstring_parsing():
    desc, args = parse_docstring("""Do a thing.

    More text.

    Args:
        alpha: the first
            continued.
        beta: the second.
    Returns:
        nothing
    """)
    assert desc.startswith("Do a thing.") and "More text." in desc
    assert args == {"alpha": "the first continued.", "beta": "the second."}


def test_a_no_option_can_be_switched_on():
    """`compare --no-base` is a flag named no_base: it must set no_base=True, not read as the off form."""
    args = vars(build_parser().parse_args(["compare", "tuned=smollm2", "--no-base"]))
    assert args["no_base"] is True
    assert vars(build_parser().parse_args(["compare", "tuned=smollm2"]))["no_base"] is False

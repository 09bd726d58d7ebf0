import dataclasses
import subprocess
import sys
from pathlib import Path

from toolkit.cli import build_parser, collect_options, parse_docstring

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


def test_help_imports_no_command_and_a_command_only_its_own():
    """`toolkit --help` lists every command from its source; `toolkit CMD --help` imports CMD's module alone."""
    from toolkit.cli import COMMANDS

    modules = sorted({t.split(":")[0] for t in COMMANDS.values()})
    code = ("import sys; from toolkit.cli import main\ntry: main(sys.argv[1:])\nexcept SystemExit: pass\n"
            f"print(' '.join(m for m in {modules!r} if m in sys.modules), file=sys.stderr)")
    loaded = lambda *argv: subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True).stderr.split()  # noqa: E731
    assert loaded("--help") == [] and loaded("data", "--help") == []
    unrelated = {"toolkit.demo", "toolkit.synth.command", "toolkit.serve.server", "toolkit.evaluate.compare"}
    for argv, own in [(("rate", "--help"), "toolkit.evaluate.rate"), (("train", "search", "--help"), "toolkit.train.search"),
                      (("train-search", "--help"), "toolkit.train.search"), (("data", "build", "--help"), "toolkit.data.build")]:
        assert own in loaded(*argv) and not unrelated & set(loaded(*argv)), argv


def test_listed_summaries_are_the_docstrings_first_lines():
    """The summary read from the source without importing is the loaded function's docstring's first line."""
    from toolkit.cli import COMMANDS, _load, summary

    for target in COMMANDS.values():
        desc, _ = parse_docstring(_load(target).__doc__)
        assert summary(target) == desc.splitlines()[0], target


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
    values = collect_options(vars(args))
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


def _command(*words: str):
    parser = build_parser()
    for word in words:
        parser = parser._subparsers._group_actions[0].choices[word]
    return {a.option_strings[0] if a.option_strings else a.dest: a for a in parser._actions}


# the options of the commands that take option-set dataclasses, as their flat signatures listed them (README examples use them)
FLAT_OPTIONS = {
    ("compare",): "system --out --base --no-base --screenshot --again --data --backend --url --prompts --scorer --scorer-layer "
                  "--parallel --allow-mixed-quant --judge --judge-backend --judge-url --judge-max-tokens --judge-prompt",
    ("gaps",): "corpus --out --format --abstract-col --categories --encoder --clusters --cluster --min-cluster-size --dims --bootstrap "
               "--window --bridge-quantile --top --backtest --fit-seed --draft --drafts --backend --model --url --parallel",
    ("data", "build"): "inputs --out --format --categories --max-problem-tokens --min-approach-tokens --min-sentences --split --seed "
                       "--tokenizer --question-col --answer-col --max-question-tokens --min-answer-tokens --abstract-col --id-col "
                       "--title-col --categories-col --date-col --max-chars",
}
DECODING = {"--temperature", "--top-p", "--top-k", "--min-p", "--max-tokens", "--repeat-penalty", "--seed", "--num-ctx", "--stop"}


def test_option_sets_keep_the_flags_defaults_and_help_users_know():
    for words, flags in FLAT_OPTIONS.items():
        options = _command(*words)
        decoding = DECODING if words != ("data", "build") else set()
        assert set(flags.split()) | decoding <= set(options), words  # options may be added, none lost or renamed
    compare, gaps, build = _command("compare"), _command("gaps"), _command("data", "build")
    assert compare["--data"].default == Path("runs/demo/data/test.jsonl")
    assert compare["--data"].help == "the test split with references. (default: runs/demo/data/test.jsonl)"
    assert compare["--judge-max-tokens"].default == 16 and compare["--judge-prompt"].default is None
    assert compare["--judge"].dest == "judge" and compare["--judge"].help.endswith("empty = no judge. (default: )")
    assert compare["--judge-backend"].choices == compare["--backend"].choices and "llamacpp" in compare["--backend"].choices
    assert gaps["--cluster"].choices == ["kmeans", "hdbscan"] and gaps["--bridge-quantile"].default == 0.1
    assert build["--split"].default == "90,5,5" and build["--max-chars"].default == 20000 and build["inputs"].nargs == "+"


def test_option_sets_fold_back_into_their_dataclasses():
    from toolkit.data.build import BuildOptions
    from toolkit.evaluate.compare import CompareSettings, JudgeSettings
    from toolkit.gaps.command import AnalysisOptions, CorpusOptions, DraftOptions

    parse = lambda *argv: collect_options(vars(build_parser().parse_args(list(argv))))  # noqa: E731
    args = parse("compare", "tuned=smollm2", "--data", "t.jsonl", "--prompts", "3", "--judge", "smollm2", "--judge-prompt", "j.txt",
                 "--temperature", "0.2", "--no-base")
    assert args["settings"] == CompareSettings(data=Path("t.jsonl"), prompts=3)
    assert args["judge"] == JudgeSettings("smollm2", prompt=Path("j.txt"))
    assert args["params"].temperature == 0.2 and args["no_base"] is True and args["system"] == ["tuned=smollm2"]
    assert "data" not in args and "prompts" not in args and "temperature" not in args
    args = parse("gaps", "c.jsonl", "--cluster", "hdbscan", "--draft", "--model", "m.gguf", "--seed", "7")
    assert args["reading"] == CorpusOptions() and args["analysis"] == AnalysisOptions(cluster="hdbscan")
    assert args["drafting"] == DraftOptions(draft=True, model="m.gguf") and args["params"].seed == 7
    args = parse("data", "build", "a.jsonl", "b.csv", "--split", "80,20", "--tokenizer", "words")
    assert args["inputs"] == [Path("a.jsonl"), Path("b.csv")] and args["options"] == BuildOptions(split="80,20", tokenizer="words")


def test_overrides_and_stored_settings_follow_the_fields():
    from toolkit.errors import ConfigError
    from toolkit.options import option, overrides, plain, restore

    @dataclasses.dataclass(frozen=True)
    class Demo:
        """demo options"""

        path: Path = option(Path("a/b"), "a path.")
        names: list[str] = option(["x", "y"], "names.")
        prompt: Path | None = option(None, "a template.", flag="demo_prompt")

    made = overrides(Demo, "DemoOverrides", "demo overrides")
    assert made().given() == {} and made(names=["z"]).given() == {"names": ["z"]}
    assert [f.metadata["help"] for f in dataclasses.fields(made)] == ["a path. (default: a/b)", "names. (default: x,y)",
                                                                      "a template. (default: None)"]
    stored = plain(Demo(prompt=Path("p.txt")))
    assert stored == {"path": "a/b", "names": ["x", "y"], "prompt": "p.txt"}
    assert restore(Demo, stored, where="f") == Demo(prompt=Path("p.txt")) and restore(Demo, {}, where="f") == Demo()
    try:
        restore(Demo, {"paths": "a"}, where="results.json: settings")
    except ConfigError as exc:
        assert "results.json: settings: unknown setting 'paths'" in str(exc)
    else:
        raise AssertionError("an unknown key must be refused")

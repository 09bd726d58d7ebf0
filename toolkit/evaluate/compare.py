"""`toolkit compare`: did fine-tuning (and the swept parameters) help, by how much, and is it real?

Each system is a model plus decoding parameters. All systems answer the same prompts with the same
seeds through the same backend; the zero-shot base model is always included unless dropped. Every
example is scored with every metric of the `METRICS` table (BERTScore P/R/F1, ROUGE-L, BLEU and any
registered one); each difference against the first system gets a paired bootstrap interval, a
signed-rank test and a win rate. Generations are cached by (model digest, parameters, prompt), so
adding a system later only generates for that system. The typed result and the report: compare_report.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from toolkit.data.readers import load_examples
from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.browser import BrowserError, render
from toolkit.evaluate.compare_report import make_plots, print_table, render_html, render_markdown, summarise
from toolkit.evaluate.human import human_summary
from toolkit.evaluate.judge import Judge, run_judge
from toolkit.evaluate.machine import measured_on
from toolkit.evaluate.metrics import MetricSuite, ScorerConfig
from toolkit.export.verify import gguf_type
from toolkit.io import write_json, write_text
from toolkit.models import resolve
from toolkit.options import option, plain, restore
from toolkit.params import DEFAULTS, DecodingParams, load_parameters
from toolkit.runtime.backends import BackendName, BackendSpec, backend_class, raw_backend
from toolkit.runtime.cache import GenerationCache, Request, generate_cached
from toolkit.runtime.generation import check_parallel


@dataclass
class System:
    """A model with its decoding parameters, under a label."""

    label: str
    model: str
    params: DecodingParams = DEFAULTS
    params_source: str = "defaults"
    outputs: list[dict] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class CompareSettings:
    """run settings (stored in OUT/results.json: --again runs with them)"""

    data: Path = option(Path("runs/demo/data/test.jsonl"), "the test split with references.")
    backend: BackendName = option("llamacpp", "llamacpp, ollama or openai (all systems use the same one).")
    url: str = option("", "server URL for the ollama/openai backends.")
    prompts: int = option(0, "use the first N prompts (0 = all).")
    scorer: str = option("minilm", "BERTScore encoder: minilm or a local HF encoder directory.")
    scorer_layer: int = option(0, "BERTScore layer (0 = the encoder's default).")
    parallel: int = option(0, "generations at once (0 = the backend's default: 16 llama.cpp slots, or one request "
                              "at a time to a server; set it to the server's own parallel setting).")
    allow_mixed_quant: bool = option(False, "allow systems whose GGUFs have different quantization types.")
    raw: bool = option(False, "raw completion for base models without a chat template: each prompt as given, no "
                              "template, BOS as the GGUF asks (Ollama's raw; llamacpp only).")


@dataclass(frozen=True)
class JudgeSettings:
    """pairwise model judge (stored in OUT/results.json with the run settings)"""

    model: str = option("", "a model that judges each system against the first, in both orders (a model name, a "
                            "GGUF, an Ollama model or a model at --judge-url); empty = no judge.", flag="judge")
    backend: BackendName = option("llamacpp", "llamacpp, ollama or openai for the judge.", flag="judge_backend")
    url: str = option("", "server URL for an ollama/openai judge.", flag="judge_url")
    max_tokens: int = option(16, "most tokens of a judge's reply (the verdict comes first).", flag="judge_max_tokens")
    prompt: Path | None = option(None, "the judge's prompt template (default: the shipped toolkit/evaluate/judge_prompt.txt).",
                                 flag="judge_prompt")


def parse_system(spec: str, base_params: DecodingParams) -> System:
    """`LABEL=MODEL[@PARAMS.yaml]`: e.g. `tuned=runs/demo/gguf/tuned-Q4_K_M.gguf@runs/sweeps/demo/best.yaml`."""
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise ConfigError(f"system {spec!r} is not LABEL=MODEL[@PARAMS.yaml]", fix="e.g. --system tuned=model.gguf@best.yaml")
    model, _, params_file = rest.partition("@")
    if params_file:
        # the file's values on top of this run's options; every system keeps the same seed and stops
        params = load_parameters(Path(params_file), base=base_params).replace(seed=base_params.seed, stop=base_params.stop)
        return System(label, model, params, params_file)
    return System(label, model, base_params)


def stored_run(out: Path, given: list[str]) -> tuple[list[System], CompareSettings, JudgeSettings | None]:
    """The systems, settings and judge (None: none) of the run that wrote OUT/results.json, for `compare --again`."""
    import json

    if given:
        raise ConfigError("--again runs the systems stored in the folder again and takes no systems",
                          fix="drop the systems, or drop --again")
    path = Path(out) / "results.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: there is no compare run to repeat",
                          fix="run compare with its systems and this --out first") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc.__class__.__name__})", fix="run compare with its systems again") from None
    settings = result.get("settings")
    if not isinstance(settings, dict):
        raise ConfigError(f"{path} was written before compare stored its options",
                          fix="run compare with its systems once more; --again works from then on")
    systems = [System(s["label"], s["model"], DecodingParams.from_dict(s["params"], where=f"{path}: {s['label']}"),
                      s["params_source"]) for s in result["systems"]]
    stored = dict(settings)
    judge = stored.pop("judge", None)
    return (systems, restore(CompareSettings, stored, where=f"{path}: settings"),
            restore(JudgeSettings, judge, where=f"{path}: settings.judge") if judge else None)


def stored_settings(settings: CompareSettings, judge: JudgeSettings) -> dict:
    """What `compare --again` needs besides the systems: `settings` in OUT/results.json (judge None: no judge)."""
    return {**plain(settings), "judge": plain(judge) if judge.model else None}


def check_fairness(systems: list[System], backend: str, allow_mixed: bool) -> None:
    """Base and tuned must run through the same backend and the same quantization type (readable
    where the backend opens GGUF files here)."""
    if not backend_class(backend).capabilities.loads_gguf or allow_mixed:
        return

    types = {s.label: gguf_type(resolve(s.model, hf=False).require_llamacpp()[0]) for s in systems}
    if len(set(types.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in types.items())
        raise ConfigError(f"systems use different quantization types ({listing})",
                          fix="export every model with the same --quant (or pass --allow-mixed-quant)")


def system_requests(system: System, examples: list) -> list[Request]:
    """What `system` is asked: each example's prompt as one user turn, with the system's parameters."""
    return [Request.of(ex.prompt, system.params) for ex in examples]


def generate_system(system: System, examples: list, backend: str, url: str, cache: GenerationCache,
                    parallel: int | None = None) -> int:
    """Fill `system.outputs`, generating only what the cache lacks; returns how many were generated.
    Each generation is cached as it finishes, so an interrupted run loses none."""
    spec = BackendSpec(backend, system.model, url, parallel)
    system.outputs, generated = generate_cached(spec, system_requests(system, examples), cache, f"generate {system.label}")
    return generated


def score_systems(systems: list[System], examples: list, scorer: str, scorer_layer: int | None) -> None:
    """Set each system's per-example scores on every metric of the table (`METRICS`)."""
    suite = MetricSuite(ScorerConfig(scorer, scorer_layer))
    refs = [ex.response for ex in examples]
    for s in systems:
        s.scores = suite.score([o["text"] for o in s.outputs], refs)


def compare(system: list[str] = (), settings: CompareSettings = CompareSettings(), out: Path = Path("runs/compare"),
            base: str = "smollm2", no_base: bool = False, screenshot: bool = False, judge: JudgeSettings = JudgeSettings(),
            again: bool = False, params: DecodingParams = DEFAULTS) -> int:
    """Compare systems (model + decoding parameters) on the same test prompts: metrics, significance, report.

    The zero-shot base model is always the first system (the reference for differences) unless
    --no-base. Generations are cached in OUT/generations.sqlite, so re-running with one more system
    only generates for that one. Writes report.md, report.html (self-contained), results.json and plots/.
    Blind human ratings made with `toolkit rate OUT` are added to the report when the folder has
    them; --judge adds a pairwise model judge, calibrated first (see toolkit/evaluate/judge_prompt.txt).

    Args:
        system: systems as LABEL=MODEL[@PARAMS.yaml], e.g. tuned=runs/demo/gguf/tuned-Q4_K_M.gguf@runs/sweeps/demo/best.yaml
        out: where the report goes.
        base: the base model included as `base` (use the same quantization as the tuned model).
        no_base: leave the zero-shot base out.
        screenshot: open report.html in headless Chromium, check every plot renders, save report.png.
        again: run the systems, test data, options and judge stored in OUT/results.json again (after
            `toolkit rate OUT`, to add the ratings: `toolkit compare --again --out OUT`); --judge
            options given here replace the stored judge, and --screenshot applies.
    """
    from toolkit.console import err

    if again:
        systems, settings, stored_judge = stored_run(Path(out), list(system))
        params = params.replace(seed=systems[0].params.seed)
        if not judge.model and stored_judge:  # the stored judge too: its replies are cached
            judge = stored_judge
    else:
        systems = ([] if no_base else [System("base", base, params)]) + [parse_system(s, params) for s in system]
    parallel = settings.parallel
    if parallel:
        check_parallel(parallel)
    if not systems:
        raise ConfigError("no systems to compare", fix="pass --system LABEL=MODEL or drop --no-base")
    labels = [s.label for s in systems]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"system labels repeat: {labels}", fix="give each system its own LABEL")
    examples = load_examples(settings.data)
    examples = examples[:settings.prompts] if settings.prompts else examples
    if not examples or any(not ex.response.strip() for ex in examples):
        raise DataError("every test example needs a reference response", path=settings.data, fix="use a built test split")
    settings = replace(settings, backend=raw_backend(settings.backend, settings.raw))
    check_fairness(systems, settings.backend, settings.allow_mixed_quant)
    for s in systems:  # every system's files and template before any work: a refused run writes nothing
        BackendSpec(settings.backend, s.model, settings.url).check()
    judge_spec = None
    if judge.model:  # a bad template or option fails here, before anything is generated

        judge_spec = Judge.open(judge.model, judge.backend, judge.url, judge.prompt, judge.max_tokens, params.seed, parallel or None)
    out = Path(out)
    cache = GenerationCache(out / "generations.sqlite")
    start = time.perf_counter()
    try:
        generated = {s.label: generate_system(s, examples, settings.backend, settings.url, cache, parallel or None) for s in systems}
    finally:
        cache.close()
    score_systems(systems, examples, settings.scorer, settings.scorer_layer or None)
    result = summarise(systems, examples, seed=params.seed)

    result.human = human_summary(out, result.to_dict(), seed=params.seed)
    if judge_spec is not None:
        result.judge = run_judge(judge_spec, systems, examples, out, result.human, params.seed)
    result.generated = generated
    result.settings = stored_settings(settings, judge)
    result.seconds = round(time.perf_counter() - start, 1)
    result.machine = measured_on(settings.backend)
    plots = make_plots(result, out / "plots")
    write_json(out / "results.json", result.to_dict())
    write_text(out / "report.md", render_markdown(result, {k: f"plots/{v.name}" for k, v in plots.items()}))
    write_text(out / "report.html", render_html(result, plots))
    print_table(result)
    if screenshot:
        shown = render(out / "report.html", out / "report.png")
        if shown.decoded != shown.images:
            raise BrowserError(f"{out / 'report.html'}: the browser decoded {shown.decoded} of {shown.images} plots",
                              fix="open the report in a browser; re-run compare to rewrite it")
        err.print(f"rendered in headless Chromium: {shown.decoded} of {shown.images} plots shown; screenshot: {out / 'report.png'}")
    judged = f"; {result.judge['generated']} new judge replies" if judge_spec is not None else ""
    err.print(f"generated {sum(generated.values())} new outputs ({', '.join(f'{k}: {v}' for k, v in generated.items())}){judged}; "
              f"report: {out / 'report.html'}")
    return 0

"""`toolkit sweep`: find better decoding parameters with Optuna, scored against references.

Loads the sweep file (config.py), races every candidate against the default until the answer is
known (race.py, decision.py; `mode: race`, the default) or runs the search (study.py) and re-runs
the best trials and the default with several seeds (noise.py), writes the results (report.py), and with
--modelfile rewrites a Modelfile's PARAMETER lines with the chosen values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from toolkit.data.readers import load_examples
from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.machine import measured_on
from toolkit.evaluate.metrics import MetricSuite
from toolkit.evaluate.sweep.config import load_sweep
from toolkit.evaluate.sweep.decision import race_results
from toolkit.evaluate.sweep.noise import chosen_params, noise_check
from toolkit.evaluate.sweep.race import run_race
from toolkit.evaluate.sweep.report import print_summary, write_outputs
from toolkit.evaluate.sweep.study import Evaluator, finished, open_study, run_trials
from toolkit.export.modelfile.checks import validate_file
from toolkit.export.modelfile.writer import build_modelfile
from toolkit.export.modelfile.writer import write as write_mf
from toolkit.params import DEFAULTS, SPECS, DecodingParams
from toolkit.runtime.backends import BackendName, BackendSpec, open_backend, raw_backend
from toolkit.runtime.generation import check_parallel


def rewrite_modelfile(path: Path, params: DecodingParams, only: Iterable[str] | None = None) -> Path:
    """Rewrite a Modelfile's PARAMETER lines with `params` (or just the fields in `only`), keeping
    FROM, TEMPLATE, stops, SYSTEM, LICENSE and the other PARAMETERs."""
    mf = validate_file(path)
    existing = {k: v for k, v in mf.parameters.items() if k != "stop"}
    options = params.to_ollama_options()
    options.pop("stop", None)
    if only is not None:
        options = {SPECS[k].ollama: options[SPECS[k].ollama] for k in only if SPECS[k].ollama}
    text = build_modelfile(from_=mf.model, template=mf.template, stops=mf.stops, system=mf.system,
                           parameters={**existing, **options}, license="\n".join(mf.licenses) or None)
    return write_mf(path, text)


def _without_password(url: str) -> str:
    """The storage URL for reports: a PostgreSQL password does not belong in a shared report."""
    import re

    return re.sub(r"://([^:/@]+):[^/]*@", r"://\1:***@", url)


def _load_against(folder: Path) -> dict:
    try:
        other = json.loads((folder / "best.json").read_text())
    except (OSError, ValueError):
        other = {}
    if not {"study", "search_best_value", "search_generations", "search_trials"} <= set(other):
        raise ConfigError(f"{folder / 'best.json'} is missing or from an older toolkit",
                          fix="pass the results directory of a finished sweep (run it without --no-noise)")
    return other


def _examples_with_references(data: Path, n: int) -> list:
    examples = load_examples(data)
    if not examples:
        raise DataError("the split has no examples", path=data, fix="build it with `toolkit data build`")
    missing = [ex.id for ex in examples[:n] if not ex.response.strip()]
    if missing:
        raise DataError(f"example {missing[0]} has no reference response ({len(missing)} of the first {n} lack one)",
                        path=data, fix="a sweep scores against references: use a built split or a QA file with answers")
    return examples[:n]


def sweep(sweep_file: Path, model: str = "smollm2", data: Path = Path("runs/demo/data/validation.jsonl"),
          backend: BackendName = "llamacpp", url: str = "", out: Path | None = None, storage: str = "", study: str = "",
          trials: int = 0, prompts: int = 0, modelfile: Path | None = None, noise: bool = True,
          against: Path | None = None, parallel: int = 0, raw: bool = False) -> int:
    """Search decoding parameters with Optuna, scored by BERTScore (or ROUGE-L/BLEU) against references.

    Re-running the same command continues the study (completed trials are kept); several workers
    can share one study through --storage postgresql://... . Writes trials.csv, best.json,
    best.yaml, per_prompt.csv, plots/ and report.md, and with --modelfile rewrites its PARAMETERs.

    Args:
        sweep_file: a sweep YAML (see sweeps/), or the name of a shipped one (e.g. joint-tpe).
        model: the model: embedded name or .gguf (llamacpp), Ollama model name (ollama), served name (openai).
        data: a split with references (a built validation.jsonl, or a QA file).
        backend: llamacpp, ollama or openai.
        url: server URL for the ollama/openai backends.
        out: results directory (default: runs/sweeps/<sweep name>).
        storage: Optuna storage URL (default: sqlite:///OUT/study.db).
        study: study name (default: the sweep's name).
        trials: override the number of finished trials wanted.
        prompts: override the prompts per trial.
        modelfile: a Modelfile to rewrite with the chosen PARAMETER values.
        noise: (mode: search) re-run the top trials and the default with several seeds and compare
            them. A race (the default mode) always confirms a winner on the re-run seeds.
        against: another sweep's results directory (same prompts and seed): the report sets this
            search's best value and generation count beside its own.
        parallel: generations at once (0 = the backend's default: 16 llama.cpp slots, or one request
            at a time to a server; set it to the server's own parallel setting). The same
            command with the same --parallel gives the same trials.
        raw: raw completion for a base model without a chat template: each prompt as given, no template (Ollama's raw).
    """
    from toolkit.console import err

    cfg = load_sweep(sweep_file)
    if parallel:
        check_parallel(parallel)  # before the study or any output exists
    backend = raw_backend(backend, raw)
    BackendSpec(backend, model, url).check()  # files and chat template too: a refused sweep writes nothing
    cfg.trials = trials or cfg.trials
    cfg.prompts = prompts or cfg.prompts
    examples = _examples_with_references(Path(data), cfg.prompts)
    if modelfile is not None and not Path(modelfile).exists():
        raise ConfigError(f"Modelfile {modelfile} does not exist", fix="export the model first or drop --modelfile")
    other = _load_against(Path(against)) if against else None
    out = Path(out) if out else Path("runs") / "sweeps" / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    fingerprint = {"model": model, "backend": backend, "prompts": [ex.id for ex in examples], "sweep": cfg.to_dict() | {"trials": None}}
    optuna_study = open_study(cfg, storage, study or cfg.name, fingerprint=json.loads(json.dumps(fingerprint)))
    start = time.perf_counter()
    with open_backend(backend, model, n_ctx=cfg.base_params().num_ctx, url=url or None, parallel=parallel or None) as engine:
        ev = Evaluator(engine, [ex.prompt for ex in examples], [ex.response for ex in examples], cfg.metric,
                       MetricSuite(cfg.scorer))
        if cfg.mode == "race":
            result = race_results(optuna_study, cfg, run_race(optuna_study, cfg, ev))
        else:
            run_trials(optuna_study, cfg, ev)
            if not noise:
                err.print(f"{len(finished(optuna_study))} trials in {storage}")
                return 0
            result = noise_check(optuna_study, cfg, ev)
    best = write_outputs(optuna_study, cfg, out, result, generations=ev.generations, seconds=time.perf_counter() - start,
                         storage=_without_password(storage), against=other, machine=measured_on(backend))
    print_summary(optuna_study, cfg, result)
    if modelfile is not None:
        label, chosen = chosen_params(result, cfg)
        rewrite_modelfile(Path(modelfile), DEFAULTS.replace(**chosen), only=chosen)
        why = f"{label}'s values" if label != "default" else "the default values: no trial beat them beyond noise"
        err.print(f"{modelfile}: PARAMETER {', '.join(f'{k} {v}' for k, v in chosen.items())} ({why})")
    err.print(f"[bold]{best['verdict']}[/]", soft_wrap=True)
    err.print(f"report: {out / 'report.md'}")
    return 0


"""Planted generator replies for the `data synth` tests: the replies go into the generation cache
under the exact requests the command makes, for a server backend that is never reached, so the
whole command runs without a model (a request the cache lacks fails loudly)."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.params import DEFAULTS
from toolkit.runtime.backends import BackendSpec
from toolkit.runtime.cache import GenerationCache
from toolkit.runtime.generation import Generation
from toolkit.synth.command import SynthOptions, check_options, read_seeds, synth
from toolkit.synth.seeds import Planner, load_template

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: a request the cache lacks fails loudly
SPEC = BackendSpec("openai", "planted", UNREACHABLE)

ANSWER = ("Hold out a validation split before any tuning, then run a learning-rate sweep with three seeds per value, "
          "compare the mean validation loss with a paired bootstrap interval, and keep the smallest rate within the "
          "interval of the best one.")


def reply(question: str, answer: str = ANSWER) -> str:
    return json.dumps({"question": question, "answer": answer})


def plant(out: Path, options: SynthOptions, replies: list[str]) -> None:
    """Put `replies` in OUT's generation cache as the answers to attempts 0, 1, ... of this run."""
    kind, value = check_options(options)
    template, _ = load_template(kind, options.prompt)
    planner = Planner(kind, read_seeds(kind, value), template, DEFAULTS, DEFAULTS.seed)
    cache = GenerationCache(out / "generations.sqlite")
    for i, text in enumerate(replies):
        cache.put(GenerationCache.key(SPEC.weights_id(), planner.attempt(i).request), Generation(text, "stop", 10, 50, 0.1).to_dict())
    cache.close()


def run_planted(out: Path, replies: list[str], **fields) -> dict:
    options = SynthOptions(max_attempts=len(replies), **fields)
    plant(out, options, replies)
    return synth(out, options, model=SPEC.model, backend=SPEC.name, url=SPEC.url)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]

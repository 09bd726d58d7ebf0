"""`toolkit data synth --judge MODEL --min-score K`: a pointwise rubric score for each pair.

The rubric (prompts/rubric.txt, overridable) asks whether the answer is a concrete, correct method
for the question and reads a score of 1 to 5. Before any score counts, the judge is calibrated the
way compare's pairwise judge is (evaluate/judge.py): on real question/answer pairs (the imitated
file's, else the bundled sample QA), it scores each reference answer and a corrupted copy (another
question's reference, or the reference's sentences shuffled: `evaluate.judge.corrupt`). A judge
that does not score the reference higher beyond chance (one-sided sign test p < 0.05, and in at
least half the pairs) is reported as too weak and is not applied. Replies are greedy and cached in
OUT/judgments.sqlite (runtime/cache.py), so a re-run judges only what is new.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.readers import load_examples
from toolkit.evaluate.judge import corrupt, read_prompt
from toolkit.evaluate.stats import beats_chance
from toolkit.params import DEFAULTS
from toolkit.runtime.backends import BackendSpec
from toolkit.runtime.cache import GenerationCache, Request, generate_cached
from toolkit.synth.seeds import fill

RUBRIC = Path(__file__).with_name("prompts") / "rubric.txt"
SAMPLE_QA = Path(__file__).resolve().parents[2] / "data" / "sample" / "qa.csv"
PLACEHOLDERS = ("{question}", "{answer}")
CALIBRATION_PAIRS = 24  # as compare's judge: 12 right with 3 wrong already passes (p = 0.018)
_BRACKETED = re.compile(r"\[\[\s*([1-5])\s*\]\]")
_DIGIT = re.compile(r"(?<![\d.])([1-5])(?![\d.])")


def load_rubric(path: Path | None) -> tuple[str, str]:
    """The rubric without its leading '#' comment lines, and where it came from."""
    text = read_prompt(Path(path) if path else RUBRIC, PLACEHOLDERS, "judge rubric", "--judge-prompt", "the rubric")
    return text, str(path) if path else "prompts/rubric.txt (shipped)"


def parse_score(reply: str) -> int | None:
    """The score 1-5 from a reply: [[K]] first, else the first lone digit 1-5; None when neither is there."""
    found = _BRACKETED.search(reply or "") or _DIGIT.search(reply or "")
    return int(found.group(1)) if found else None


@dataclass
class PointwiseJudge:
    """Who judges, with which rubric, and the cache its replies go to."""

    spec: BackendSpec
    rubric: str
    source: str
    cache: GenerationCache
    max_tokens: int = 24
    seed: int = 0
    generated: int = 0

    def scores(self, pairs: list[tuple[str, str]], label: str) -> list[int | None]:
        params = DEFAULTS.replace(temperature=0.0, max_tokens=self.max_tokens, seed=self.seed, num_ctx=2048)
        requests = [Request.of(fill(self.rubric, {"{question}": q, "{answer}": a}), params) for q, a in pairs]
        replies, fresh = generate_cached(self.spec, requests, self.cache, label)
        self.generated += fresh
        return [parse_score(r.get("text") or "") for r in replies]


def calibration_pairs(imitated: list | None) -> list[tuple[str, str]]:
    """Real (question, reference) pairs: the imitated file's, else the bundled sample QA."""
    if imitated:
        return [(s.text, s.answer) for s in imitated]
    if not SAMPLE_QA.is_file():
        return []

    return [(ex.prompt, ex.response) for ex in load_examples(SAMPLE_QA)]


def calibrate(judge: PointwiseJudge, pairs: list[tuple[str, str]], seed: int) -> dict:
    """Reference answers against corrupted copies: does the judge score the reference higher?"""
    refs = [a for _, a in pairs]
    rng = random.Random(seed)
    n = min(len(pairs), CALIBRATION_PAIRS)
    copies = [corrupt(refs, i, rng) for i in range(n)]
    scored = judge.scores([pairs[i] for i in range(n)] + [(pairs[i][0], copies[i][0]) for i in range(n)], "judge calibration")
    right = sum(a is not None and b is not None and a > b for a, b in zip(scored[:n], scored[n:]))
    wrong = sum(a is not None and b is not None and a < b for a, b in zip(scored[:n], scored[n:]))
    p = beats_chance(right, right + wrong)
    return {"pairs": n, "reference_higher": right, "corrupted_higher": wrong, "undecided": n - right - wrong,
            "p_value": p, "passed": bool(n and p < 0.05 and right / n >= 0.5)}

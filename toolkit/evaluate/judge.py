"""`toolkit compare --judge MODEL`: a model judges each system's answer against the first system's.

Any backend can judge (llama.cpp in process, Ollama, an OpenAI-compatible server). The prompt is a
shipped, documented template (judge_prompt.txt; overridable). Each pair is judged in both orders
and a verdict that flips with the order counts as a tie (FastChat's rule, against position bias).
Replies are cached in OUT/judgments.sqlite like compare's generations (runtime/cache.py: judge
model, rendered prompt, decoding parameters, seed), so a re-run only judges what is new; the judge
runs --parallel replies at once, as the systems do.

Before its numbers count, every judge takes a calibration test: the reference answer against a
corrupted copy (another prompt's reference, or the reference with its sentences shuffled), in both
orders. A judge that does not prefer the reference beyond chance (one-sided sign test, p < 0.05,
and in at least half the pairs) is reported as too weak to trust. Report and rendering: judge_report.py.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.textsplit import split_sentences
from toolkit.errors import ConfigError
from toolkit.evaluate.judge_report import combine, system_result
from toolkit.evaluate.stats import beats_chance
from toolkit.params import DEFAULTS, DecodingParams
from toolkit.runtime.backends import BackendSpec
from toolkit.runtime.cache import GenerationCache, Request, generate_cached

TEMPLATE = Path(__file__).with_name("judge_prompt.txt")
PLACEHOLDERS = ("{prompt}", "{answer_a}", "{answer_b}")
CALIBRATION_PAIRS = 24  # a judge preferring the reference in 12 with 3 against already passes (p = 0.018)
JUDGE_CTX = 4096  # room for the template, the task and two answers
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_LEADING = re.compile(r"^\W*(?:answer\s+|assistant\s+)?([AB])\b", re.IGNORECASE)


@dataclass
class Judge:
    """Who judges, how, and with which prompt."""

    model: str
    backend: str = "llamacpp"
    url: str = ""
    template: str = ""
    source: str = "judge_prompt.txt (shipped)"
    params: DecodingParams = DEFAULTS
    parallel: int | None = None  # replies at once (None: the backend's default), as compare's --parallel

    @classmethod
    def open(cls, model: str, backend: str, url: str, template: Path | None, max_tokens: int, seed: int,
             parallel: int | None = None) -> Judge:
        text, source = load_template(template)
        # greedy: the verdict should not depend on a sampling draw
        params = DEFAULTS.replace(temperature=0.0, max_tokens=max_tokens, seed=seed, num_ctx=JUDGE_CTX)
        return cls(model, backend, url, text, source, params, parallel)

    def requests(self, prompts: list[str]) -> list[Request]:
        """What the judge is asked: each rendered judging prompt as one user turn, greedy."""
        return [Request.of(p, self.params) for p in prompts]


def load_template(path: Path | None) -> tuple[str, str]:
    """The template text without its leading comment lines, and where it came from."""
    source = f"{path}" if path else "judge_prompt.txt (shipped)"
    return read_prompt(Path(path) if path else TEMPLATE, PLACEHOLDERS, "judge prompt", "--judge-prompt", "the template"), source


def read_prompt(path: Path, placeholders: Sequence[str], what: str, option: str, needs: str) -> str:
    """A prompt template's text without its leading '#' comment lines (the judge's, and synth's
    rubric and generation prompts). A missing file is a ConfigError naming `what` and the `option`
    that passes another; a template without one of its `placeholders`, one saying what `needs` them."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found", fix=f"pass an existing file to {option}")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    text = "\n".join(lines).strip()
    missing = [p for p in placeholders if p not in text]
    if missing:
        raise ConfigError(f"{what} {path} lacks {', '.join(missing)}", fix=f"{needs} must contain {', '.join(placeholders)}")
    return text


def render(template: str, prompt: str, answer_a: str, answer_b: str) -> str:
    # one pass over the placeholders: an answer that itself contains "{answer_b}" stays as written
    values = dict(zip(PLACEHOLDERS, (prompt, answer_a.strip(), answer_b.strip())))
    return re.sub("|".join(re.escape(p) for p in PLACEHOLDERS), lambda m: values[m.group(0)], template)


def parse_verdict(reply: str) -> str | None:
    """`A`, `B` or `tie` from a reply: [[A]]/[[B]]/[[C]] first, else a reply that opens with A or B
    (small models often drop the brackets); None when neither is there."""
    found = _VERDICT.search(reply)
    if found:
        return {"A": "A", "B": "B", "C": "tie"}[found.group(1)]
    lead = _LEADING.match(reply.strip())
    if lead:
        return lead.group(1).upper()
    return "tie" if re.search(r"\btie\b", reply, re.IGNORECASE) else None


def corrupt(references: list[str], i: int, rng: random.Random) -> tuple[str, str]:
    """A corrupted copy of reference `i` and what was done: even items take another prompt's
    reference, odd ones shuffle the reference's sentences (when it has two or more)."""
    others = [j for j, r in enumerate(references) if r.strip() != references[i].strip()]
    sentences = split_sentences(references[i])
    if (i % 2 == 1 or not others) and len(set(sentences)) >= 2:
        shuffled = sentences[:]
        while shuffled == sentences:
            rng.shuffle(shuffled)
        return " ".join(shuffled), "shuffled sentences"
    if others:
        return references[others[(i + len(others) // 2) % len(others)]], "another prompt's reference"
    words = references[i].split()  # one prompt, one sentence: nothing better than its words reversed
    return " ".join(reversed(words)), "reversed words"


class Judging:
    """One judging run: the judge, its reply cache and how many replies were generated (not cached)."""

    def __init__(self, judge: Judge, cache):
        self.judge, self.cache, self.generated = judge, cache, 0

    def both_orders(self, items: list[tuple[str, str, str]], label: str) -> list[dict]:
        """Judge each (task, first, second) twice (first shown as A, then second as A); per item
        the verdicts in the item's terms (`first`, `second`, `tie`, or None when unreadable), the
        letter picked in each order, and the raw replies."""
        prompts = []
        for task, first, second in items:
            prompts += [render(self.judge.template, task, first, second), render(self.judge.template, task, second, first)]
        replies = [r["text"] for r in self.replies(prompts, label)]
        out = []
        for one, two in zip(replies[::2], replies[1::2]):
            letters = [parse_verdict(one), parse_verdict(two)]
            orders = [{"A": "first", "B": "second", "tie": "tie"}.get(letters[0]), {"A": "second", "B": "first", "tie": "tie"}.get(letters[1])]
            out.append({"orders": orders, "letters": letters, "raw": [one, two]})
        return out

    def replies(self, prompts: list[str], label: str) -> list[dict]:
        """The judge's reply to every prompt, generating only what the cache lacks (each cached as it ends)."""
        judge = self.judge
        spec = BackendSpec(judge.backend, judge.model, judge.url, judge.parallel)
        done, fresh = generate_cached(spec, judge.requests(prompts), self.cache, f"judge {label}")
        self.generated += fresh
        return done


def calibrate(run: Judging, examples: list, seed: int) -> dict:
    """The sanity test: the reference against a corrupted copy, in both orders."""
    refs = [ex.response for ex in examples]
    rng = random.Random(seed)
    n = min(len(examples), CALIBRATION_PAIRS)
    copies = [corrupt(refs, i, rng) for i in range(n)]
    judged = run.both_orders([(examples[i].prompt, refs[i], copies[i][0]) for i in range(n)], "calibration")
    verdicts = [combine(j["orders"]) for j in judged]
    right, wrong = verdicts.count("first"), verdicts.count("second")
    p = beats_chance(right, right + wrong)
    return {"pairs": n, "prefers_reference": right, "prefers_corrupted": wrong, "undecided": n - right - wrong,
            "score": right / n if n else float("nan"), "p_value": p, "passed": bool(n and p < 0.05 and right / n >= 0.5),
            "corruptions": {kind: sum(c[1] == kind for c in copies) for kind in sorted({c[1] for c in copies})}}


def run_judge(judge: Judge, systems: list, examples: list, folder: Path, humans: list[dict], seed: int) -> dict:
    """Calibrate the judge, then judge every system against the first one; the judge's part of results.json."""
    cache = GenerationCache(Path(folder) / "judgments.sqlite")
    run = Judging(judge, cache)
    try:
        calibration = calibrate(run, examples, seed)
        ref = systems[0]
        results = []
        for s in systems[1:]:
            items = [(ex.prompt, ref.outputs[i]["text"], s.outputs[i]["text"]) for i, ex in enumerate(examples)]
            judged = run.both_orders(items, s.label)
            lengths = [(ref.outputs[i]["completion_tokens"], s.outputs[i]["completion_tokens"]) for i in range(len(examples))]
            results.append(system_result(ref.label, s.label, judged, lengths, [ex.id for ex in examples], humans, seed))
    finally:
        cache.close()
    return {"model": judge.model, "backend": judge.backend, "url": judge.url, "template": judge.source,
            "params": {"temperature": judge.params.temperature, "max_tokens": judge.params.max_tokens, "seed": judge.params.seed},
            "calibration": calibration, "trusted": calibration["passed"], "systems": results, "generated": run.generated}

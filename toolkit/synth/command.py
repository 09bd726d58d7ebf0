"""`toolkit data synth`: a model writes research questions with detailed answers; every pair is
screened (seeds.py asks, parse.py reads, filters.py and judge.py screen), optionally reviewed by a
person (review.py), and the kept pairs are written in the JSONL format `train` reads.

Attempts are generated in batches through the shared generation cache (OUT/generations.sqlite,
runtime/cache.py): each generation is stored as it finishes, so a killed run loses none and a
re-run repeats none. Pairs are screened in attempt order and the run stops when --count pairs are
kept or after --max-attempts generations; which pairs are kept depends only on the options, never
on how the batches fell. OUT/synthetic.jsonl, OUT/dropped.jsonl (every dropped row with its
reason) and OUT/stats.json are written atomically at the end; a run that keeps nothing writes
none of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.tokens import token_counter
from toolkit.errors import BackendError, ConfigError, DataError
from toolkit.io import write_json, write_jsonl
from toolkit.options import option, plain
from toolkit.params import DEFAULTS, DecodingParams
from toolkit.runtime.backends import BackendName, BackendSpec
from toolkit.runtime.cache import GenerationCache, generate_cached
from toolkit.runtime.generation import check_parallel
from toolkit.synth.filters import COSINE_MAX, ROUGE_MAX, Embedder, Grounding, Leakage, RougeIndex, length_reasons, read_splits
from toolkit.synth.judge import PointwiseJudge, calibrate, calibration_pairs, load_rubric
from toolkit.synth.parse import parse_pair
from toolkit.synth.review import review
from toolkit.synth.seeds import Planner, load_template, read_abstracts, read_examples, read_topics

ATTEMPTS_PER_PAIR = 5  # --max-attempts default: 5 x --count


@dataclass(frozen=True)
class SynthOptions:
    """synth options (recorded in stats.json)"""

    topics: str = option("", "seed by topics: a text file with one topic per line, or a comma-separated list (\"topic a,topic b\").")
    abstracts: Path | None = option(None, "seed by abstracts: a file `data build` reads (arXiv metadata, scientific_papers, any "
                                          "container); questions are grounded in each abstract, its id kept on the row.")
    imitate: Path | None = option(None, "seed by imitation: a QA file whose pairs are shown as few-shot examples, sampled per request.")
    count: int = option(100, "pairs wanted: the run stops when this many are kept.")
    max_attempts: int = option(0, "generations at most (0 = 5 x --count).")
    against: Path | None = option(None, "the real splits' folder (train/validation/test, as `data build` writes): no kept question may be "
                                        "a near-duplicate of any of their questions or references.")
    tokenizer: str = option("smollm2", "the tokenizer lengths are counted with: the model that will be trained (embedded name, HF dir, "
                                       "tokenizer.json) or 'words'.")
    min_question_tokens: int = option(6, "drop a pair whose question is shorter than this many tokens.")
    max_question_tokens: int = option(80, "drop a pair whose question is longer than this many tokens (0 = no limit).")
    min_answer_tokens: int = option(30, "drop a pair whose answer is shorter than this many tokens.")
    max_answer_tokens: int = option(400, "drop a pair whose answer is longer than this many tokens (0 = no limit).")
    rouge_max: float = option(ROUGE_MAX, "near-duplicate and leakage threshold on ROUGE-L F (a question at or above it is dropped); "
                                         "may be lowered (stricter), never raised.")
    cosine_max: float = option(COSINE_MAX, "leakage threshold on MiniLM cosine to the real splits; may be lowered, never raised.")
    prompt: Path | None = option(None, "prompt template instead of the shipped one for the seed kind (toolkit/synth/prompts/*.txt).")
    judge: str = option("", "a judge model (any backend) that scores each pair with the rubric; applied only if it passes calibration.")
    judge_backend: BackendName = option("llamacpp", "llamacpp, ollama or openai for the judge.")
    judge_url: str = option("", "server URL for an ollama/openai judge.")
    judge_prompt: Path | None = option(None, "the judge's rubric (default: the shipped toolkit/synth/prompts/rubric.txt).")
    min_score: int = option(4, "with --judge: drop a pair the judge scores below this (1-5).")
    review: bool = option(False, "open the kept pairs in the browser to accept or reject one by one; only accepted pairs are written.")
    host: str = option("127.0.0.1", "--review: address to listen on (only 127.0.0.1 keeps the page on this machine).")
    port: int = option(8767, "--review: port to listen on.")
    open_page: bool = option(True, "--review: open the page in the browser (never under CI).", flag="open")


def check_options(o: SynthOptions) -> tuple[str, str]:
    """(seed kind, its option value), refusing what cannot run, each in one line."""
    given = [(k, v) for k, v in (("topics", o.topics), ("abstracts", o.abstracts), ("imitate", o.imitate)) if v not in ("", None)]
    if not given:
        raise ConfigError("no seeds given", fix="pass --topics FILE (or \"a,b\"), --abstracts FILE or --imitate FILE")
    if len(given) > 1:
        raise ConfigError(f"one seed kind per run, got --{given[0][0]} and --{given[1][0]}", fix="run once per seed kind, into separate --out folders")
    if o.count <= 0:
        raise ConfigError(f"--count {o.count}: nothing to generate", fix="pass --count N with N >= 1 (the pairs wanted)")
    if o.max_attempts < 0:
        raise ConfigError(f"--max-attempts {o.max_attempts} is negative", fix="pass 0 (5 x --count) or a positive number")
    for name, value, top in (("rouge-max", o.rouge_max, ROUGE_MAX), ("cosine-max", o.cosine_max, COSINE_MAX)):
        if not 0 < value <= top:
            raise ConfigError(f"--{name} {value:g} is outside (0, {top:g}]", fix=f"the documented threshold is {top:g}: lower is stricter, higher is refused")
    if o.judge and not 1 <= o.min_score <= 5:
        raise ConfigError(f"--min-score {o.min_score} is outside 1..5", fix="the rubric scores 1 to 5, e.g. --min-score 4")
    return given[0][0], str(given[0][1])


class Screen:
    """Every filter of one run, applied to a batch of attempts in order."""

    def __init__(self, o: SynthOptions, kind: str, seeds: list, out: Path, judge, seed: int, examples: list[tuple[str, str]]):
        self.o, self.kind = o, kind
        self.counter = token_counter(o.tokenizer)
        self.bounds = {"question": (o.min_question_tokens, o.max_question_tokens), "answer": (o.min_answer_tokens, o.max_answer_tokens)}
        self.embed = Embedder(out / "embeddings.sqlite") if o.against or kind == "abstracts" else None
        self.leakage = Leakage(read_splits(o.against), self.embed, o.rouge_max, o.cosine_max) if o.against else None
        self.grounding = Grounding({s.id: s.text for s in seeds}, self.embed, seed=seed) if kind == "abstracts" else None
        self.pool = RougeIndex()
        self.examples = examples  # the template's example pairs: a reply copying one is dropped
        self.judge = judge  # a calibrated PointwiseJudge, or None

    def batch(self, attempts: list, generations: list[dict]) -> list[dict]:
        """One entry per attempt: its parsed pair, and `reason`/`detail` when a per-pair filter dropped it."""
        rows = []
        for a, gen in zip(attempts, generations):
            parsed = parse_pair(gen.get("text") or "")
            row = {"attempt": a.index, "seeds": a.seeds, "text": gen.get("text") or ""}
            if isinstance(parsed, str):
                row |= {"reason": "malformed", "detail": parsed}
            else:
                row |= {"question": parsed[0], "answer": parsed[1]}
            rows.append(row)
        self._apply(rows, self._copies)
        self._apply(rows, lambda live: length_reasons(self.counter, [r["question"] for r in live], [r["answer"] for r in live], self.bounds))
        if self.leakage is not None:
            self._apply(rows, lambda live: self.leakage.check([r["question"] for r in live]))
        if self.grounding is not None:
            self._apply(rows, lambda live: self.grounding.check([r["answer"] for r in live], [r["seeds"][0].id for r in live],
                                                                [r["attempt"] for r in live]))
        if self.judge is not None:
            self._apply(rows, self._judged)
        return rows

    def _copies(self, live: list[dict]) -> list:
        """A question or answer copied from what the generator was shown (the template's example, the imitated pairs)."""
        reasons = []
        for r in live:
            shown = self.examples + ([(s.text, s.answer) for s in r["seeds"]] if self.kind == "imitate" else [])
            scores = [(score, text) for part, i in (("question", 0), ("answer", 1))
                      for score, text in zip(self.pool.rouge(r[part], [pair[i] for pair in shown]), (pair[i] for pair in shown))]
            score, text = max(scores, default=(0.0, ""))
            reasons.append(("copy of an example", f"ROUGE-L {score:.2f} to {text[:80]!r}") if score >= self.o.rouge_max else None)
        return reasons

    def _judged(self, live: list[dict]) -> list:
        scores = self.judge.scores([(r["question"], r["answer"]) for r in live], "judge the pairs")
        for r, s in zip(live, scores):
            r["judge_score"] = s
        return [None if s is not None and s >= self.o.min_score else (f"judge score below {self.o.min_score}", f"score {s}")
                for s in scores]

    @staticmethod
    def _apply(rows: list[dict], check) -> None:
        live = [r for r in rows if "reason" not in r]
        for r, reason in zip(live, check(live) if live else []):
            if reason is not None:
                r["reason"], r["detail"] = reason

    def duplicate(self, question: str) -> tuple[str, str] | None:
        """Against every question kept so far (then kept: added to the pool)."""
        score, j = self.pool.nearest(question)
        if j >= 0 and score >= self.o.rouge_max:
            return "near duplicate", f"ROUGE-L {score:.2f} >= {self.o.rouge_max:g} to kept question {j + 1}"
        self.pool.add(question)
        return None

    def close(self) -> None:
        if self.embed is not None:
            self.embed.close()


def read_seeds(kind: str, value: str) -> list:
    return {"topics": read_topics, "abstracts": read_abstracts, "imitate": read_examples}[kind](value)


def open_judge(o: SynthOptions, seeds: list, kind: str, out: Path, seed: int) -> tuple[object | None, dict | None]:
    """The calibrated judge (None when not asked, or when it is too weak) and its stats entry."""
    if not o.judge:
        return None, None

    rubric, source = load_rubric(o.judge_prompt)
    judge = PointwiseJudge(BackendSpec(o.judge_backend, o.judge, o.judge_url), rubric, source, GenerationCache(out / "judgments.sqlite"),
                           seed=seed)
    pairs = calibration_pairs(seeds if kind == "imitate" else None)
    calibration = calibrate(judge, pairs, seed) if pairs else {"pairs": 0, "passed": False}
    info = {"model": o.judge, "backend": o.judge_backend, "rubric": source, "min_score": o.min_score, "calibration": calibration,
            "calibrated_on": "the imitated file" if kind == "imitate" else "the bundled sample QA", "applied": calibration["passed"]}
    if not calibration["passed"]:
        from toolkit.console import err

        err.print(f"[yellow]judge {o.judge} is too weak to trust[/] (it scored the reference above a corrupted copy in "
                  f"{calibration.get('reference_higher', 0)} of {calibration['pairs']} pairs): not applied")
        judge.cache.close()
        return None, info
    return judge, info


def synth(out: Path = Path("data/synth"), options: SynthOptions = SynthOptions(), model: str = "smollm2",
          backend: BackendName = "llamacpp", url: str = "", parallel: int = 0, params: DecodingParams = DEFAULTS) -> dict:
    """Make synthetic research questions with detailed answers from a local model, screened and counted.

    Seeds are topics, abstracts or an existing QA file to imitate. MODEL (any backend: a bigger
    model through Ollama or an OpenAI-compatible server is the expected use) writes one pair per
    request from a shipped prompt; pairs are dropped when malformed, outside the token bounds, near
    duplicates of a kept question (ROUGE-L F >= 0.7), near duplicates of the real splits given with
    --against (ROUGE-L F >= 0.7 or MiniLM cosine >= 0.9), not grounded in their abstract, or (with
    --judge) scored below --min-score. Generations are cached in OUT/generations.sqlite: a killed
    run resumes and repeats none. Writes OUT/synthetic.jsonl (question, answer, source: synthetic,
    the generator and the seed item), OUT/dropped.jsonl and OUT/stats.json, and prints the drop table.

    Args:
        out: the output folder.
        options: what to seed with, how many, and the filters' settings.
        model: the generator (embedded name or .gguf for llamacpp; a model name at a server).
        backend: which backend runs MODEL: llamacpp (in process), ollama or openai.
        url: server URL for the ollama/openai backends.
        parallel: generations at once (0 = the backend's default).
    """
    kind, value = check_options(options)
    if parallel:
        check_parallel(parallel)
    seeds = read_seeds(kind, value)
    template, source = load_template(kind, options.prompt)
    out = Path(out)
    spec = BackendSpec(backend, model, url, parallel or None)
    spec.check()
    judge, judge_info = open_judge(options, seeds, kind, out, params.seed)
    planner = Planner(kind, seeds, template, params, params.seed)
    screen = Screen(options, kind, seeds, out, judge, params.seed, planner.examples())
    cache = GenerationCache(out / "generations.sqlite")
    try:
        result = run(planner, screen, spec, cache, options)
    finally:
        cache.close()
        screen.close()
        if judge is not None:
            judge.cache.close()
    result |= {"seed_kind": kind, "seeds": len(seeds), "prompt": source, "judge": judge_info, "out": str(out),
               "generator": generator_of(spec), "options": plain(options), "params": params.to_dict()}
    return finish(result, out, options)


def generator_of(spec: BackendSpec) -> dict:
    return {"backend": spec.name, "model": spec.model, "url": spec.url, "weights": spec.weights_id()}


def run(planner, screen: Screen, spec: BackendSpec, cache, o: SynthOptions) -> dict:
    """Generate and screen batches of attempts until --count pairs are kept or the attempts run out."""
    limit = o.max_attempts or ATTEMPTS_PER_PAIR * o.count
    kept, dropped, fresh, asked, start = [], [], 0, 0, 0
    while len(kept) < o.count and start < limit:
        stop = min(limit, start + max(4, spec.parallel or 0, 2 * (o.count - len(kept))))
        attempts = planner.attempts(start, stop)
        generations, made = generate_cached(spec, [a.request for a in attempts], cache, f"generate pairs {start + 1}-{stop}")
        fresh, asked = fresh + made, asked + len(attempts)
        rows = screen.batch(attempts, generations)
        if start == 0 and all(r.get("reason") == "malformed" for r in rows):
            example = " ".join(rows[0]["text"].split())[:80]
            raise BackendError(f"the generator {spec.model} returned nothing parseable in the first {len(rows)} replies "
                               f"(first: {example!r})", fix="use a stronger --model, or a --prompt asking for \"Question:\" and "
                               "\"Answer:\" lines (or one JSON object)")
        for r in rows:
            if len(kept) == o.count:
                break
            reason = (r["reason"], r["detail"]) if "reason" in r else screen.duplicate(r["question"])
            if reason is None:
                kept.append(r)
            else:
                r["reason"], r["detail"] = reason
                dropped.append(r)
        start = stop
    screened = len(kept) + len(dropped)
    return {"count": o.count, "max_attempts": limit, "attempts": screened, "generations": asked, "generated": fresh, "kept": kept, "dropped": dropped,
            "drops": dict(Counter(r["reason"] for r in dropped).most_common())}


def row_of(r: dict, generator: dict, kind: str) -> dict:
    """A kept pair as `train` reads it (question/answer), with where it came from."""
    seeds = r["seeds"]
    item = {"kind": kind, "ids": [s.id for s in seeds]} if kind == "imitate" else {"kind": kind, "id": seeds[0].id, "text": seeds[0].text[:200]}
    row = {"id": f"synth-{r['attempt']:06d}", "question": r["question"], "answer": r["answer"], "source": "synthetic",
           "generator": generator, "seed_item": item, "attempt": r["attempt"]}
    if kind == "abstracts":
        row["abstract_id"] = seeds[0].id
    if "judge_score" in r:
        row["judge_score"] = r["judge_score"]
    return row


def dropped_of(r: dict) -> dict:
    return {"attempt": r["attempt"], "reason": r["reason"], "detail": r["detail"], "seed_ids": [s.id for s in r["seeds"]],
            "question": r.get("question"), "answer": r.get("answer"), "reply": r["text"] if "question" not in r else None}


def finish(result: dict, out: Path, o: SynthOptions) -> dict:
    """Review (when asked), print the table, and write the three outputs, or refuse when nothing is kept."""
    kind, generator = result["seed_kind"], result["generator"]
    rows = [row_of(r, generator, kind) for r in result.pop("kept")]
    dropped = [dropped_of(r) for r in result.pop("dropped")]
    result["kept"] = len(rows)
    if rows and o.review:
        decided = review(rows, out, o.host, o.port, o.open_page)
        result["review"] = {"accepted": sum(decided.values()), "rejected": sum(not v for v in decided.values())}
        rows = [r for r in rows if decided.get(r["id"])]
    print_table(result, len(rows))
    if not rows:
        what = "the review accepted no pair" if result["kept"] else f"every one of {result['attempts']} pairs was dropped"
        raise DataError(f"{what}: nothing written", path=out,
                        fix="see the drop table; use a stronger --model, more --max-attempts or other seeds (the thresholds are not loosened)")
    result["written"] = len(rows)
    write_jsonl(out / "synthetic.jsonl", rows)
    write_jsonl(out / "dropped.jsonl", dropped)
    write_json(out / "stats.json", result)
    return result


def print_table(result: dict, written: int) -> None:
    from rich.table import Table

    from toolkit.console import out

    table = Table(title=f"synthetic pairs from {result['generator']['model']} ({result['seed_kind']}) -> {result['out']}")
    table.add_column("", justify="left")
    table.add_column("pairs", justify="right")
    table.add_row("screened (wanted)", f"{result['attempts']} ({result['count']})")
    table.add_row("generations: made now / cached", f"{result['generated']} / {result['generations'] - result['generated']}")
    table.add_row("[green]kept", f"[green]{result['kept']}")
    for reason, n in result["drops"].items():
        table.add_row(f"[yellow]dropped: {reason}", f"[yellow]{n}")
    if "review" in result:
        table.add_row("reviewed: accepted / rejected", f"{result['review']['accepted']} / {result['review']['rejected']}")
    table.add_row("[bold]written", f"[bold]{written}")
    out.print(table)

"""What `toolkit data synth` asks the generator: the seed items (topics, abstracts, or pairs to
imitate), the shipped prompt templates (prompts/*.txt, overridable) and one request per attempt.

Attempt `i` is fixed by the options alone: its seed item (round-robin over the seeds; for
imitation, a seeded sample of example pairs), its rendered prompt and its sampling seed. So a
re-run asks exactly the same requests, and the generation cache (runtime/cache.py) answers every
one it has already seen.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data.columns import Columns
from toolkit.data.readers import load_examples, read_records, resolve_format
from toolkit.errors import DataError
from toolkit.evaluate.judge import read_prompt
from toolkit.params import DecodingParams
from toolkit.runtime.cache import Request
from toolkit.synth.parse import PAIR_SCHEMA, json_pairs

PROMPTS = Path(__file__).with_name("prompts")
TEMPLATES = {"topics": "topics.txt", "abstracts": "abstract.txt", "imitate": "imitate.txt"}
PLACEHOLDERS = {"topics": ("{topic}",), "abstracts": ("{title}", "{abstract}"), "imitate": ("{examples}",)}
SHOTS = 3  # example pairs per imitation request
MIN_ABSTRACT_WORDS = 20  # a shorter abstract cannot ground a detailed answer
# a template showing a JSON object that opens with "question" asks for JSON (`asks_json`)
_JSON_EXAMPLE = re.compile(r'\{\s*"question"\s*:')


@dataclass(frozen=True)
class Seed:
    """One seed item: a topic, an abstract (`id` kept on the rows it grounds) or an example pair."""

    kind: str  # topics | abstracts | imitate
    id: str
    text: str
    title: str = ""
    answer: str = ""  # an imitated pair's answer

    def ref(self) -> dict:
        """How a row names its seed item."""
        return {"kind": self.kind, "id": self.id}


@dataclass
class Attempt:
    """One generation to ask for: its index, the seed items it was made from, and the request."""

    index: int
    seeds: list[Seed]
    request: Request
    meta: dict = field(default_factory=dict)


def read_topics(spec: str) -> list[Seed]:
    """Topics from a text file (one per line; blank lines and '#' comments skipped) or a comma list."""
    path = Path(spec).expanduser()
    if path.is_file():
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        topics, where = [ln for ln in lines if ln and not ln.startswith("#")], str(path)
    elif "\n" in spec or "," in spec or not (spec.endswith(".txt") or "/" in spec):
        topics, where = [t.strip() for t in spec.split(",") if t.strip()], "--topics"
    else:
        raise DataError("topic file not found", path=spec, fix="pass an existing file with one topic per line, or --topics \"a,b\"")
    if not topics:
        raise DataError(f"{where}: the topic list is empty", fix="write one topic per line (or pass --topics \"topic a,topic b\")")
    return [Seed("topics", f"topic-{i:04d}", t) for i, t in enumerate(dict.fromkeys(topics))]


def read_abstracts(path: Path) -> list[Seed]:
    """Abstracts from any file `data build` reads as abstracts (arXiv metadata, scientific_papers,
    any container); rows under `MIN_ABSTRACT_WORDS` words or repeating an earlier abstract are not usable."""
    path = Path(path)
    if not path.exists():
        raise DataError("abstract file not found", path=path, fix="check the path")
    kind, _ = resolve_format(path, "auto", Columns())
    if kind not in ("arxiv", "papers"):
        raise DataError(f"this is {kind} data, not abstracts", path=path,
                        fix="pass arXiv metadata or scientific_papers abstracts to --abstracts (QA pairs go to --imitate)")
    seeds, seen = [], set()
    for r in read_records(path):
        text = " ".join(r.abstract.split())
        if len(text.split()) >= MIN_ABSTRACT_WORDS and text.lower() not in seen:
            seen.add(text.lower())
            seeds.append(Seed("abstracts", r.id, text, r.title))
    if not seeds:
        raise DataError(f"no usable abstract (each needs {MIN_ABSTRACT_WORDS}+ words)", path=path,
                        fix="pass a file of full abstracts (e.g. data/sample/abstracts.jsonl), or --topics")
    return seeds


def read_examples(path: Path) -> list[Seed]:
    """Question/answer pairs from any prompt/response file `train` reads (QA, built, chat, preference)."""
    examples = [ex for ex in load_examples(Path(path)) if ex.prompt.strip() and ex.response.strip()]
    if not examples:
        raise DataError("no question with an answer to imitate", path=path, fix="pass a QA file with question and answer columns")
    return [Seed("imitate", ex.id, ex.prompt.strip(), answer=ex.response.strip()) for ex in examples]


def load_template(kind: str, path: Path | None) -> tuple[str, str]:
    """The template text without its leading '#' comment lines, and where it came from."""
    source = str(path) if path else f"prompts/{TEMPLATES[kind]} (shipped)"
    file = Path(path) if path else PROMPTS / TEMPLATES[kind]
    return read_prompt(file, PLACEHOLDERS[kind], "prompt template", "--prompt", f"a --{kind} template"), source


def fill(template: str, values: dict[str, str]) -> str:
    """The template with its placeholders replaced in one pass (a value containing "{topic}" stays as written)."""
    return re.sub("|".join(re.escape(k) for k in values), lambda m: values[m.group(0)], template)


def asks_json(template: str) -> bool:
    """Whether a template asks for a JSON object: it shows one opening with a "question" field
    (`{"question": ...`). Its requests then carry `parse.PAIR_SCHEMA`, which the backend's
    JSON/grammar mode enforces where it has one."""
    return bool(_JSON_EXAMPLE.search(template))


class Planner:
    """Attempt `i` from the seeds, the template, the decoding parameters and the run's seed."""

    def __init__(self, kind: str, seeds: list[Seed], template: str, params: DecodingParams, seed: int):
        self.kind, self.seeds, self.template, self.params, self.seed = kind, seeds, template, params, seed
        self.schema = PAIR_SCHEMA if asks_json(template) else None

    def attempt(self, i: int) -> Attempt:
        if self.kind == "imitate":
            rng = random.Random(f"{self.seed}\0{i}")
            shots = rng.sample(self.seeds, min(SHOTS, len(self.seeds)))
            blocks = "\n\n".join(f"Question: {s.text}\nAnswer: {s.answer}" for s in shots)
            used, prompt = shots, fill(self.template, {"{examples}": blocks})
        else:
            item = self.seeds[i % len(self.seeds)]
            values = {"{topic}": item.text} if self.kind == "topics" else {"{title}": item.title or "(untitled)", "{abstract}": item.text}
            used, prompt = [item], fill(self.template, values)
        return Attempt(i, used, Request.of(prompt, self.params.replace(seed=(self.seed * 1_000_003 + i) % 2**31), schema=self.schema))

    def examples(self) -> list[tuple[str, str]]:
        """The (question, answer) pairs the template shows as examples ("Question:" / "Answer:" lines,
        or JSON objects): a reply copying one is dropped."""
        found = re.findall(r"^Question:[ \t]*(.+)\nAnswer:[ \t]*(.+)$", self.template, re.MULTILINE)
        return [(q.strip(), a.strip()) for q, a in found] + json_pairs(self.template)

    def attempts(self, start: int, stop: int) -> list[Attempt]:
        return [self.attempt(i) for i in range(start, stop)]

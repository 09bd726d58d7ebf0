"""Reading one question and one answer out of a generator's reply.

The shipped prompts ask for one JSON object {"question", "answer"} and their requests carry
`PAIR_SCHEMA`, which the backend's JSON/grammar mode enforces (runtime/cache.py `Request.schema`;
the embedded 135M model measured both ways in the README, "Synthetic training data"). Three forms are read,
in this order: a JSON object with string `question` and `answer` fields anywhere in the reply (code
fences and prose around it are fine); `Question:` / `Answer:` labels (also `Q:` / `A:`, after any
preamble: a custom --prompt may ask for them); a reply that opens with a question (a sentence
ending in `?`) followed by its answer. Anything else, or a reply holding more than one pair, is
malformed and is dropped with the reason.
"""

from __future__ import annotations

import json
import re

# "Question: ..." on one line (after any preamble: "Here it is: Question: ..."), then "Answer: ..." to the end
_LABELS = re.compile(r"(?:^|(?<=\s))\W*(?:question|q)(?:\s+is)?[ \t]*:[ \t]*(?P<q>[^\n]+?)\s*\n+\W*(?:answer|a)(?:\s+is)?\s*:\s*(?P<a>.+)$",
                     re.IGNORECASE | re.DOTALL)
_SECOND_PAIR = re.compile(r"\n\W*(?:question|q)\s*[:.]", re.IGNORECASE)
_LEADING_QUESTION = re.compile(r"^[\s\"'*#]*(?P<q>[A-Z][^?\n]{9,300}\?)[\"'*]*\s+(?P<a>\S.+)$", re.DOTALL)


# The reply a JSON prompt asks for, sent through the backend's JSON/grammar mode where it has one
# (runtime/cache.py `Request.schema`): llama.cpp writes the question first, then the answer, and
# neither empty (under a grammar without minLength the 135M model wrote `"question": ""` in 2 of 16).
PAIR_SCHEMA = {"type": "object", "properties": {"question": {"type": "string", "minLength": 1}, "answer": {"type": "string", "minLength": 1}},
               "required": ["question", "answer"], "additionalProperties": False}


def _json_objects(text: str) -> list[dict]:
    """Every JSON object that parses starting at a `{` of `text`, outermost first, none nested in another.
    Raw line breaks inside strings are read (llama.cpp's JSON grammar lets a model write them)."""
    decoder, found, i = json.JSONDecoder(strict=False), [], 0
    while (i := text.find("{", i)) != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = end
    return found


def json_pairs(text: str) -> list[tuple[str, str]]:
    """The (question, answer) of every JSON object in `text` that has both as strings."""
    return [p for p in (_pair_of(o) for o in _json_objects(text)) if p is not None]


def _pair_of(obj: dict) -> tuple[str, str] | None:
    fields = {str(k).strip().lower(): v for k, v in obj.items()}
    q, a = fields.get("question"), fields.get("answer")
    return (q.strip(), a.strip()) if isinstance(q, str) and isinstance(a, str) else None


def parse_pair(text: str) -> tuple[str, str] | str:
    """`(question, answer)` from a reply, or the reason it is malformed (a short phrase)."""
    text = (text or "").strip()
    if not text:
        return "empty reply"
    objects = _json_objects(text)
    pairs = [p for p in map(_pair_of, objects) if p is not None]
    if len(pairs) > 1:
        return "more than one pair"
    if pairs:
        found = pairs[0]
    elif objects:
        return "JSON without string question and answer"
    elif (m := _LABELS.search(text)) or (m := _LEADING_QUESTION.match(text)):
        found = (m.group("q").strip(), m.group("a").strip())
        if _SECOND_PAIR.search("\n" + found[1]):
            return "more than one pair"
    else:
        return "no question and answer found"
    question, answer = " ".join(found[0].split()), " ".join(re.sub(r"^\W*answer\s*:\s*", "", found[1], flags=re.IGNORECASE).split())
    if not question or not answer:
        return "empty question or answer"
    return question, answer

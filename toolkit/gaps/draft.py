"""`--draft`: a research problem and approach for each top gap, from a local model, with sources.

For a gap between clusters A and B the sources are the papers of each side nearest the other side
(highest summed cosine to both centres; HDBSCAN's noise papers belong to no side): their ids are
cited and their abstracts (shortened) go into the prompt. The model answers in the problem -> approach form the toolkit trains on: one
sentence of problem, then the approach (hypotheses, method, evaluation).

Grounding check: the draft is embedded with the same encoder; it is *grounded* when its mean
cosine to the cited abstracts exceeds its mean cosine to `RANDOM_REFS` random other abstracts
(seeded), and flagged otherwise. Generations are cached in OUT/drafts.sqlite (runtime/cache.py:
model digest, conversation, decoding parameters, seed), so a re-run or an interrupted run only
generates what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from toolkit.data.textsplit import split_sentences
from toolkit.gaps.analysis import Analysis
from toolkit.params import DecodingParams
from toolkit.runtime.backends import BackendSpec
from toolkit.runtime.cache import GenerationCache, Request, generate_cached

SOURCES_PER_SIDE = 2
RANDOM_REFS = 20
WORDS_PER_ABSTRACT = 70
SYSTEM = "You are a research scientist who proposes concrete, testable research directions."


def sources(fit: Analysis, gap: dict, per_side: int = SOURCES_PER_SIDE) -> dict[str, list[int]]:
    """Indices of the papers on each side of `gap` nearest the other side."""
    cl = fit.clustering
    a, b = gap["a"], gap["b"]
    toward = cl.reduced @ (cl.centers[a] + cl.centers[b])
    out = {}
    for side, c in (("a", a), ("b", b)):
        members = np.flatnonzero(cl.labels == c)
        out[side] = [int(i) for i in members[np.argsort(-toward[members])[:per_side]]]
    return out


def _short(text: str, words: int = WORDS_PER_ABSTRACT) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def prompt_for(fit: Analysis, gap: dict, cited: dict[str, list[int]]) -> str:
    """The user turn asking for one problem -> approach draft bridging the two areas."""
    def side(label: str, idx: list[int]) -> str:
        return "\n".join(f"[{fit.papers[i].id}] {_short(fit.papers[i].text)}" for i in idx) or f"(no papers in {label})"

    la, lb = fit.label(gap["a"]), fit.label(gap["b"])
    return (f"Two research areas are close in meaning but rarely combined.\n\nArea A ({la}):\n{side(la, cited['a'])}\n\n"
            f"Area B ({lb}):\n{side(lb, cited['b'])}\n\n"
            "Propose one research direction that connects A and B. Answer in exactly this form:\n"
            "Problem: <one sentence stating the research problem>\n"
            "Approach: <hypotheses, method and evaluation, in 2-4 sentences, citing the [ids] above>")


_PROBLEM = re.compile(r"problem\s*[:\-]\s*(.+?)(?=\n\s*approach\s*[:\-]|$)", re.I | re.S)
_APPROACH = re.compile(r"approach\s*[:\-]\s*(.+)$", re.I | re.S)


def parse_draft(text: str) -> tuple[str, str]:
    """(problem, approach) from a reply; without the labels, the first sentence is the problem."""
    text = text.strip()
    p, a = _PROBLEM.search(text), _APPROACH.search(text)
    if p and a:
        return " ".join(p.group(1).split()), " ".join(a.group(1).split())

    sentences = split_sentences(" ".join(text.split())) or [""]
    return sentences[0], " ".join(sentences[1:])


def grounding(draft_vec: np.ndarray, X: np.ndarray, cited: list[int], seed: int) -> dict:
    """Mean cosine of the draft to its cited abstracts vs to random other abstracts."""
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(len(X)), cited)
    refs = rng.choice(others, size=min(RANDOM_REFS, len(others)), replace=False) if len(others) else np.array([], int)
    cited_sim = float((X[cited] @ draft_vec).mean()) if cited else float("nan")
    random_sim = float((X[refs] @ draft_vec).mean()) if len(refs) else float("nan")
    return {"cited_similarity": round(cited_sim, 4), "random_similarity": round(random_sim, 4),
            "grounded": bool(cited_sim > random_sim), "random_refs": len(refs)}


def draft_requests(prompts: list[str], params: DecodingParams) -> list[Request]:
    """What the model is asked per gap: the research-scientist system turn, then the gap's prompt."""
    return [Request.of(p, params, SYSTEM) for p in prompts]


def draft_gaps(fit: Analysis, X: np.ndarray, gaps: list[dict], encoder, backend: str, model: str, url: str,
               params: DecodingParams, cache_path: Path, parallel: int | None = None) -> list[dict]:
    """One draft per gap (cached), each with its cited ids, the ids it mentions and its grounding."""
    from toolkit.gaps.embed import embed_texts

    cited = [sources(fit, g) for g in gaps]
    prompts = [prompt_for(fit, g, c) for g, c in zip(gaps, cited)]
    cache = GenerationCache(cache_path)
    try:
        done, _ = generate_cached(BackendSpec(backend, model, url, parallel), draft_requests(prompts, params), cache, "draft gaps")
    finally:
        cache.close()
    texts = [d["text"] for d in done]
    vecs, _ = embed_texts(texts, [f"draft-{i}" for i in range(len(texts))], encoder, None, description="embed drafts")
    out = []
    for n, (g, c, d) in enumerate(zip(gaps, cited, done)):
        problem, approach = parse_draft(d["text"])
        ids = [fit.papers[i].id for i in c["a"] + c["b"]]
        out.append({"a": g["a"], "b": g["b"], "problem": problem, "approach": approach, "text": d["text"].strip(),
                    "cites": {"a": [fit.papers[i].id for i in c["a"]], "b": [fit.papers[i].id for i in c["b"]]},
                    "mentioned_ids": [i for i in ids if i in d["text"]], "finish_reason": d.get("finish_reason"),
                    "grounding": grounding(vecs[n], X, c["a"] + c["b"], seed=n)})
    return out

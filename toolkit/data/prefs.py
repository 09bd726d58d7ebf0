"""`toolkit data prefs`: preference pairs from an SFT split, the way small teams make them without
human labels: chosen = the split's reference answer, rejected = a model's own generation for the
same prompt (the base or the SFT model, through any backend, batched). Pairs whose two sides are
near duplicates carry no preference and are dropped (the threshold is an option).

Generations are cached in one SQLite file beside the output (runtime/cache.py: model, conversation,
parameters, seed) and written as each finishes, so an interrupted run resumes where it stopped;
the pairs file is written atomically at the end.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path

from toolkit.data.readers import load_examples
from toolkit.errors import ConfigError, DataError
from toolkit.io import write_jsonl
from toolkit.params import DEFAULTS, DecodingParams
from toolkit.runtime.backends import BackendName, BackendSpec
from toolkit.runtime.cache import GenerationCache, Request, generate_cached
from toolkit.runtime.generation import check_parallel


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def similarity(a: str, b: str) -> float:
    """How alike two answers are, 0..1 (difflib's ratio on lower-cased, whitespace-squashed text)."""
    return difflib.SequenceMatcher(None, _squash(a), _squash(b), autojunk=False).ratio()


def conversation_of(example) -> list[dict]:
    """The prompt as chat messages: a chat example's turns before its last reply, else one user turn."""
    messages = (getattr(example, "meta", None) or {}).get("messages")
    if isinstance(messages, list) and len(messages) > 1 and messages[-1].get("role") == "assistant":
        return [{"role": m["role"], "content": m.get("content") or ""} for m in messages[:-1]]
    return [{"role": "user", "content": example.prompt}]


def pref_requests(conversations: list[list[dict]], params: DecodingParams) -> list[Request]:
    """What the model is asked: each example's conversation (`conversation_of`) with the run's parameters."""
    return [Request(conv, params) for conv in conversations]


def build_pairs(examples: list, generations: list[dict], conversations: list[list[dict]], threshold: float) -> tuple[list[dict], Counter]:
    """Pairs (TRL prompt/chosen/rejected) and the count of each reason a pair was dropped."""
    rows, dropped = [], Counter()
    for ex, gen, conv in zip(examples, generations, conversations):
        chosen, rejected = ex.response.strip(), (gen.get("text") or "").strip()
        if not rejected:
            dropped["empty generation"] += 1
            continue
        sim = similarity(chosen, rejected)
        if sim >= threshold:
            dropped["near duplicate" if sim < 1 else "identical"] += 1
            continue
        prompt = conv[0]["content"] if len(conv) == 1 else conv
        rows.append({"id": ex.id, "prompt": prompt, "chosen": chosen, "rejected": rejected, "similarity": round(sim, 4),
                     "rejected_finish": gen.get("finish_reason")})
    return rows, dropped


def prefs(split: Path, out: Path = Path("data/prefs/train.jsonl"), model: str = "smollm2", backend: BackendName = "llamacpp",
          url: str = "", similarity_max: float = 0.9, limit: int = 0, parallel: int = 0,
          params: DecodingParams = DEFAULTS) -> dict:
    """Make preference pairs from an SFT split: chosen = the reference answer, rejected = a model's own answer.

    Each prompt of SPLIT is answered by MODEL (the base or an SFT model, any backend, batched);
    pairs whose two sides are near duplicates are dropped. Generations are cached in
    OUT's folder (OUT-stem.generations.sqlite), so an interrupted run resumes and a re-run with
    another threshold generates nothing; OUT is written atomically, then a table of what was kept.

    Args:
        split: SFT data with reference answers (a built split from toolkit data build, QA or chat data).
        out: the pairs file (JSON Lines: id, prompt, chosen, rejected, similarity).
        model: the model that writes the rejected answers (embedded name or .gguf for llamacpp; a model name at a server).
        backend: which backend runs MODEL: llamacpp (in process), ollama or openai.
        url: server URL for the ollama/openai backends.
        similarity_max: drop a pair whose sides are at least this similar (0..1, character-level ratio).
        limit: use the first N prompts (0 = all).
        parallel: generations at once (0 = the backend's default).
    """
    if not 0 < similarity_max <= 1:
        raise ConfigError(f"--similarity-max {similarity_max} is outside (0, 1]", fix="e.g. 0.9 (1 drops only identical pairs)")
    if parallel:
        check_parallel(parallel)
    examples = [ex for ex in load_examples(Path(split)) if ex.response.strip()]
    examples = examples[:limit] if limit else examples
    if not examples:
        raise DataError("no examples with a reference answer", path=split, fix="pass a built split (toolkit data build) or QA/chat data")
    out = Path(out)
    conversations = [conversation_of(ex) for ex in examples]
    cache = GenerationCache(out.parent / f"{out.stem}.generations.sqlite")
    try:
        generations, fresh = generate_cached(BackendSpec(backend, model, url, parallel or None), pref_requests(conversations, params),
                                             cache, f"rejected answers from {Path(model).name}")
    finally:
        cache.close()
    rows, dropped = build_pairs(examples, generations, conversations, similarity_max)
    if not rows:
        raise DataError(f"every pair was dropped ({dict(dropped)})", path=split,
                        fix="raise --similarity-max, or generate with another model or --temperature")
    write_jsonl(out, rows)
    result = {"split": str(split), "out": str(out), "model": model, "backend": backend, "prompts": len(examples),
              "generated": fresh, "cached": len(examples) - fresh, "kept": len(rows), "dropped": dict(dropped),
              "similarity_max": similarity_max, "mean_similarity_kept": round(sum(r["similarity"] for r in rows) / len(rows), 4)}
    _print_table(result)
    return result


def _print_table(result: dict) -> None:
    from rich.table import Table

    from toolkit.console import out

    table = Table(title=f"preference pairs -> {result['out']}")
    table.add_column("", justify="left")
    table.add_column("pairs", justify="right")
    table.add_row("prompts", str(result["prompts"]))
    table.add_row("  generated now / cached", f"{result['generated']} / {result['cached']}")
    table.add_row("[green]kept", f"[green]{result['kept']}")
    for reason, n in sorted(result["dropped"].items()):
        table.add_row(f"[yellow]dropped: {reason}", f"[yellow]{n}")
    table.add_row("mean similarity of kept pairs", f"{result['mean_similarity_kept']:.3f} (max {result['similarity_max']:g})")
    out.print(table)


__all__ = ["prefs", "build_pairs", "similarity", "conversation_of"]

"""Serving several clients: `toolkit serve` one generation at a time vs `--parallel`, in one run.

The same requests (a sweep's shape: the same prompts under several decoding parameters, each
with its seed) go over real HTTP through the `ollama` client, sent N at a time, to the server as
Ollama runs it by default (OLLAMA_NUM_PARALLEL=1: one generation at a time) and to the same server
with --parallel N (requests decoded together in one llama.cpp batch). Prints the speed-up and
checks that every reply is the same text in both.

Run: make bench   (or .venv/bin/python bench/serve.py [--parallel 16] [--prompts 12] [--max-tokens 64])
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(gguf: Path, parallel: int, clients: int, requests: list) -> tuple[list[str], float]:
    from toolkit.runtime.backends import OllamaBackend
    from toolkit.serve.server import serve_in_thread

    with serve_in_thread({"bench": gguf}, n_ctx=1024, parallel=parallel) as url:
        backend = OllamaBackend("bench", url, parallel=clients)
        start = time.perf_counter()
        gens = backend.generate_batch([conv for conv, _ in requests], [params for _, params in requests])
        return [g.text for g in gens], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--settings", type=int, default=4, help="decoding settings per prompt")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", default="smollm2", help="embedded name or .gguf")
    args = ap.parse_args()

    from toolkit.data.build import BuildOptions, build
    from toolkit.data.readers import load_examples
    from toolkit.models import resolve
    from toolkit.params import DEFAULTS

    data = Path("runs/bench/data")
    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=data, options=BuildOptions(split="80,10,10", seed=0))
    prompts = [e.prompt for e in load_examples(data / "validation.jsonl")][: args.prompts]
    gguf = resolve(args.model, hf=False).require_gguf()
    base = DEFAULTS.replace(max_tokens=args.max_tokens, seed=1234, num_ctx=1024)
    settings = [base.replace(temperature=round(0.3 + 0.3 * i, 2)) for i in range(args.settings)]
    requests = [([{"role": "user", "content": p}], s) for s in settings for p in prompts]
    print(f"{len(requests)} requests ({len(prompts)} prompts x {len(settings)} temperatures, <= {args.max_tokens} tokens) "
          f"on {gguf.name}, sent {args.parallel} at a time over HTTP")
    alone, alone_s = run(gguf, 1, args.parallel, requests)
    together, together_s = run(gguf, args.parallel, args.parallel, requests)
    print(f"\n{'server':<40}{'seconds':>9}{'speed-up':>10}")
    print(f"{'one generation at a time (default)':<40}{alone_s:>9.1f}{1.0:>10.2f}")
    print(f"{f'--parallel {args.parallel}':<40}{together_s:>9.1f}{alone_s / together_s:>10.2f}")
    same = sum(a == b for a, b in zip(alone, together))
    print(f"\nsame text in both: {same}/{len(requests)} replies" + ("" if same == len(requests) else "  MISMATCH"))


if __name__ == "__main__":
    main()

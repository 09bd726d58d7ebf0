"""Prefill of several prompts: one decode per prompt (what the batched engine does) against one
joint decode of all of them, on the default model, measured in this one run; and whether the joint
decode is exact on this CPU.

Why it matters: llama.cpp computes a joint prefill of prompts of unequal length exactly on some
CPUs (an AVX2-only VM) and off by up to ~1.0 in the logits on others (AVX-512, AMX). The engine
would use joint prefill only where it is exact *and* faster; this prints both numbers.

Run: make bench   (or .venv/bin/python bench/prefill.py [--repeats 5] [--prompts 8])
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPTS = ["Explain the water cycle in a short paragraph.", "Explain gradient descent in a short paragraph.",
           "Say hi.", "Write a haiku about CPUs.", "Count from 1 to 10, separated by commas.",
           "What is a prime number? Answer briefly.", "Describe a cat.", "Summarise the plot of Hamlet in two sentences."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=8)
    args = ap.parse_args()

    import llama_cpp

    from toolkit.models import embedded_gguf
    from toolkit.runtime.backends import LlamaCppBackend
    from toolkit.runtime.batched import BatchedGenerator
    from toolkit.runtime.llamacpp import describe_machine, machine_summary

    gguf = embedded_gguf()
    with LlamaCppBackend(gguf, n_ctx=1024) as backend:
        rendered = [backend.render([{"role": "user", "content": p}]) for p in PROMPTS[: args.prompts]]
    with BatchedGenerator(gguf, n_ctx_per_seq=256, n_parallel=len(rendered)) as gen:
        prompts = [gen.tokenize(r) for r in rendered]

        def decode(groups: list[list[tuple[int, list[int]]]]) -> None:
            llama_cpp.llama_memory_clear(gen._mem, True)
            for group in groups:
                n = 0
                for seq_id, tokens in group:
                    for pos, token in enumerate(tokens):
                        gen._put(n, token, pos, seq_id, pos == len(tokens) - 1)
                        n += 1
                gen._batch.n_tokens = n
                gen._decode()

        shapes = {"one prompt per decode": [[(s, t)] for s, t in enumerate(prompts)],
                  "all prompts in one decode": [list(enumerate(prompts))]}
        times: dict[str, list[float]] = {name: [] for name in shapes}
        decode(shapes["one prompt per decode"])  # warm-up
        for _ in range(args.repeats):  # interleaved, so drift on a noisy VM hits both alike
            for name, groups in shapes.items():
                start = time.perf_counter()
                decode(groups)
                times[name].append(time.perf_counter() - start)
        exact = gen.mixed_prefill_exact(prompts[0], (prompts[3] * 3)[: len(prompts[0]) - 1])

    print(f"machine: {describe_machine(machine_summary())}")
    print(f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, {args.repeats} repeats\n")
    base = statistics.median(times["one prompt per decode"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<28} median {med * 1000:8.1f} ms  (spread {min(values) * 1000:.1f}-{max(values) * 1000:.1f})"
              f"  speed vs one per decode {base / med:5.2f}x")
    print(f"\njoint prefill of unequal prompts exact on this CPU: {'yes' if exact else 'NO'}")


if __name__ == "__main__":
    main()

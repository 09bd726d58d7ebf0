"""Decode speed on the default model, all measured in this one run (ratios, not absolute targets).

tokens/s for: transformers fp32, and GGUF f16, q8_0, Q4_K_M through our llamacpp backend and
through raw llama-cpp-python on the same file. Our backend's overhead vs raw must stay under 5%.
Also prints the memory-bandwidth bound: weight bytes read per token vs a measured copy bandwidth.

Run: make bench   (or .venv/bin/python bench/decode.py [--tokens 128] [--repeats 3])
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

PROMPT = "Propose a method to make transformer training on long documents cheaper, and say how to evaluate it."


def copy_bandwidth(mib: int = 512) -> float:
    """Memory traffic per second of a large copy, counted as STREAM does: bytes read + bytes written."""
    import numpy as np

    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - start))
    return best


def hf_speed(tokens: int, repeats: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.models import resolve

    hf = resolve("smollm2").require_hf()
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    speeds = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            speeds.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
    return statistics.median(speeds)


def ours_speed(gguf: Path, tokens: int, repeats: int) -> float:
    from toolkit.params import DecodingParams
    from toolkit.runtime.backends import LlamaCppBackend

    with LlamaCppBackend(gguf, n_ctx=1024) as backend:
        params = DecodingParams(temperature=0, max_tokens=tokens, num_ctx=1024)
        backend.chat(PROMPT, params.replace(max_tokens=8))  # warm-up
        speeds = []
        for _ in range(repeats):
            gen = backend.chat(PROMPT, params)
            speeds.append(gen.completion_tokens / gen.seconds)
    return statistics.median(speeds)


def raw_speed(gguf: Path, tokens: int, repeats: int) -> float:
    """llama-cpp-python's own completion call on the same prompt tokens (loaded AMX-safely)."""
    from contextlib import closing

    from toolkit.runtime.backends import LlamaCppBackend
    from toolkit.runtime.llamacpp import load

    with LlamaCppBackend(gguf, n_ctx=1024) as backend:  # only to render and tokenize the prompt
        prompt = backend.tokenize(backend.render([{"role": "user", "content": PROMPT}]))
    with closing(load(gguf, n_ctx=1024)) as llm:  # loaded as the backend loads it
        llm.create_completion(prompt, max_tokens=8, temperature=0)
        speeds = []
        for _ in range(repeats):
            llm.reset()
            start = time.perf_counter()
            out = llm.create_completion(prompt, max_tokens=tokens, temperature=0)
            speeds.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
    return statistics.median(speeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/gguf"))
    args = ap.parse_args()

    from toolkit.export.convert import export

    export("smollm2", out=args.out, quant=["Q8_0", "Q4_K_M"])
    files = {"f16": args.out / "SmolLM2-135M-Instruct-f16.gguf", "q8_0": args.out / "SmolLM2-135M-Instruct-Q8_0.gguf",
             "Q4_K_M": args.out / "SmolLM2-135M-Instruct-Q4_K_M.gguf"}
    bandwidth = copy_bandwidth()
    print(f"memory copy bandwidth: {bandwidth / 1e9:.1f} GB/s")
    hf = hf_speed(args.tokens, args.repeats)
    print(f"\n{'engine':<28}{'tok/s':>8}{'vs HF':>8}{'ours/raw':>10}{'bound tok/s':>13}{'% of bound':>12}")
    print(f"{'transformers fp32':<28}{hf:>8.1f}{1.0:>8.2f}")
    worst = 0.0
    for name, path in files.items():
        ours, raw = ours_speed(path, args.tokens, args.repeats), raw_speed(path, args.tokens, args.repeats)
        bound = bandwidth / path.stat().st_size  # every weight byte is read once per generated token
        overhead = 1 - ours / raw
        worst = max(worst, overhead)
        print(f"{'GGUF ' + name + ' (ours)':<28}{ours:>8.1f}{ours / hf:>8.2f}{ours / raw:>10.3f}{bound:>13.0f}{ours / bound:>12.0%}")
        print(f"{'GGUF ' + name + ' (raw)':<28}{raw:>8.1f}{raw / hf:>8.2f}{'':>10}{bound:>13.0f}{raw / bound:>12.0%}")
    verdict = "OK" if worst < 0.05 else "ABOVE TARGET"
    print(f"\nworst overhead of our backend vs raw llama-cpp-python: {worst:+.1%} (target < 5%): {verdict}")


if __name__ == "__main__":
    main()

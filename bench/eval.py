"""`toolkit eval` in process vs lm-evaluation-harness's `hf` model: items per second, same answers.

The same merged weights twice: the default model's f16 GGUF scored by llama.cpp in process
(`toolkit-gguf`: each item's context decoded once, its choices scored from that context's KV
cells, many items' tokens packed into each decode) and the dequantized HF directory through the harness's own `hf` model (fp32, the same
number of threads, at batch sizes 1, 8 and 32). Two team-written tasks of the real lengths: a
10-shot HellaSwag-shaped task (contexts of ~700 tokens, four ~20-token endings) and a 0-shot
ARC-shaped one (short questions, one- to three-word choices). The systems run interleaved, each
repeat in a rotated order, and the best of the repeats is reported; every item's answer (acc and
acc_norm) must be the same in both, and the share of tokens prefilled once vs the naive count
(every choice with its whole context) is printed.

Run: .venv/bin/python bench/eval.py [--items 40] [--repeats 3] [--batch-sizes 1 8 32] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a man woman child dog team player cook driver teacher student slowly quickly carefully then "
         "after before while holds takes puts opens closes walks runs looks turns picks drops washes cuts "
         "paints throws catches rides climbs water ball knife brush rope board table floor window door car "
         "bike kitchen yard field river mountain road street room house garden bowl cup paper box bag").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_data(root: Path, items: int, seed: int = 0) -> Path:
    """HellaSwag-shaped (train rows for the 10 shots, validation rows scored) and ARC-shaped rows."""
    rng = random.Random(seed)

    def hellaswag(i: int) -> dict:
        endings = [_sentence(rng, rng.randint(14, 22)) for _ in range(4)]
        return {"ind": i, "activity_label": _sentence(rng, 2)[:-1], "ctx_a": _sentence(rng, rng.randint(28, 40)),
                "ctx_b": " ".join(rng.choice(WORDS) for _ in range(5)), "endings": endings, "label": str(rng.randrange(4)),
                "split": "val", "split_type": "indomain", "source_id": f"s{i}", "ctx": ""}

    def arc(i: int) -> dict:
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        return {"id": f"q{i}", "question": _sentence(rng, rng.randint(15, 30))[:-1] + "?",
                "choices": {"text": choices, "label": list("ABCD")}, "answerKey": rng.choice("ABCD")}

    for name, rows in {"hellaswag/train.jsonl": [hellaswag(i) for i in range(60)],
                       "hellaswag/validation.jsonl": [hellaswag(100 + i) for i in range(items)],
                       "arc_easy/test.jsonl": [arc(i) for i in range(items)]}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def answers(results: dict) -> dict:
    return {(task, s["doc_id"]): (s["acc"], s.get("acc_norm")) for task, rows in results["samples"].items() for s in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=40, help="scored items per task")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for both (default: all this process may use)")
    args = ap.parse_args()

    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    from lm_eval.models.huggingface import HFLM

    from toolkit.evaluate.harness.command import _quiet_harness, run_model
    from toolkit.evaluate.harness.lm import gguf_lm_class
    from toolkit.evaluate.harness.tasks import build
    from toolkit.evaluate.machine import measured_line
    from toolkit.export.convert import convert
    from toolkit.models import resolve
    from toolkit.runtime.llamacpp import default_threads, machine_summary

    _quiet_harness()
    work = ROOT / "runs" / "bench" / "eval"
    data = write_data(work / "data", args.items)
    hf_dir = resolve("smollm2").require_hf()
    f16 = convert(hf_dir, work / "smollm2-f16.gguf", "f16").path
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    ours = gguf_lm_class()(str(f16), n_threads=threads)
    hf = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=1)
    print(measured_line(machine_summary()))
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{f16.name} (llama.cpp, {threads} threads) vs {hf_dir} (hf, fp32, torch {threads} threads); "
          f"{args.items} items per task, best of {args.repeats}")
    for label, selection in (("10-shot HellaSwag-shaped", build([("hellaswag", 10)], data, work / "hs")),
                             ("0-shot ARC-shaped", build([("arc_easy", 0)], data, work / "arc"))):
        best: dict[str, float] = {}
        got: dict[str, dict] = {}
        systems = ["toolkit eval", *(f"hf batch {b}" for b in args.batch_sizes)]
        prefilled = naive = 0
        for r in range(args.repeats):
            for name in systems[r % len(systems):] + systems[:r % len(systems)]:
                lm = ours
                if name.startswith("hf"):
                    hf.batch_size_per_gpu = int(name.split()[-1])
                    lm = hf
                else:
                    ours.scorer.prefilled = ours.scorer.decoded = ours.naive_tokens = 0
                start = time.perf_counter()
                results = run_model(lm, selection, None, 1234)
                seconds = time.perf_counter() - start
                best[name] = min(best.get(name, seconds), seconds)
                got[name] = answers(results)
                if lm is ours:
                    prefilled, naive = ours.scorer.prefilled + ours.scorer.decoded, ours.naive_tokens
        items = len(got["toolkit eval"])
        fastest_hf = min((n for n in systems if n.startswith("hf")), key=lambda n: best[n])
        print(f"\n{label}: {items} items")
        print(f"{'system':<22}{'seconds':>9}{'items/s':>9}{'vs best hf':>11}{'same answers':>14}")
        for name in systems:
            same = sum(got[name][k] == got["toolkit eval"][k] for k in got[name])
            print(f"{name:<22}{best[name]:>9.2f}{items / best[name]:>9.2f}{best[fastest_hf] / best[name]:>10.2f}x{same:>9}/{items}")
        print(f"tokens decoded by toolkit eval: {prefilled} of the naive {naive} ({100 * prefilled / max(1, naive):.0f}%: "
              f"each context prefilled once)")
    print("load average (1, 5, 15 min) after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()

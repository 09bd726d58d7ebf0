"""Single-job speed with the toolkit's sharing defaults on and off: the existing benches, one job alone.

Issue 26's defaults (toolkit/runtime/threads.py: nice 10 for batch work, a short OpenMP spin for
serve and chat) exist for a busy machine; on a quiet one they must cost nothing. This runs the
single-job benches (`bench/decode.py`, `bench/train_throughput.py`, `bench/sweep.py`, small sizes)
in child processes that apply the defaults exactly as the CLI does (`threads.apply` before torch or
llama_cpp loads) for a batch command, and the decode bench once more as serve and chat run it
(`decode-chat`: the short spin, no nice), "on" as shipped and "off" with TOOLKIT_FAIR=0, interleaved
(the order reversed every other repeat) and repeated; it prints each bench's figures as `median [min-max]` and the
on/off ratio of the medians. bench/contention.py measures the same defaults with jobs side by side.

Run (a quiet machine; about 10 minutes a repeat with every bench on 2 cores):
    .venv/bin/python bench/fair.py [--repeats 3] [--bench decode decode-chat train sweep]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from contention import SETTINGS, env_for, order, spread  # bench/ is on the path of a script run from it

ROOT = Path(__file__).resolve().parents[1]
DECODE = ("decode.py", ["--repeats", "1", "--tokens", "128"],
          {"transformers fp32 tok/s": r"^transformers fp32\s+([\d.]+)",
           "GGUF f16 tok/s (ours)": r"^GGUF f16 \(ours\)\s+([\d.]+)",
           "GGUF Q4_K_M tok/s (ours)": r"^GGUF Q4_K_M \(ours\)\s+([\d.]+)"})
# bench -> (its script, arguments, {figure: pattern whose first group is the number in its output})
BENCHES: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "decode": DECODE,
    "decode-chat": DECODE,  # run as serve and chat run (INTERACTIVE below)
    "train": ("train_throughput.py", ["--steps", "6"],
              {"train useful tok/s (ours)": r"^ours: toolkit train.*?([\d.]+)\s+[\d.]+x\s+\d+ MB$"}),
    "sweep": ("sweep.py", ["--trials", "4", "--prompts", "6", "--max-tokens", "48"],
              {"sweep seconds (ours, lower)": r"^ours, median pruning\s+([\d.]+)"}),
}
INTERACTIVE = {"decode-chat"}
CHILD = ("import runpy, sys; from toolkit.runtime.threads import apply; apply(interactive={}); "
         "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def run_once(bench: str, setting: str) -> dict[str, float]:
    script, args, figures = BENCHES[bench]  # the child runs in ROOT, so `-c` finds the toolkit there
    child = CHILD.format(bench in INTERACTIVE)
    done = subprocess.run([sys.executable, "-c", child, str(ROOT / "bench" / script), *args], env=env_for(setting), cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench/{script} ({setting}) failed:\n{done.stderr[-2000:]}")
    found = {}
    for name, pattern in figures.items():
        match = re.search(pattern, done.stdout, re.MULTILINE)
        if not match:
            raise SystemExit(f"bench/{script}: no line for {name!r} in its output:\n{done.stdout[-2000:]}")
        found[name] = float(match.group(1))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bench", nargs="*", default=list(BENCHES), choices=list(BENCHES))
    args = ap.parse_args()
    from toolkit.evaluate.machine import measured_line
    from toolkit.runtime.llamacpp import machine_summary

    print(measured_line(machine_summary()))
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    for repeat in range(args.repeats):
        for bench in args.bench:
            for setting in order(SETTINGS, repeat):
                print(f"  repeat {repeat + 1}: {bench}, defaults {setting} ...", flush=True)
                for name, value in run_once(bench, setting).items():
                    results.setdefault((bench, setting), {}).setdefault(name, []).append(value)
    print(f"\n{'bench: figure':<44}{'defaults on':>22}{'off (TOOLKIT_FAIR=0)':>24}{'on/off':>8}")
    for bench in args.bench:
        for name in BENCHES[bench][2]:
            on, off = results[bench, "on"][name], results[bench, "off"][name]
            print(f"{bench + ': ' + name:<44}{spread(on, '{:.1f}'):>22}{spread(off, '{:.1f}'):>24}"
                  f"{statistics.median(on) / statistics.median(off):>8.2f}")


if __name__ == "__main__":
    main()

"""Sharing the machine: `toolkit serve` beside batch work, and batch work beside a server, with the
toolkit's sharing defaults (toolkit/runtime/threads.py) on and off in the same run.

Every process is a real `toolkit` command started as a user would (so the CLI applies its defaults),
the server on loopback with the default model. Three parts, each interleaved (on and off side by
side, the order reversed every other repeat, so drift on a noisy machine hits both alike) and
repeated; medians are printed with their spread [min-max] over the repeats:

* serve latency: the same set of 32-token chats (temperature 0), one after another, p50 and p95,
  with the server alone, beside a LoRA run (`toolkit train`), beside a second llama.cpp process
  (`toolkit generate --file`) and beside a sweep (`toolkit sweep`); ratios to alone, same setting,
  same repeat (issue 26's target: p95 within 3x beside training and beside a llama.cpp job);
* batch throughput alone and beside a server under an interactive load (one 32-token chat every
  2 s): training tokens/s over the same steps in every cell (target: at least a third of alone),
  and a small sweep's seconds;
* an idle server's CPU (its utime + stime over a window, after one chat; target: below 1%).

"on" is the toolkit's defaults, "off" is TOOLKIT_FAIR=0 (the libraries' own waiting, no nice).

Run (quiet machine; prints the CPU it ran on; on an idle 2-core Xeon `--requests 10 --steps 8`,
every setting, took 45 min; README.md "Sharing the machine" has its numbers):
    .venv/bin/python bench/contention.py
Shortest end-to-end check (every setting once; numbers meaningless; 36 min on a busy 2-core machine):
    .venv/bin/python bench/contention.py --requests 3 --repeats 1 --steps 2 --sweep-trials 1 --idle 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from toolkit.runtime.threads import WAIT_DEFAULTS  # noqa: E402  (light: no torch, no llama_cpp)

HOST = "127.0.0.1"
PROMPTS = ["Write a short paragraph about the history of the bicycle.", "Explain how a refrigerator keeps food cold.",
           "Describe a walk through a forest in autumn.", "Tell me about the planets of the solar system.",
           "Explain why the sky is blue, in simple words.", "Write a short story about a lighthouse keeper.",
           "Describe how bread is made, step by step.", "Explain what a compiler does."]
SETTINGS = ("on", "off")  # the toolkit's sharing defaults, and TOOLKIT_FAIR=0
# what a run inherits must not decide the comparison: each child gets only its setting
CLEARED = (*WAIT_DEFAULTS, "OMP_NUM_THREADS", "TOOLKIT_FAIR", "TOOLKIT_NICE", "TOOLKIT_THREADS")


def env_for(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if setting == "off":
        env["TOOLKIT_FAIR"] = "0"
    return env


def toolkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", *args]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """`median [min-max]` of the repeats."""
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "n/a"
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


# -- processes ------------------------------------------------------------------------------------


class Job:
    """A `toolkit` command in its own process group; `ready()` says when its steady work began."""

    def __init__(self, cmd: list[str], env: dict[str, str], ready: Callable[[], bool], stdout=subprocess.DEVNULL):
        self.log = tempfile.TemporaryFile()  # a pipe nobody reads would stall a chatty job once full
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=stdout, stderr=self.log, start_new_session=True)
        self.ready = ready

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def wait_ready(self, limit: float = 600) -> None:
        deadline = time.monotonic() + limit
        while not self.ready():
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.proc.args[3:5]} ended before its work began:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.proc.args[3:5]} not ready after {limit:.0f} s")
            time.sleep(0.5)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_server(setting: str) -> tuple[Job, int]:
    port = free_port()
    server = Job(toolkit("serve", "--host", HOST, "--port", str(port)), env_for(setting), lambda: True)
    deadline = time.monotonic() + 300
    while True:  # the socket is bound before the model loads; /api/version answers once it serves
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/api/version", timeout=300):
                return server, port
        except OSError:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{server.tail()}") from None
            time.sleep(0.5)


def chat(port: int, i: int) -> float:
    """Seconds for one 32-token chat (a fixed prompt per i, temperature 0)."""
    body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "stream": False,
                       "options": {"temperature": 0, "seed": 0, "num_predict": 32}}).encode()
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(f"http://{HOST}:{port}/api/chat", body), timeout=600) as r:
        r.read()
    return time.perf_counter() - start


def trickle(port: int, stop: threading.Event, out: list[float], every: float = 2.0) -> None:
    """The interactive load: one chat every `every` seconds (or right after the last, if it took longer)."""
    i = 0
    while not stop.is_set():
        started = time.monotonic()
        out.append(chat(port, i))
        i += 1
        stop.wait(max(0.0, every - (time.monotonic() - started)))


# -- the batch jobs -------------------------------------------------------------------------------


def write_sweep(path: Path, trials: int, prompts: int) -> Path:
    path.write_text(json.dumps({"name": "contention", "mode": "search", "sampler": {"type": "random", "seed": 0}, "pruner": "none",
                                "trials": trials, "prompts": prompts, "seed": 7, "fixed": {"max_tokens": 32},
                                "space": {"temperature": {"low": 0.1, "high": 1.2, "step": 0.05}}}))  # JSON is YAML
    return path


def trials_started(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from trials").fetchone()[0]
    except sqlite3.Error:  # not created yet, or locked for a moment
        return 0


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def train_job(data: Path, out: Path, setting: str, steps: int = 100000) -> Job:
    """A LoRA run on the default model (batch 2, no accumulation: short steps), far longer than measured."""
    cmd = toolkit("train", "--train-data", str(data / "train.jsonl"), "--validation-data", "", "--out", str(out),
                  "--max-steps", str(steps), "--grad-accum", "1", "--eval-every", "0", "--save-every", "0")
    return Job(cmd, env_for(setting), lambda: lines(out / "metrics.jsonl") >= 1)


def generate_job(prompts: Path, setting: str) -> Job:
    """A second llama.cpp process: `toolkit generate --file`, streaming to a pipe drained here."""
    seen = threading.Event()
    job = Job(toolkit("generate", "--file", str(prompts), "--max-tokens", "128"), env_for(setting), seen.is_set, stdout=subprocess.PIPE)

    def drain() -> None:
        while job.proc.stdout.read(256):
            seen.set()

    threading.Thread(target=drain, daemon=True).start()
    return job


def sweep_job(sweep: Path, data: Path, out: Path, setting: str) -> Job:
    cmd = toolkit("sweep", str(sweep), "--data", str(data / "validation.jsonl"), "--out", str(out), "--no-noise")
    return Job(cmd, env_for(setting), lambda: trials_started(out / "study.db") >= 1)


def train_speed(metrics: Path) -> float:
    """Useful tokens per second of the steps a run logged (the loop's own step times: loading
    and saving left out), the first step (warm-up) left out too."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "tokens" in r][1:]
    if not rows:
        return float("nan")
    return sum(r["tokens"] for r in rows) / sum(r["seconds"] for r in rows)


# -- the three parts ------------------------------------------------------------------------------


def serve_cell(beside: str, setting: str, args, work: Path, cell: str) -> tuple[list[float], bool]:
    """Latencies of the request set with the server beside `beside`; whether the job outlasted it."""
    server, port = start_server(setting)
    job = None
    try:
        chat(port, 0)  # warm up
        if beside == "train":
            job = train_job(work / "data", work / f"train-{cell}", setting)
        elif beside == "generate":
            job = generate_job(work / "prompts.txt", setting)
        elif beside == "sweep":
            job = sweep_job(work / "long.yaml", work / "data", work / f"sweep-{cell}", setting)
        if job is not None:
            job.wait_ready()
        latencies = [chat(port, i) for i in range(args.requests)]
        return latencies, job is None or job.running()
    finally:
        if job is not None:
            job.stop()
        server.stop()


def throughput_cell(what: str, with_server: bool, setting: str, args, work: Path, cell: str) -> tuple[float, list[float]]:
    """Training tokens/s (the same steps in every cell) or a small sweep's seconds, alone or beside
    a server under the interactive load; the interactive chats' latencies."""
    server = port = None
    stop, latencies = threading.Event(), []
    ticker = None
    if with_server:
        server, port = start_server(setting)
        chat(port, 0)
        ticker = threading.Thread(target=trickle, args=(port, stop, latencies), daemon=True)
        ticker.start()
    try:
        if what == "train":
            job = train_job(work / "data", work / f"tp-{cell}", setting, steps=args.steps + 1)
            if job.proc.wait() != 0:
                raise SystemExit(f"the training run failed:\n{job.tail()}")
            return train_speed(work / f"tp-{cell}" / "metrics.jsonl"), latencies
        start = time.perf_counter()
        job = sweep_job(work / "short.yaml", work / "data", work / f"ts-{cell}", setting)
        job.proc.wait()
        if job.proc.returncode != 0:
            raise SystemExit(f"the sweep failed:\n{job.tail()}")
        return time.perf_counter() - start, latencies
    finally:
        stop.set()
        if ticker is not None:
            ticker.join(600)
        if server is not None:
            server.stop()


def idle_cpu(seconds: float) -> float:
    """Percent of one core an idle server used over `seconds`, after one chat (defaults on)."""
    server, port = start_server("on")
    try:
        chat(port, 0)
        time.sleep(2)
        before, start = cpu_seconds(server.proc.pid), time.monotonic()
        time.sleep(seconds)
        return 100 * (cpu_seconds(server.proc.pid) - before) / (time.monotonic() - start)
    finally:
        server.stop()


def prepare(work: Path, args) -> None:
    from toolkit.data.build import BuildOptions, build

    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=work / "data", options=BuildOptions(tokenizer="smollm2"))
    (work / "prompts.txt").write_text("\n".join(PROMPTS * 100) + "\n")  # far more than any window lasts
    write_sweep(work / "long.yaml", trials=1000, prompts=4)
    write_sweep(work / "short.yaml", trials=args.sweep_trials, prompts=4)


def order(cells: list, repeat: int) -> list:
    return cells if repeat % 2 == 0 else cells[::-1]


def serve_part(args, work: Path) -> None:
    cells = [(beside, s) for beside in args.beside for s in SETTINGS]
    got: dict[tuple[str, str], list[list[float]]] = {c: [] for c in cells}
    early = set()
    for r in range(args.repeats):
        for beside, setting in order(cells, r):
            print(f"  repeat {r + 1}: serve beside {beside}, defaults {setting} ...", flush=True)
            latencies, outlasted = serve_cell(beside, setting, args, work, f"{beside}-{setting}-{r}")
            got[beside, setting].append(latencies)
            if not outlasted:
                early.add((beside, setting))
    print(f"\nserve latency, {args.requests} chats of 32 tokens per cell, {args.repeats} repeat(s): median [min-max] over repeats")
    print(f"{'beside':<10}{'defaults':<10}{'p50 s':>22}{'p95 s':>22}{'p95 / alone':>22}{'p95 off / on':>22}")
    for beside, setting in cells:
        runs = got[beside, setting]
        p95 = [pct(x, .95) for x in runs]
        alone = [pct(x, .95) for x in got.get(("alone", setting), [])]
        ratio = spread([a / b for a, b in zip(p95, alone)]) if alone and beside != "alone" else ""
        other = [pct(x, .95) for x in got[beside, "off"]]
        on_off = spread([o / a for o, a in zip(other, p95)]) if setting == "on" else ""
        note = "  (the job ended before the requests did)" if (beside, setting) in early else ""
        print(f"{beside:<10}{setting:<10}{spread([pct(x, .5) for x in runs]):>22}{spread(p95):>22}{ratio:>22}{on_off:>22}{note}")
    print("target: p95 beside train and beside generate within 3x of alone (defaults on)")


def throughput_part(args, work: Path) -> None:
    cells = [(what, server, s) for what in args.throughput for server in (False, True) for s in SETTINGS]
    got: dict[tuple, list[float]] = {c: [] for c in cells}
    chats: dict[tuple, list[float]] = {c: [] for c in cells}
    for r in range(args.repeats):
        for what, server, setting in order(cells, r):
            print(f"  repeat {r + 1}: {what} {'beside a server' if server else 'alone'}, defaults {setting} ...", flush=True)
            value, latencies = throughput_cell(what, server, setting, args, work, f"{what}-{server}-{setting}-{r}")
            got[what, server, setting].append(value)
            chats[what, server, setting].extend(latencies)
    print(f"\nbatch work alone and beside a server answering one 32-token chat every 2 s, {args.repeats} repeat(s)")
    print(f"{'job':<8}{'beside':<10}{'defaults':<10}{'speed':>26}{'vs alone':>22}{'chat p95 s':>12}")
    for what, server, setting in cells:
        values = got[what, server, setting]
        speeds = values if what == "train" else [1 / v for v in values]  # sweeps per second
        alone = got[what, False, setting]
        alone_speeds = alone if what == "train" else [1 / v for v in alone]
        ratio = spread([a / b for a, b in zip(speeds, alone_speeds)]) if server else ""
        shown = spread(values, "{:.1f}") + (" tok/s" if what == "train" else " s")
        p95 = f"{pct(chats[what, server, setting], .95):.2f}" if server else ""
        print(f"{what:<8}{'server' if server else 'nothing':<10}{setting:<10}{shown:>26}{ratio:>22}{p95:>12}")
    print("target: training beside the server at least 1/3 of its speed alone (defaults on)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20, help="chats in the request set of each serve cell")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every cell (interleaved, order reversed every other round)")
    ap.add_argument("--steps", type=int, default=12, help="training steps measured in each throughput cell (one more runs first)")
    ap.add_argument("--idle", type=float, default=60, help="seconds an idle server is watched (0: skip)")
    ap.add_argument("--sweep-trials", type=int, default=4, help="trials of the sweep timed in the throughput part (4 prompts each)")
    ap.add_argument("--beside", nargs="*", default=["alone", "train", "generate", "sweep"],
                    choices=["alone", "train", "generate", "sweep"], help="serve-latency settings (empty: skip that part)")
    ap.add_argument("--throughput", nargs="*", default=["train", "sweep"], choices=["train", "sweep"],
                    help="batch jobs timed alone and beside a server (empty: skip that part)")
    args = ap.parse_args()
    if args.beside and "alone" not in args.beside:
        args.beside = ["alone", *args.beside]  # the ratios need it

    from toolkit.evaluate.machine import measured_line
    from toolkit.runtime.llamacpp import machine_summary

    started = time.monotonic()
    print(measured_line(machine_summary()))
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a busy machine makes every number here meaningless)")
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as tmp:
        work = Path(tmp)
        prepare(work, args)
        if args.beside:
            serve_part(args, work)
        if args.throughput:
            throughput_part(args, work)
    if args.idle:
        print(f"\nidle server (defaults on): {idle_cpu(args.idle):.2f}% of one core over {args.idle:.0f} s (target below 1%)")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; the bench took {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()

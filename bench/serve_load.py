"""`toolkit serve` under load with abusive clients: does a normal short chat stay fast?

Starts the server in a process of its own on loopback (127.0.0.1 only), then runs two rounds. Each
round sends N clients x M short, non-streaming chats alone, then the same chats again while
abusers keep sending the requests that used to stall everyone (issue 15, case 1: a nested
`{{range}}` template, a printf width of 10,000,000, a 20 MB message) back to back, with
`--hang-ups` also clients that leave a long generation after a second. Prints the normal chats' p50/p95 latency with and without the abusers, their
errors (must be 0), what the abusers got back, and the server's RSS at the start and end of each
round. Bounded: N x M chats per phase, a time limit per phase, abusers stop with the chats.

Run: .venv/bin/python bench/serve_load.py [--clients 2] [--requests 10] [--abusers 3] [--parallel 1] [--pause 0] [--hang-ups]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "stream": False,
        "options": {"temperature": 0, "num_predict": 8}}
ABUSES = [
    ("range template", "/api/generate", {"model": "smollm2", "prompt": "hi", "template": "{{range 6000}}{{range 6000}}{{end}}{{end}}"}),
    ("printf width", "/api/generate", {"model": "smollm2", "prompt": "hi", "template": '{{printf "%10000000s" .Prompt}}'}),
    ("20 MB message", "/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "x" * (20 << 20)}]}),
]
HANG_UP = {"model": "smollm2", "prompt": "Count from 1 to 1000.", "stream": False, "options": {"num_predict": 1000}}


def serve(port: int, parallel: int, threads: int) -> None:
    """The server process: the embedded model on loopback until killed."""
    from toolkit.serve.server import Server

    with Server({"smollm2": "smollm2"}, host=HOST, port=port, n_ctx=1024, parallel=parallel, n_threads=threads or None) as server:
        print("ready", flush=True)
        server.serve_forever()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_clients = threading.local()


def post(port: int, path: str, body: bytes, timeout: float = 300) -> tuple[int, float]:
    """(status, seconds) of one POST (0: no reply), on this thread's keep-alive connection: a new
    client per request would spend more CPU on this shared machine than the server does."""
    import httpx

    if getattr(_clients, "http", None) is None:
        _clients.http = httpx.Client(base_url=f"http://{HOST}:{port}", headers={"content-type": "application/json"})
    start = time.perf_counter()
    try:
        r = _clients.http.post(path, content=body, timeout=timeout)
        return r.status_code, time.perf_counter() - start
    except httpx.HTTPError:  # e.g. a body the server refused unread, then closed the connection on
        return 0, time.perf_counter() - start


def hang_up(port: int, body: bytes, after: float = 1.0) -> int:
    """Send a long non-streaming generation and leave after `after` seconds."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(f"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(after)
    return 499  # "client closed request", as Ollama logs it


def chats(port: int, clients: int, requests: int, limit: float) -> tuple[list[float], int]:
    """Latencies of clients x requests chats sent by `clients` threads, and the errors."""
    body = json.dumps(CHAT).encode()
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + limit

    def client() -> None:
        for _ in range(requests):
            if time.monotonic() > deadline:
                errors[0] += 1
                continue
            status, seconds = post(port, "/api/chat", body)
            if status == 200:
                latencies.append(seconds)
            else:
                errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit + 60)
    return latencies, errors[0]


def abuse(port: int, n: int, stop: threading.Event, hang_ups: bool, pause: float) -> Counter:
    """`n` abusers cycling through ABUSES (and, with `hang_ups`, a client that leaves a long
    generation after a second) until `stop`, `pause` seconds apart (0: back to back); what they
    got back."""
    got: Counter = Counter()
    kinds = [(name, path, json.dumps(body).encode()) for name, path, body in ABUSES]
    if hang_ups:
        kinds.append(("hang-up", "", json.dumps(HANG_UP).encode()))

    def abuser(i: int) -> None:
        k = i
        while not stop.is_set():
            name, path, body = kinds[k % len(kinds)]
            got[name, hang_up(port, body) if name == "hang-up" else post(port, path, body, timeout=120)[0]] += 1
            k += 1
            stop.wait(pause)

    threads = [threading.Thread(target=abuser, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(150)
    return got


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--requests", type=int, default=10, help="chats per client per phase")
    ap.add_argument("--abusers", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=1, help="the server's --parallel")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hang-ups", action="store_true", help="abusers also leave long generations after a second")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between one abuser's requests (0: back to back)")
    ap.add_argument("--limit", type=float, default=600, help="seconds per phase at most")
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads in the server (0: every core); on a shared machine more than one "
                         "thread spin-waits whenever another process takes a core")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.parallel, args.threads)

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--parallel", str(args.parallel),
                             "--threads", str(args.threads)],
                            stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("the server did not start")
        post(port, "/api/chat", json.dumps(CHAT).encode())  # warm up
        print(f"server pid {proc.pid}, --parallel {args.parallel}, {args.threads or 'all'} llama.cpp thread(s); "
              f"{args.clients} clients x {args.requests} chats per phase, "
              f"{args.abusers} abusers {args.pause:g} s apart; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        print(f"{'round':<6}{'phase':<16}{'p50 s':>8}{'p95 s':>8}{'errors':>8}{'RSS MB':>16}  abusers got")
        for r in range(1, args.rounds + 1):
            start_rss = rss_mb(proc.pid)
            alone, alone_err = chats(port, args.clients, args.requests, args.limit)
            print(f"{r:<6}{'alone':<16}{pct(alone, .5):>8.2f}{pct(alone, .95):>8.2f}{alone_err:>8}{start_rss:>16.0f}")
            stop = threading.Event()
            got: list[Counter] = []
            abusers = threading.Thread(target=lambda out, ev: out.append(abuse(port, args.abusers, ev, args.hang_ups, args.pause)),
                                       args=(got, stop))
            abusers.start()
            time.sleep(1.0)  # the abusers are at it before the chats start
            loaded, loaded_err = chats(port, args.clients, args.requests, args.limit)
            stop.set()
            abusers.join(200)
            end_rss = rss_mb(proc.pid)
            summary = ", ".join(f"{name} {status} x{n}" for (name, status), n in sorted((got or [Counter()])[0].items()))
            print(f"{r:<6}{'with abusers':<16}{pct(loaded, .5):>8.2f}{pct(loaded, .95):>8.2f}{loaded_err:>8}"
                  f"{f'{start_rss:.0f} -> {end_rss:.0f}':>16}  {summary}")
            ratio = pct(loaded, .95) / pct(alone, .95)
            print(f"{'':<6}p95 with abusers / alone = {ratio:.2f} ({'within' if ratio <= 2 else 'OVER'} 2x)"
                  f"; load average {os.getloadavg()[0]:.1f}")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()

"""Sharing the CPU: the thread count, how idle threads wait, and the scheduling priority, decided
once per process (`apply`, called by the CLI before a command runs) before torch or llama.cpp
start their thread pools.

Users run the toolkit on the machine they work on: `toolkit serve` answers an editor while a
training run or a sweep goes on beside it. Three settings:

* The thread count, fixed for the whole run whatever the load: `--threads N`, else
  TOOLKIT_THREADS, else every CPU this process may use. llama.cpp's and torch's numbers can change
  with the count, and results must not depend on the load, so only waiting and priority adapt to
  it. An explicit count also goes to torch (OMP_NUM_THREADS); without one torch keeps its own
  default, so training's numbers stay what they were.
* How idle threads wait. llama.cpp (this ggml build runs its compute threads and barriers on
  OpenMP) and torch both use libgomp, which spins about 3 ms (GOMP_SPINCOUNT 300000) at each
  barrier and after each parallel region before it sleeps. With more runnable threads than cores,
  a spinning thread holds the core that the thread it waits for needs. serve and chat, which run
  at normal priority beside whatever else the user runs, wait briefly: OMP_WAIT_POLICY=PASSIVE with
  a short GOMP_SPINCOUNT (KMP_BLOCKTIME for Intel's OpenMP), so they spin ~0.1 ms, then sleep.
  Batch work keeps the libraries' own waiting: it runs niced, so a server takes the cores from its
  spinning threads, and alone the long spin decodes 2-9% faster (bench/fair.py). libgomp reads these
  once, when it loads, so they go into the environment before torch or llama_cpp is imported; a
  value the user set is kept.
* Priority: batch work (every command but serve and chat) runs at nice BATCH_NICE (TOOLKIT_NICE),
  so an interactive server wins the cores. Linux keeps nice per thread and threads inherit it, so
  it is set before any pool starts. With the kernel's autogroup on (most desktops), nice orders
  the processes of one terminal session only, so the session's group is lowered too (`lower_group`).

TOOLKIT_FAIR=0 switches the waiting and priority defaults off and leaves the environment as it
was (bench/contention.py compares both in one run). llama.cpp's own polling level (the ggml
threadpool's `poll`) does not apply here: llama-cpp-python 0.3.36 does not bind
`llama_attach_threadpool`, and an OpenMP build of ggml waits in libgomp, not in its threadpool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from toolkit.errors import ConfigError
from toolkit.options import option

# serve and chat: libgomp (torch and llama.cpp here) and Intel's OpenMP spin ~0.1 ms, then sleep
# (their defaults: ~3 ms and 200 ms); bench/contention.py measures them on and off
WAIT_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}
BATCH_NICE = 10  # batch work's nice level (TOOLKIT_NICE); serve and chat keep theirs
AUTOGROUP = Path("/proc/self/autogroup")  # this process's session group and its nice level (sched(7))
FROM_FLAG, FROM_ENV, FROM_CORES = "--threads", "TOOLKIT_THREADS", "every usable core"


@dataclasses.dataclass(frozen=True)
class ThreadOptions:
    """Sharing the CPU."""

    threads: int | None = option(None, "CPU threads for llama.cpp and torch, fixed for the whole run "
                                       "(default: TOOLKIT_THREADS, else every core this process may use)")


@dataclasses.dataclass(frozen=True)
class Sharing:
    """What a process runs with: `threads` (and `source`, where the count came from) on `cores`
    usable cores; `fair`: the waiting and priority defaults are on; `wait`: each OpenMP waiting
    variable -> (value or "", who set it); `nice`: the level batch work is lowered to (None: left
    as it is); `writes`: what `apply` puts into the environment."""

    threads: int
    source: str
    cores: int
    fair: bool
    wait: dict[str, tuple[str, str]]
    nice: int | None
    writes: dict[str, str]


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity), at least 1."""
    with contextlib.suppress(AttributeError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _whole(name: str, raw: str, least: int) -> int:
    if not raw.strip().lstrip("-").isdigit() or int(raw) < least:
        given = f"{name} {raw}" if name.startswith("--") else f"{name}={raw!r}"
        raise ConfigError(f"{given} is not a whole number of at least {least}",
                          fix=f"set {name} to e.g. 2, or leave it out for the default")
    return int(raw)


def thread_count(flag: int | None = None, environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(threads, where the count came from): `--threads` > TOOLKIT_THREADS > every usable core."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        return _whole("--threads", str(flag), 1), FROM_FLAG
    if environ.get("TOOLKIT_THREADS", "").strip():
        return _whole("TOOLKIT_THREADS", environ["TOOLKIT_THREADS"], 1), FROM_ENV
    return usable_cores(), FROM_CORES


def decide(threads: int | None = None, *, interactive: bool, environ: Mapping[str, str] | None = None) -> Sharing:
    """The settings for a process started with `environ` (default: this one's) and `--threads`
    `threads` (None: not given); `interactive` (serve, chat) keeps its priority. Changes nothing."""
    environ = os.environ if environ is None else environ
    count, source = thread_count(threads, environ)
    fair = environ.get("TOOLKIT_FAIR", "1").strip() != "0"
    writes: dict[str, str] = {}
    if source == FROM_FLAG:  # the count reaches llama.cpp (default_threads) and child processes
        writes.update(TOOLKIT_THREADS=str(count), OMP_NUM_THREADS=str(count))
    elif source == FROM_ENV and "OMP_NUM_THREADS" not in environ:
        writes["OMP_NUM_THREADS"] = str(count)  # torch follows the toolkit's count too
    wait = {}
    for name, value in WAIT_DEFAULTS.items():
        if name in environ:
            wait[name] = (environ[name], "set before the toolkit started")
        elif fair and interactive:
            wait[name] = (value, "toolkit default for serve and chat")
            writes[name] = value
        else:
            wait[name] = ("", "library default " + ("(TOOLKIT_FAIR=0)" if not fair else "for batch work, which runs niced"))
    nice = None
    if fair and not interactive:
        nice = _whole("TOOLKIT_NICE", environ.get("TOOLKIT_NICE", str(BATCH_NICE)), 0) or None
    return Sharing(count, source, usable_cores(), fair, wait, nice, writes)


_applied: list[Sharing] = []  # the process's settings, once applied


def apply(threads: int | None = None, *, interactive: bool) -> Sharing:
    """Decide (`decide`) and apply the settings to this process, once: later calls return the
    first call's. Call it before torch or llama_cpp is imported (libgomp reads its environment when
    it loads) and before any thread starts (threads inherit the nice level of the one creating them)."""
    if _applied:
        return _applied[0]
    sharing = decide(threads, interactive=interactive)
    os.environ.update(sharing.writes)
    if sharing.nice is not None:
        with contextlib.suppress(OSError):  # raising priority back needs privileges; lowering never fails
            now = os.nice(0)
            if sharing.nice > now:
                os.nice(sharing.nice - now)
        lower_group(sharing.nice)
    torch = sys.modules.get("torch")  # already loaded (a Python caller): its pool takes the count now
    if torch is not None and "OMP_NUM_THREADS" in sharing.writes:
        torch.set_num_threads(sharing.threads)
    _applied.append(sharing)
    return sharing


def current() -> Sharing:
    """The settings in force: those `apply` set, else what a batch command would run with."""
    return _applied[0] if _applied else decide(interactive=False)


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    with contextlib.suppress(OSError, AttributeError):
        return os.getloadavg()[0]
    return None


def autogroup() -> bool:
    """Whether the kernel groups scheduling by session (then nice orders one session's processes only)."""
    with contextlib.suppress(OSError, ValueError):
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    return False


def group_nice() -> int | None:
    """The nice level of this process's autogroup (None: the kernel groups nothing, or it cannot be read)."""
    if not autogroup():
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(AUTOGROUP.read_text().split("nice")[1])
    return None


def lower_group(level: int) -> None:
    """With autogroup on, the kernel first shares the CPU between sessions (a terminal, a service)
    and only then between one session's processes, so a process's own nice does nothing against a
    server started from another terminal: bench/contention.py measured `serve` beside a niced
    `train` in another session at 7.9x its latency alone. Lower the session's group as well (it
    stays lowered until the session ends; raising it back would need privileges)."""
    now = group_nice()
    if now is not None and level > now:
        with contextlib.suppress(OSError):
            AUTOGROUP.write_text(str(level))


def oversubscribed(sharing: Sharing, load: float | None) -> list[str]:
    """Warnings, one line each, when the threads do not fit the cores: more threads than usable
    cores, or a load average that already fills them."""
    found = []
    if sharing.threads > sharing.cores:
        found.append(f"{sharing.threads} threads on {sharing.cores} usable cores: threads wait for each other "
                     f"and every step slows; pass --threads {sharing.cores} (or set TOOLKIT_THREADS)")
    if load is not None and load >= sharing.cores:
        found.append(f"load average {load:.1f} on {sharing.cores} usable cores: other work already fills them; "
                     "toolkit jobs will share the cores (serve and chat keep their priority, batch work runs niced)")
    return found

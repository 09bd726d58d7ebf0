"""The machine measured numbers come from, for the sweep's and the comparison's reports.

Sampled texts, and so every score and speed, differ between CPUs (llama.cpp picks AVX2, AVX-512 or
AMX kernels), so each report records where it was measured.
"""

from __future__ import annotations

from toolkit.runtime.backends import backend_class
from toolkit.runtime.llamacpp import describe_machine, machine_summary


def measured_on(backend: str) -> dict:
    """This machine's summary; the llama.cpp probe only with a backend that loads GGUFs here, which
    has loaded a model (and so run the cached probe) anyway. With a server backend the generations
    come from the server, and the summary says so (the backend's declared capabilities decide)."""
    can = backend_class(backend).capabilities
    summary = machine_summary(probe=can.in_process and can.loads_gguf)
    if not can.in_process:
        summary["generations"] = f"{backend} server"
    return summary


def measured_line(summary: dict) -> str:
    """`Measured on: CPU, cores, SIMD flags; llama-cpp-python version ...` for a report."""
    text = f"Measured on: {describe_machine(summary)}"
    if "generations" in summary:
        text += f" (generations by the {summary['generations']})"
    return text

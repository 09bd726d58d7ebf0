"""toolkit: fine-tune a small LLM on a CPU, ship it as GGUF, serve it, sweep its decoding
parameters and prove whether tuning helped. See README.md."""

__version__ = "0.1.0"

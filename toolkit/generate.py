"""`toolkit generate`: prompts in, streamed text or JSONL out."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from toolkit.data.readers import load_examples
from toolkit.data.records import Example
from toolkit.errors import BackendError, ConfigError
from toolkit.io import write_jsonl
from toolkit.params import DEFAULTS, DecodingParams
from toolkit.runtime.backends import Backend, BackendName, open_backend, raw_backend
from toolkit.runtime.generation import as_messages


def generate_rows(backend: Backend, examples: Iterable, params: DecodingParams, *, system: str | None = None,
                  description: str = "Generating") -> Iterator[dict]:
    """Generate for each example (anything with id/prompt/response), with a progress bar."""
    from toolkit.console import progress

    examples = list(examples)
    with progress() as bar:
        task = bar.add_task(description, total=len(examples), info="")
        tokens = seconds = 0.0
        for ex in examples:
            gen = backend.chat(as_messages(ex.prompt, system), params)
            tokens += gen.completion_tokens
            seconds += gen.seconds
            bar.update(task, advance=1, info=f"{tokens / seconds if seconds else 0:.0f} tok/s")
            yield {"id": ex.id, "prompt": ex.prompt, "reference": ex.response, "output": gen.text} | {
                k: v for k, v in gen.to_dict().items() if k != "text"}


def generate(prompt: list[str] = (), model: str = "smollm2", file: Path | None = None, out: Path | None = None,
             system: str = "", backend: BackendName = "llamacpp", url: str = "", raw: bool = False,
             params: DecodingParams = DEFAULTS) -> int:
    """Generate text from a model: one or more prompts streamed to the terminal, or a file to JSONL.

    Args:
        prompt: prompt text(s); each is one user turn.
        model: embedded name (smollm2), a .gguf file, or an exported model directory.
        file: prompts from a file: a built split or QA/chat file (JSONL/CSV), or plain text with one prompt per line.
        out: write JSONL (id, prompt, reference, output, finish_reason, tokens, tok/s) here instead of streaming.
        system: an optional system prompt.
        backend: which backend runs the model: llamacpp (in process), ollama or openai.
        url: server URL for the ollama (default: OLLAMA_HOST) and openai backends.
        raw: raw completion for a base model without a chat template: the prompt as given, no template, BOS as the GGUF asks (Ollama's raw).
    """
    from toolkit.console import err

    if not prompt and file is None:
        raise ConfigError("nothing to generate from", fix="pass a prompt, or --file FILE")
    examples = _examples(prompt, file)
    with open_backend(raw_backend(backend, raw), model, n_ctx=params.num_ctx, url=url or None) as engine:
        if out is not None:
            rows = list(generate_rows(engine, examples, params, system=system or None))
            write_jsonl(out, rows)
            err.print(f"wrote {len(rows)} generations to {out}")
            return 0
        for ex in examples:
            if len(examples) > 1:
                err.print(f"[bold]>>> {ex.prompt}[/]")
            print_stream(engine, as_messages(ex.prompt, system or None), params)
    return 0


def print_stream(engine: Backend, messages: list[dict], params: DecodingParams) -> str:
    """Write a reply to stdout as it streams, then its token count and speed to stderr; return its text."""
    from toolkit.console import err

    for piece in engine.stream(messages, params):
        if isinstance(piece, str):
            sys.stdout.write(piece)
            sys.stdout.flush()
        else:
            sys.stdout.write("\n")
            err.print(f"[dim]{piece.completion_tokens} tokens, {piece.tokens_per_second:.0f} tok/s, {piece.finish_reason}[/]")
            return piece.text
    return ""


def _examples(prompts: Iterable[str], file: Path | None) -> list:
    if file is None:
        return [Example(id=str(i), prompt=p, response="", kind="prompt", meta={}) for i, p in enumerate(prompts)]
    file = Path(file)
    if file.suffix.lower() in {".jsonl", ".json", ".csv"}:
        return load_examples(file)
    if not file.exists():
        raise ConfigError(f"{file} does not exist", fix="check the path")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Example(id=str(i + 1), prompt=p, response="", kind="prompt", meta={}) for i, p in enumerate(lines)]


def chat(model: str = "smollm2", backend: BackendName = "llamacpp", url: str = "", system: str = "", raw: bool = False,
         params: DecodingParams = DEFAULTS) -> int:
    """Chat with a model in the terminal: streamed replies, the conversation kept as history.

    Type /reset to forget the history, /exit (or Ctrl-D) to leave.

    Args:
        model: embedded name (smollm2), a .gguf file, an exported model directory, or a server's model name.
        backend: llamacpp (in process), ollama or openai.
        url: server URL for the ollama (default: OLLAMA_HOST) and openai backends.
        system: an optional system prompt.
        raw: raw completion for a base model without a chat template: the conversation's texts as given, one per line, no template, BOS as the GGUF asks (Ollama's raw).
    """
    from toolkit.console import err

    history: list[dict] = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    with open_backend(raw_backend(backend, raw), model, n_ctx=params.num_ctx, url=url or None) as engine:
        err.print("[dim]/reset forgets the conversation, /exit leaves[/]")
        while True:
            try:
                line = input("you> " if interactive else "")
            except EOFError:
                break
            text = line.strip()
            if text in {"/exit", "/quit"}:
                break
            if text == "/reset":
                history = history[:1] if system else []
                err.print("[dim]history cleared[/]")
                continue
            if not text:
                continue
            history.append({"role": "user", "content": text})
            reply = _stream_reply(engine, history, params)
            history.append({"role": "assistant", "content": reply})
    return 0


def _stream_reply(engine: Backend, history: list[dict], params: DecodingParams) -> str:
    from toolkit.console import err

    try:
        return print_stream(engine, history, params)
    except BackendError as exc:
        keep_from = 1 if history[0]["role"] == "system" else 0
        if "exceed the context" not in str(exc) or len(history) <= keep_from + 1:
            raise  # not a context problem, or the question alone is too long
        del history[keep_from:-1]  # keep the system turn and the question
        err.print("[yellow]the conversation outgrew the context; older turns were dropped[/]")
        return _stream_reply(engine, history, params)

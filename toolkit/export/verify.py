"""`toolkit verify`: does the GGUF behave like the HF model it came from?

Fidelity: the HF model greedily continues N validation prompts; both models then score the same
token sequence, and we compare their next-token distributions at every generated position: top-1
agreement and mean KL(P_hf || P_gguf). Templates: the same conversation rendered by the HF chat
template, the template embedded in the GGUF and the Modelfile TEMPLATE must be the same string,
and every end-of-turn token must be a Modelfile stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import ToolkitError

# Minimum top-1 agreement per GGUF type on the default model (issue 4); other types are reported.
TARGETS = {"F32": 0.99, "F16": 0.99, "BF16": 0.99, "Q8_0": 0.97}
# A position is "decisive" when the HF model's top-1 token leads its runner-up by this many nats
# (about 1.65x as likely). A small model has many near-ties, where any rounding flips the argmax;
# agreement on decisive positions shows whether a quantization changes what the model clearly prefers.
DECISIVE_MARGIN = 0.5

PROBE_CONVERSATION = [
    {"role": "user", "content": "What is a learning-rate warmup?"},
    {"role": "assistant", "content": "A short phase where the learning rate rises from a small value."},
    {"role": "user", "content": "Why does it help?"},
]


class VerifyError(ToolkitError):
    """The GGUF or its Modelfile does not match the HF model."""

    exit_code = 1


@dataclass
class Fidelity:
    """Agreement of one GGUF with the HF model over the generated positions."""

    gguf: str
    type: str
    positions: int
    top1_agreement: float
    mean_kl: float
    max_kl: float
    target: float | None = None
    passed: bool = True
    per_prompt: list[float] = field(default_factory=list)
    decisive_positions: int = 0
    decisive_agreement: float = 1.0


def gguf_type(path: Path) -> str:
    """The file's quantization type name (F16, Q8_0, Q4_K_M, ...) from its metadata."""
    import llama_cpp

    from toolkit.runtime.llamacpp import read_metadata

    ftype = int(read_metadata(path).get("general.file_type", -1))
    for name in dir(llama_cpp):
        if name.startswith("LLAMA_FTYPE_") and getattr(llama_cpp, name) == ftype:
            return name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
    return f"type {ftype}"


def reference_sequences(hf_dir: Path, prompts: list[str], n_tokens: int) -> tuple[list[list[int]], list[int], list]:
    """Token sequences (prompt + greedy HF continuation), prompt lengths and HF log-probs per position."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    seqs, starts, logprobs = [], [], []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            out = model.generate(ids, max_new_tokens=n_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            logits = model(out).logits[0, ids.shape[1] - 1 : out.shape[1] - 1]
            seqs.append(out[0].tolist())
            starts.append(ids.shape[1])
            logprobs.append(torch.log_softmax(logits.double(), dim=-1))
    return seqs, starts, logprobs


def compare_gguf(gguf: Path, seqs: list[list[int]], starts: list[int], hf_logprobs: list) -> Fidelity:
    """Score `seqs` with llama.cpp and compare with the HF log-probs."""
    import numpy as np
    import torch

    from toolkit.runtime.llamacpp import load

    kind = gguf_type(gguf)
    llm = load(gguf, n_ctx=max(len(s) for s in seqs) + 8, logits_all=True)
    agree = total = decisive = decisive_agree = 0
    kls: list[float] = []
    per_prompt = []
    try:
        for seq, start, hf in zip(seqs, starts, hf_logprobs):
            llm.reset()
            llm.eval(seq[:-1])
            scores = torch.from_numpy(np.array(llm.scores[start - 1 : len(seq) - 1], dtype=np.float64))
            gg = torch.log_softmax(scores, dim=-1)
            matches = gg.argmax(-1) == hf.argmax(-1)
            top2 = hf.topk(2, dim=-1).values
            clear = (top2[:, 0] - top2[:, 1]) >= DECISIVE_MARGIN
            decisive += int(clear.sum())
            decisive_agree += int((matches & clear).sum())
            same = int(matches.sum())
            kl = (hf.exp() * (hf - gg)).sum(-1)
            agree += same
            total += len(kl)
            kls.extend(kl.tolist())
            per_prompt.append(same / max(1, len(kl)))
    finally:
        llm.close()
    target = TARGETS.get(kind)
    top1 = agree / max(1, total)
    return Fidelity(str(gguf), kind, total, top1, sum(kls) / max(1, len(kls)), max(kls, default=0.0), target,
                    target is None or top1 >= target, per_prompt, decisive, decisive_agree / max(1, decisive))


CONVERSATIONS = [
    [{"role": "user", "content": "What is a learning-rate warmup?"}],
    [{"role": "system", "content": "You are a terse reviewer."}, {"role": "user", "content": "Review my ablation."}],
    PROBE_CONVERSATION,
    [{"role": "system", "content": "Answer in one line."}] + PROBE_CONVERSATION,
]


def first_difference(a: str, b: str) -> int | None:
    """Index of the first differing character, or None when equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_templates(hf_dir: Path, gguf: Path, modelfile: Path | None) -> list[str]:
    """Render each probe conversation three ways (HF, GGUF-embedded, Modelfile); list mismatches."""
    from transformers import AutoTokenizer

    from toolkit.chat.jinja import render_jinja
    from toolkit.chat.render import render_chat
    from toolkit.export.modelfile.parser import validate_file
    from toolkit.runtime.llamacpp import read_metadata

    tok = AutoTokenizer.from_pretrained(hf_dir)
    embedded = read_metadata(gguf).get("tokenizer.chat_template")
    if not embedded:
        return [f"{gguf.name} has no tokenizer.chat_template"]
    mf = validate_file(modelfile) if modelfile else None
    problems = []
    for conv in CONVERSATIONS:
        renders = {"HF chat template": tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True),
                   "GGUF template": render_jinja(embedded, conv, bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")}
        if mf is not None:
            renders["Modelfile TEMPLATE"] = render_chat(mf.template, conv, system=mf.system)
        reference = renders["HF chat template"]
        for label, text in renders.items():
            at = first_difference(reference, text)
            if at is not None:
                problems.append(f"{label} differs from the HF chat template at character {at}: "
                                f"{reference[max(0, at - 15):at + 15]!r} vs {text[max(0, at - 15):at + 15]!r}")
    if mf is not None:
        from toolkit.export.convert import chat_format

        missing = [t for t in chat_format(hf_dir).stops if t not in mf.stops]
        if missing:
            problems.append(f"{modelfile.name}: end-of-turn token {missing[0]!r} is not a PARAMETER stop")
    return problems


DEFAULT_PROMPTS = [
    "How can we reduce the memory of transformer training on long documents?",
    "Why do small language models hallucinate citations, and how could we measure it?",
    "What limits federated learning on mobile phones with unreliable connectivity?",
    "How should retrieval-augmented generation systems be evaluated?",
    "Can low-rank adapters match full fine-tuning on code generation tasks?",
    "How do we detect data leakage between the training and test sets of a benchmark?",
    "What makes learning-rate warmup necessary for adaptive optimizers?",
    "How can graph neural networks scale to billion-edge graphs on one machine?",
]


def verify(model: str, gguf: list[Path] = (), data: Path | None = None, prompts: int = 8, tokens: int = 48,
           templates: bool = True) -> int:
    """Check GGUF files against the HF model they came from: fidelity and chat templates.

    Fidelity: the HF model greedily continues N prompts; at every generated position both models'
    next-token distributions are compared (top-1 agreement, agreement on decisive positions where
    the HF model's top token clearly leads, mean KL). Targets: f16/bf16/f32 >= 99%,
    q8_0 >= 97%; other quantizations are reported. Templates: a conversation rendered by the HF
    chat template, the template inside the GGUF and the Modelfile beside it must be identical, and
    every end-of-turn token must be a Modelfile stop. Exits 1 when any check fails.

    Args:
        model: the HF model directory the GGUFs were exported from (or `smollm2`).
        gguf: GGUF files to check (default: every .gguf in MODEL/gguf).
        data: a split JSONL (e.g. validation.jsonl) whose prompts to use (default: built-in prompts).
        prompts: how many prompts.
        tokens: how many tokens the HF model generates per prompt.
        templates: also check the chat templates and Modelfile stops.
    """
    from rich.table import Table

    from toolkit.console import err, out, status
    from toolkit.models import resolve

    hf_dir = resolve(model).require_hf()
    files = [Path(g) for g in gguf] or sorted((hf_dir / "gguf").glob("*.gguf"))
    if not files:
        raise VerifyError(f"no GGUF files given and none in {hf_dir / 'gguf'}", fix="run `toolkit export` first or pass --gguf FILE")
    texts = DEFAULT_PROMPTS
    if data is not None:
        from toolkit.data.readers import load_examples

        texts = [ex.prompt for ex in load_examples(data)]
    texts = texts[:prompts]
    with status(f"HF model generates {tokens} tokens for {len(texts)} prompts"):
        seqs, starts, logprobs = reference_sequences(hf_dir, texts, tokens)
    table = Table(title=f"GGUF fidelity vs {hf_dir.name} ({len(texts)} prompts x {tokens} tokens)",
                  caption=f"decisive: top-1 agreement where the HF model's top token leads by >= {DECISIVE_MARGIN} nats")
    for col in ("file", "type", "top-1", "decisive", "mean KL", "max KL", "templates", "result"):
        table.add_column(col, justify="left" if col in ("file", "type", "templates", "result") else "right", no_wrap=True)
    failures = []
    for path in files:
        with status(f"scoring {path.name}"):
            fid = compare_gguf(path, seqs, starts, logprobs)
        mf = path.with_suffix(".Modelfile")
        problems = check_templates(hf_dir, path, mf if mf.exists() else None) if templates else []
        ok = fid.passed and not problems
        template_cell = "skipped" if not templates else "MISMATCH" if problems else "same" + (" +stops" if mf.exists() else "")
        target = f" (>= {fid.target:.0%})" if fid.target else ""
        table.add_row(path.name, fid.type, f"{fid.top1_agreement:.1%}", f"{fid.decisive_agreement:.1%}", f"{fid.mean_kl:.4f}", f"{fid.max_kl:.3f}",
                      template_cell, ("[green]pass[/]" if ok else "[red]FAIL[/]") + target)
        if not fid.passed:
            failures.append(f"{path.name}: top-1 agreement {fid.top1_agreement:.1%} below {fid.target:.0%}")
        failures += [f"{path.name}: {p}" for p in problems]
    out.print(table)
    for f in failures:
        err.print(f"[red]✗[/] {f}", soft_wrap=True)
    if failures:
        raise VerifyError(failures[0], fix="see the table above")
    return 0

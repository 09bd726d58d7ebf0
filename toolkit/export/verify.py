"""`toolkit verify`: does the GGUF behave like the HF model it came from?

Fidelity: the HF model greedily continues N validation prompts; both models then score the same
token sequence, and we compare their next-token distributions at every generated position: top-1
agreement and mean KL(P_hf || P_gguf). Templates: the GGUF must embed the HF chat template, the
Modelfile TEMPLATE (exported or hand-written) must render every conversation of the parity suite
(toolkit/chat/parity.py) exactly as the HF template does, its leading BOS coming from llama.cpp's
tokenize (checked on token ids), and every end-of-turn token must be a Modelfile stop.

A LoRA exported without merging (`toolkit export BASE --adapter RUN`) is checked the same way: pass
its Modelfile (FROM base + ADAPTER lora) as --gguf; llama.cpp applies the LoRA at load and the
reference is the merged HF model (MODEL = `toolkit merge`'s output, or the adapter itself, merged
in memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.chat.families import candidates
from toolkit.chat.parity import first_difference as diff
from toolkit.chat.parity import passed, pinned_date, run_suite, writes_leading_bos
from toolkit.data.readers import load_examples
from toolkit.errors import ToolkitError
from toolkit.export.convert import eos_stops
from toolkit.export.modelfile.checks import validate_file
from toolkit.models import is_modelfile, resolve, resolve_modelfile
from toolkit.runtime.llamacpp import load, load_vocab, read_metadata
from toolkit.train.merge import base_for, load_adapter
from toolkit.train.tokens import prompt_ids

# Minimum top-1 agreement per GGUF type on the default model (issue 4); other types are reported.
TARGETS = {"F32": 0.99, "F16": 0.99, "BF16": 0.99, "Q8_0": 0.97}
# A position is "decisive" when the HF model's top-1 token leads its runner-up by this many nats
# (about 1.65x as likely). A small model has many near-ties, where any rounding flips the argmax;
# agreement on decisive positions shows whether a quantization changes what the model clearly prefers.
DECISIVE_MARGIN = 0.5


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

    ftype = int(read_metadata(path).get("general.file_type", -1))
    for name in dir(llama_cpp):
        if name.startswith("LLAMA_FTYPE_") and getattr(llama_cpp, name) == ftype:
            return name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
    return f"type {ftype}"


def reference_model(hf_dir: Path, adapter: Path | None = None):
    """(fp32 HF model in eval mode, tokenizer): `hf_dir`, or with `adapter` its base with the adapter merged in memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if adapter is not None:
        peft_model, tok, _ = load_adapter(adapter)
        return peft_model.merge_and_unload().eval(), tok
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(hf_dir)


def reference_sequences(hf_dir: Path, prompts: list[str], n_tokens: int,
                        adapter: Path | None = None) -> tuple[list[list[int]], list[int], list]:
    """Token sequences (prompt + greedy HF continuation), prompt lengths and HF log-probs per position."""
    import torch

    model, tok = reference_model(hf_dir, adapter)
    seqs, starts, logprobs = [], [], []
    with torch.no_grad():
        for prompt in prompts:
            if tok.chat_template:
                ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)["input_ids"]
            else:  # a base model: the prompt as given, BOS as llama.cpp adds it (raw mode)

                ids = torch.tensor([prompt_ids(tok, prompt)])
            out = model.generate(ids, max_new_tokens=n_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            logits = model(out).logits[0, ids.shape[1] - 1 : out.shape[1] - 1]
            seqs.append(out[0].tolist())
            starts.append(ids.shape[1])
            logprobs.append(torch.log_softmax(logits.double(), dim=-1))
    return seqs, starts, logprobs


def compare_gguf(gguf: Path, seqs: list[list[int]], starts: list[int], hf_logprobs: list, lora: Path | None = None) -> Fidelity:
    """Score `seqs` with llama.cpp (with `lora` applied at load) and compare with the HF log-probs."""
    import numpy as np
    import torch

    kind = gguf_type(gguf)  # a LoRA is held to its base's target: it adds deltas in the same precision
    llm = load(gguf, n_ctx=max(len(s) for s in seqs) + 8, logits_all=True, lora=lora)
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
    return Fidelity(str(gguf) + (f"+{lora}" if lora else ""), kind + ("+LoRA" if lora else ""), total, top1, sum(kls) / max(1, len(kls)), max(kls, default=0.0), target,
                    target is None or top1 >= target, per_prompt, decisive, decisive_agree / max(1, decisive))


def first_difference(a: str, b: str) -> int | None:
    """Index of the first differing character, or None when equal."""
    return diff(a, b)


def check_templates(hf_dir: Path, gguf: Path, modelfile: Path | None) -> list[str]:
    """The chat template inside the GGUF must be the HF one; a Modelfile's TEMPLATE (written by
    export or by hand) must render the parity suite exactly as the HF template does, with the
    leading BOS coming from llama.cpp's tokenize (checked on token ids); every end-of-turn token
    must be a stop. Returns the problems found, one per conversation that differs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    jinja = tok.chat_template or ""
    embedded = read_metadata(gguf).get("tokenizer.chat_template")
    if not embedded:
        return [f"{gguf.name} has no tokenizer.chat_template"]
    problems = []
    at = first_difference(jinja, embedded)
    if at is not None:
        problems.append(f"GGUF template differs from the HF chat template at character {at}: "
                        f"{jinja[max(0, at - 15):at + 15]!r} vs {embedded[max(0, at - 15):at + 15]!r}")
    if modelfile is not None:
        problems += check_modelfile(hf_dir, tok, gguf, modelfile)
    return problems


def check_modelfile(hf_dir: Path, tok, gguf: Path, modelfile: Path) -> list[str]:
    """The parity suite, the BOS rule on token ids, and the stops for one Modelfile."""
    mf = validate_file(modelfile)
    jinja = tok.chat_template or ""
    # a date the HF template takes from strftime_now was frozen in the Modelfile at export
    now = pinned_date(jinja, f"{mf.template}\n{mf.system or ''}")
    cases = run_suite(jinja, mf.template, bos=tok.bos_token or "", eos=tok.eos_token or "", system=mf.system, now=now)
    problems = [f"Modelfile TEMPLATE {c.describe()}" for c in cases if not c.ok]
    if not problems and not passed(cases):
        problems.append("the HF chat template refuses every conversation of the parity suite")
    if not problems:
        problems += token_problems(gguf, tok, cases)
    missing = [t for t in required_stops(hf_dir, tok) if t not in mf.stops]
    if missing:
        problems.append(f"{modelfile.name}: end-of-turn token {missing[0]!r} is not a PARAMETER stop")
    return problems


def required_stops(hf_dir: Path, tok) -> list[str]:
    """The end-of-turn tokens a Modelfile must stop on: the generation config's eos tokens and
    the matched family's end-of-turn tokens."""
    stops = eos_stops(hf_dir, tok)
    vocab = tok.get_vocab()
    for family in candidates(tok.chat_template or "")[:1]:
        stops += [t for t in family.end_of_turn if t in vocab and t not in stops]
    return stops


def bos_problem(add_bos: bool, template_writes_bos: bool) -> str | None:
    """The BOS rule's message, with its fix, when the GGUF's add-BOS flag and the template disagree
    (None when they agree). The caller names the file."""
    if add_bos == template_writes_bos:
        return None
    if template_writes_bos:
        return ('tokenizer.ggml.add_bos_token is false but the HF chat template writes a leading BOS, so llama.cpp '
                'would start every prompt without it: set "add_bos_token": true in the HF tokenizer_config.json and '
                'export again, or drop the leading {{ bos_token }} from the chat template')
    return ('tokenizer.ggml.add_bos_token is true but the HF chat template writes no leading BOS, so llama.cpp would '
            'add one the model never saw: set "add_bos_token": false in the HF tokenizer_config.json and export '
            'again, or start the chat template with {{ bos_token }}')


def token_problems(gguf: Path, tok, cases) -> list[str]:
    """The BOS rule on token ids: llama.cpp's tokenize of the Go text (adding BOS as the GGUF
    says) must give the HF tokenizer's ids for the HF text."""
    import llama_cpp

    llm = load_vocab(gguf)
    try:
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)))
        if (problem := bos_problem(add_bos, writes_leading_bos(cases))) is not None:
            return [problem]
        for case in cases:
            if case.refused:
                continue
            hf_ids = tok((tok.bos_token if case.leading_bos else "") + case.hf, add_special_tokens=False)["input_ids"]
            ids = llm.tokenize(case.go.encode("utf-8"), add_bos=True, special=True)
            at = first_difference(hf_ids, ids)
            if at is not None:
                return [f"conversation '{case.name}': llama.cpp's token ids differ from the HF tokenizer's at "
                        f"position {at}: {hf_ids[at:at + 3]} vs {ids[at:at + 3]}"]
        return []
    finally:
        llm.close()


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

    A LoRA exported without merging: pass its Modelfile (FROM base + ADAPTER lora) as --gguf and,
    as MODEL, the merged model or the adapter (RUN or RUN/adapter, merged in memory); the base
    plus LoRA is held to the base type's target.

    Args:
        model: the HF model directory the GGUFs were exported from (or `smollm2`), or a LoRA adapter (RUN/adapter).
        gguf: GGUF files or adapter Modelfiles to check (default: every .gguf in MODEL/gguf; for an adapter, RUN/gguf/*.Modelfile).
        data: a split JSONL (e.g. validation.jsonl) whose prompts to use (default: built-in prompts).
        prompts: how many prompts.
        tokens: how many tokens the HF model generates per prompt.
        templates: also check the chat templates and Modelfile stops.
    """
    from rich.table import Table

    from toolkit.console import err, out, status

    adapter, hf_dir = _reference(model)
    where = adapter.resolve().parent / "gguf" if adapter else hf_dir / "gguf"
    files = [Path(g) for g in gguf] or (sorted(where.glob("*.Modelfile")) if adapter else sorted(where.glob("*.gguf")))
    if not files:
        raise VerifyError(f"no GGUF files given and none in {where}", fix="run `toolkit export` first or pass --gguf FILE")
    texts = DEFAULT_PROMPTS
    if data is not None:
        texts = [ex.prompt for ex in load_examples(data)]
    texts = texts[:prompts]
    with status(f"HF model generates {tokens} tokens for {len(texts)} prompts"):
        seqs, starts, logprobs = reference_sequences(hf_dir, texts, tokens, adapter)
    reference = f"{hf_dir.name} + adapter {adapter}" if adapter else hf_dir.name
    table = Table(title=f"GGUF fidelity vs {reference} ({len(texts)} prompts x {tokens} tokens)",
                  caption=f"decisive: top-1 agreement where the HF model's top token leads by >= {DECISIVE_MARGIN} nats")
    for col in ("file", "type", "top-1", "decisive", "mean KL", "max KL", "templates", "result"):
        table.add_column(col, justify="left" if col in ("file", "type", "templates", "result") else "right", no_wrap=True)
    failures = []
    applies = templates and _has_chat_template(hf_dir)
    if templates and not applies:
        err.print(f"the template check does not apply: {hf_dir} has no chat template (a base model); fidelity is "
                  "checked on the prompts as given", soft_wrap=True)
    for item in files:
        path, lora, mf = _target(item)
        with status(f"scoring {item.name}"):
            fid = compare_gguf(path, seqs, starts, logprobs, lora)
        problems = check_templates(hf_dir, path, mf if mf.exists() else None) if applies else []
        ok = fid.passed and not problems
        template_cell = ("skipped" if not templates else "n/a (no chat template)" if not applies
                         else "MISMATCH" if problems else "same" + (" +stops" if mf.exists() else ""))
        target = f" (>= {fid.target:.0%})" if fid.target else ""
        table.add_row(item.name, fid.type, f"{fid.top1_agreement:.1%}", f"{fid.decisive_agreement:.1%}", f"{fid.mean_kl:.4f}", f"{fid.max_kl:.3f}",
                      template_cell, ("[green]pass[/]" if ok else "[red]FAIL[/]") + target)
        if not fid.passed:
            failures.append(f"{item.name}: top-1 agreement {fid.top1_agreement:.1%} below {fid.target:.0%}")
        failures += [f"{item.name}: {p}" for p in problems]
    out.print(table)
    for f in failures:
        err.print(f"[red]✗[/] {f}", soft_wrap=True)
    if failures:
        raise VerifyError(failures[0], fix="see the table above")
    return 0


def _has_chat_template(hf_dir: Path) -> bool:
    from transformers import AutoTokenizer

    return bool(AutoTokenizer.from_pretrained(hf_dir).chat_template)


def _reference(model: str) -> tuple[Path | None, Path]:
    """(adapter dir or None, HF dir of the base or model) for verify's MODEL."""
    path = Path(model)
    if (path / "adapter_config.json").exists() or (path / "adapter" / "adapter_config.json").exists():
        adapter, _meta, _spec, hf_dir = base_for(path)
        return adapter, hf_dir
    return None, resolve(model).require_hf()


def _target(item: Path) -> tuple[Path, Path | None, Path]:
    """(GGUF, LoRA or None, Modelfile) for one --gguf entry: a .gguf (its Modelfile beside it) or a Modelfile."""
    if is_modelfile(item):
        gguf, lora = resolve_modelfile(item, hf=False).require_llamacpp()
        return gguf, lora, item
    return item, None, item.with_suffix(".Modelfile")

"""`toolkit eval`'s in-process GGUF scorer against the harness's own `hf` model on the same weights.

Tiny random models (2 layers, hidden 64) whose embeddings are scaled up so that the next-token
distribution is peaked (with the default init every token is near-uniform, and scoring the wrong
token would still agree): one whose tokenizer adds no BOS (as the default model's) and one that
adds it. f32 GGUF vs HF fp32: within 1e-3 nats per token; f16: within 2e-2 on average with the
same answers; the harness's token boundary rule pinned where joint and separate tokenization
differ; packed scoring (many items per decode, contexts shared by their choices' sequences)
within 1e-4 nats per token of each choice scored alone; and the same per-item accuracy on a tiny
task through the harness's own evaluator.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from eval_tasks import write_tasks  # noqa: E402
from tiny_models import build_tiny, to_gguf  # noqa: E402

pytestmark = pytest.mark.slow

LONG = " ".join(f"word{i} follows and then" for i in range(40))  # well past n_batch=16 tokens
PAIRS = [  # (context, continuation): with and without a leading space, long, empty, mid-word
    ("Question: What color is the sky?\nAnswer:", " blue"),
    ("Question: What color is the sky?\nAnswer:", " a pale and hazy grey on most days"),
    ("The capital of France is ", "Paris"),  # trailing space moves to the continuation
    ("Numbers: 1, 2, 3,", "4, 5"),
    (LONG + "\nThe end is", " near, it said."),
    ("", "Hello world"),
    ("Hello wor", "ld, again"),
]


def _peaked(hf_dir: Path) -> Path:
    """Scale the (tied) embeddings of a tiny model so its next-token distributions are peaked."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(25.0)
    model.save_pretrained(hf_dir)
    return hf_dir


def _bos_post_processor(hf_dir: Path, bos: str) -> None:
    """Make the HF tokenizer really put BOS first (transformers reads tokenizer.json's post
    processor, not `add_bos_token`), as a Llama tokenizer does; the GGUF says so by add_bos_token."""
    import json

    path = hf_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    bos_id = next(t["id"] for t in data["added_tokens"] if t["content"] == bos)
    seq = lambda name: {"Sequence": {"id": name, "type_id": 0}}  # noqa: E731
    special = {"SpecialToken": {"id": bos, "type_id": 0}}
    data["post_processor"] = {"type": "TemplateProcessing", "single": [special, seq("A")], "pair": [special, seq("A"), special, seq("B")],
                              "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module", params=["no-bos", "bos"])
def tiny(request, default_hf_dir, tmp_path_factory):
    """(HF dir, f32 GGUF, f16 GGUF) of a tiny Llama whose tokenizer adds BOS or not."""
    from toolkit.export.convert import convert

    root = tmp_path_factory.mktemp(request.param)
    bos = request.param == "bos"
    hf_dir = build_tiny(default_hf_dir, root / "hf", "LlamaForCausalLM", template=None,
                        bos="<s>" if bos else "", eos="</s>" if bos else "<|im_end|>", add_bos=bos)
    _peaked(hf_dir)
    f32, f16 = to_gguf(hf_dir), convert(hf_dir, root / "tiny-f16.gguf", "f16").path
    if bos:  # after converting: the converter recognises the pre-tokenizer by its output
        _bos_post_processor(hf_dir, "<s>")
    return hf_dir, f32, f16, bos


def _hf_lm(hf_dir: Path):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=4)


def _gguf_lm(gguf: Path, **kwargs):
    from toolkit.evaluate.harness.lm import gguf_lm_class

    return gguf_lm_class()(str(gguf), n_batch=16, **kwargs)


def _requests(pairs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def _encoded(lm, context: str, continuation: str):
    """The harness's own split of one request into (context tokens, continuation tokens)."""
    captured = []
    original = lm._loglikelihood_tokens
    lm._loglikelihood_tokens = lambda reqs, **kw: captured.extend(reqs) or [(0.0, False)] * len(reqs)
    try:
        lm.loglikelihood(_requests([(context, continuation)]), disable_tqdm=True)
    finally:
        lm._loglikelihood_tokens = original
    return list(captured[0][1]), list(captured[0][2])


def test_per_token_loglikelihoods_match_hf_fp32(tiny):
    hf_dir, f32, f16, bos = tiny
    hf, ours, half = _hf_lm(hf_dir), _gguf_lm(f32), _gguf_lm(f16)
    assert ours.scorer.adds_bos is bos
    assert (hf.tok_encode("x")[:1] == [hf.tokenizer.bos_token_id]) is bos
    for context, continuation in PAIRS:  # the same tokens, by the same rule
        assert _encoded(ours, context, continuation) == _encoded(hf, context, continuation), (context, continuation)
    expected = hf.loglikelihood(_requests(PAIRS), disable_tqdm=True)
    got = ours.loglikelihood(_requests(PAIRS), disable_tqdm=True)
    for (context, continuation), (e, e_greedy), (g, g_greedy) in zip(PAIRS, expected, got):
        n = len(_encoded(ours, context, continuation)[1])
        assert abs(e - g) / n < 1e-3, (context, continuation, e, g)
        assert e_greedy == g_greedy
    assert max(abs(e) for e, _ in expected) > 5  # peaked: a wrong token would not agree
    # f16: within 2e-2 nats per token on average
    lengths = [len(_encoded(ours, c, x)[1]) for c, x in PAIRS]
    halves = half.loglikelihood(_requests(PAIRS), disable_tqdm=True)
    assert sum(abs(e - h) / n for (e, _), (h, _), n in zip(expected, halves, lengths)) / len(PAIRS) < 2e-2


def test_token_boundary_follows_the_harness_rule(tiny):
    """"Hello wor" + "ld": the pair is tokenized together and the context's own tokens cut off the
    front, so the continuation is not the tokens of "ld" alone (the `gguf` model's character split
    would differ here)."""
    ours = _gguf_lm(tiny[1])
    context, continuation = _encoded(ours, "Hello wor", "ld, again")
    whole = ours.tok_encode("Hello world, again")
    assert context == ours.tok_encode("Hello wor")
    assert continuation == whole[len(context):]
    assert continuation != ours.tok_encode("ld, again", add_special_tokens=False)


PACKED = 1e-4  # nats per token: f32 weights and K/V cells, only the summation order differs (~1e-6..1e-5 measured)


def _close(a, b) -> bool:
    """Two Scored lists agree token by token within PACKED, with the same greedy flags. A wrong
    mask, position or logits row moves a token's log-probability by far more (the model is peaked)."""
    return all(len(x.logprobs) == len(y.logprobs) and x.greedy == y.greedy
               and max(abs(u - v) for u, v in zip(x.logprobs, y.logprobs)) < PACKED for x, y in zip(a, b, strict=True))


def test_sharing_the_context_changes_nothing(tiny):
    """Choices scored after one prefill equal each choice scored alone (a fresh prefill each)."""
    ours = _gguf_lm(tiny[1])
    context = ours.tok_encode(LONG)
    choices = [ours.tok_encode(t, add_special_tokens=False) for t in (" one", " two three four", " five six")]
    together = ours.scorer.score(context, choices)
    alone = [ours.scorer.score(context, [c])[0] for c in choices]
    assert _close(together, alone)
    assert max(abs(lp) for s in alone for lp in s.logprobs) > 5  # peaked: a wrong row would not agree


def test_packed_items_score_as_one_at_a_time(tiny):
    """Many items in shared decodes (contexts longer than n_batch=16, one-token choices read from
    the context, several items' tokens per decode) score as each choice alone, each context once."""
    ours = _gguf_lm(tiny[1])
    enc = lambda text: ours.tok_encode(text, add_special_tokens=False)  # noqa: E731
    items = [(ours.tok_encode(context), [enc(c) for c in choices]) for context, choices in [
        (LONG, [" near", " far away from here", " x"]), ("Question: 2 + 2?\nAnswer:", [" 4", " four", " 5 or so"]),
        ("Hello", [" world", " there, friend"]), ("The sky is", [" blue"]), ("A B C D", [" E F", " G", " H I J"])]]
    packed = list(ours.scorer.score_many(items))
    assert ours.scorer.prefilled == sum(len(context) for context, _ in items)
    alone = [[ours.scorer.score(context, [c])[0] for c in choices] for context, choices in items]
    for got, want in zip(packed, alone, strict=True):
        assert _close(got, want)
    # an item whose choices do not fit the cache together is scored in parts, its context prefilled again
    from toolkit.runtime.scoring import Scorer

    context, choices = items[1][0] * 3, [enc(" one two three four five six")] * 4
    small = Scorer(tiny[1], n_ctx=len(context) + 2 * len(choices[0]), n_batch=16)  # room for two choices, not four
    parts = small.score(context, choices)
    assert small.prefilled > len(context)
    assert _close(parts, [ours.scorer.score(context, [c])[0] for c in choices])


def _per_item(results: dict, task: str) -> list[tuple[float, float]]:
    return [(s["acc"], s.get("acc_norm", s["acc"])) for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_same_answers_on_a_tiny_task(tiny, tmp_path):
    """Through the harness's own evaluator: identical per-item accuracy for f32, and at least 99%
    of items answered alike for f16."""
    from toolkit.evaluate.harness.command import run_model
    from toolkit.evaluate.harness.tasks import build

    hf_dir, f32, f16, _ = tiny
    selection = build([("arc_easy", 0), ("hellaswag", 0), ("piqa", 0)], write_tasks(tmp_path / "data"), tmp_path / "work")
    hf = run_model(_hf_lm(hf_dir), selection, None, 1234)
    ours = run_model(_gguf_lm(f32), selection, None, 1234)
    half = run_model(_gguf_lm(f16), selection, None, 1234)
    for task in selection.tasks:
        assert _per_item(ours, task) == _per_item(hf, task), task
        items = _per_item(half, task)
        assert sum(a == b for a, b in zip(items, _per_item(hf, task))) >= 0.99 * len(items), task

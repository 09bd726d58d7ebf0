"""The in-process BERTScore equals bert_score and embeds shared references only once."""

import pytest

from toolkit.errors import DataError
from toolkit.evaluate.scoring import BertScorer

CANDS = ["", "a model learns to stop", "   ", "Gradient accumulation trades memory for time.",
         "Ünïcödé — émojis 🚀 and CJK 漢字", "the the the the", "LoRA adapters", "We fine-tune a small language model.",
         "x", "Paris is the capital of France.", "numbers 1 2 3 4 5", "A sentence about cooking pasta.",
         "tabs\tand\nnewlines", "short", "It is.", "A longer candidate. " * 12, "The quick brown fox jumps over the lazy dog.",
         "same", "?", "Evaluation with BERTScore uses greedy matching."]
REFS = ["the model learns when to stop", "the model learns when to stop", "reference", "accumulating gradients saves memory",
        "unicode text with emojis", "repetition", "low-rank adapters", "We fine-tune a small language model.", "y",
        "France's capital is Paris.", "one two three", "tuning hyperparameters with Optuna", "tabs and newlines",
        "a much longer reference sentence than the candidate", "It is not.", "A longer reference, " * 10,
        "A fast brown fox leaps over a sleepy dog.", "same", "!", ""]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """When other jobs share the 2 cores, torch with 2 threads was measured ~2.7x slower than with
    one; the setting is process-wide, so it is restored after this module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scorer():
    return BertScorer()


@pytest.fixture
def bert_score_fixed(monkeypatch):
    """bert_score with its empty-sentence branch repaired: it calls the tokenizer's
    `build_inputs_with_special_tokens`, which transformers 5 removed, so any empty candidate
    crashes it. The repair gives what that call used to return: just [CLS] [SEP]."""
    import bert_score.utils

    original = bert_score.utils.sent_encode

    def sent_encode(tokenizer, sent):
        return tokenizer.encode("", add_special_tokens=True) if not sent.strip() else original(tokenizer, sent)

    monkeypatch.setattr(bert_score.utils, "sent_encode", sent_encode)
    return bert_score


@pytest.mark.parametrize("idf", [False, True])
def test_equals_bert_score_on_varied_pairs(bert_score_fixed, scorer, idf):
    ours = scorer.score(CANDS, REFS) if not idf else BertScorer(idf=True).score(CANDS, REFS)
    p, r, f = bert_score_fixed.score(CANDS, REFS, model_type=str(scorer.path), num_layers=6, lang="en", idf=idf)
    assert ours.precision == pytest.approx(p.tolist(), abs=1e-5)
    assert ours.recall == pytest.approx(r.tolist(), abs=1e-5)
    assert ours.f1 == pytest.approx(f.tolist(), abs=1e-5)
    assert ours.f1[0] == ours.f1[2] == ours.f1[-1] == 0.0  # empty candidate or reference scores 0


def test_truncation_to_the_encoder_maximum_equals_bert_score(bert_score_fixed, scorer):
    cands, refs = ["word " * 600, "a short one"], ["word " * 550 + "end", "a short reference"]
    ours = scorer.score(cands, refs)
    _, _, f = bert_score_fixed.score(cands, refs, model_type=str(scorer.path), num_layers=6, lang="en")
    assert ours.f1 == pytest.approx(f.tolist(), abs=1e-5)


def test_baseline_rescaling_equals_bert_score(bert_score_fixed, scorer, tmp_path):
    baseline = tmp_path / "baseline.tsv"  # bert_score's format: comma-separated, one row per layer
    baseline.write_text("LAYER,P,R,F\n" + "".join(f"{i},{0.3 + i / 100:.6f},{0.31 + i / 100:.6f},{0.305 + i / 100:.6f}\n" for i in range(7)))
    ours = BertScorer(baseline=baseline).score(CANDS[:6], REFS[:6])
    _, _, f = bert_score_fixed.score(CANDS[:6], REFS[:6], model_type=str(scorer.path), num_layers=6, lang="en",
                                     rescale_with_baseline=True, baseline_path=str(baseline))
    assert ours.f1 == pytest.approx(f.tolist(), abs=1e-5)


def test_references_are_encoded_once(scorer):
    """Counted at the encoder itself (a forward hook), not only by the scorer's own counters."""
    refs = ["the first reference sentence", "a second, different one", "and a third"]
    rows = []
    scorer._load()
    hook = scorer._model.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        prepared = scorer.prepare_references(refs)
        assert sum(rows) == 3
        for i in range(3):
            scorer.score_prepared([f"candidate {i} one", f"candidate {i} two", f"candidate {i} three"], prepared)
        assert sum(rows) == 3 + 9  # only candidates after the first call
        rows.clear()
        scorer.score(["new a", "new b", "new c"], refs)  # score() reuses the cached references too
        assert sum(rows) == 3
        rows.clear()
        scorer.score(["dup", "dup", refs[0]], refs)  # duplicate candidates and known sentences are not re-encoded
        assert sum(rows) == 1
        scorer.score(["new a", "new b", "new c"], refs)  # a repeated candidate list (greedy trials) neither
        assert sum(rows) == 1
    finally:
        hook.remove()
    assert scorer.encoded_sentences >= 3 + 9 + 3 + 1


def test_prepared_scores_equal_plain_scores(scorer):
    prepared = scorer.prepare_references(REFS[:5])
    assert scorer.score_prepared(CANDS[:5], prepared) == scorer.score(CANDS[:5], REFS[:5])
    with pytest.raises(DataError, match="2 candidates but 5 references"):
        scorer.score_prepared(["a", "b"], prepared)
    with pytest.raises(DataError, match="another model"):
        BertScorer(idf=True).score_prepared(CANDS[:5], prepared)


def test_cache_is_bounded_in_tokens():
    small = BertScorer(cache_tokens=8)  # each one-word sentence is 3 tokens with [CLS] and [SEP]
    small.score(["a", "b", "c"], ["one", "two", "three"])
    assert small._cached_tokens <= 8 and len(small._cache) == 2

import pytest

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.scoring import BertScorer


@pytest.fixture(scope="module")
def scorer():
    return BertScorer()


def test_identical_text_scores_one_and_related_beats_unrelated(scorer):
    ref = "We fine-tune a small language model with low-rank adapters and evaluate it on held-out abstracts."
    related = "We adapt a compact language model using LoRA adapters and test it on unseen abstracts."
    unrelated = "The recipe calls for two eggs, flour and a pinch of salt."
    s = scorer.score([ref, related, unrelated], [ref, ref, ref])
    assert s.f1[0] == pytest.approx(1.0, abs=1e-4)
    assert s.f1[1] > s.f1[2] + 0.1
    assert all(0 <= x <= 1.0001 for x in s.precision + s.recall)


def test_matches_bert_score_called_directly(scorer):
    import bert_score

    cands = ["a model learns to stop", "gradient accumulation trades memory for time"]
    refs = ["the model learns when to stop", "accumulating gradients saves memory"]
    p, r, f = bert_score.score(cands, refs, model_type=str(scorer.path), num_layers=6, lang="en")
    assert scorer.score(cands, refs).f1 == pytest.approx(f.tolist(), abs=1e-6)


def test_mismatched_lengths_and_missing_layer(tmp_path):
    with pytest.raises(DataError, match="2 candidates but 1 references"):
        BertScorer().score(["a", "b"], ["a"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="--scorer-layer"):
        BertScorer(tmp_path)

"""BERTScore with a local encoder (the embedded all-MiniLM-L6-v2 by default).

`BertScorer` loads the encoder once and scores many (candidate, reference) batches; `bert_score`
accepts a local directory as `model_type` as long as `num_layers` is given explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ConfigError, DataError
from toolkit.models import DEFAULT_SCORER, scorer_path


@dataclass
class Scores:
    """Per-example BERTScore precision, recall and F1."""

    precision: list[float]
    recall: list[float]
    f1: list[float]


@dataclass(frozen=True)
class PreparedReferences:
    """References embedded once by `BertScorer.prepare_references`, to score many candidate sets."""

    references: tuple[str, ...]
    embeddings: tuple  # per reference: (tokens x dim) unit-length token embeddings (torch.Tensor)
    weights: tuple  # per reference: float32 token weights (idf or 1, [CLS]/[SEP] 0), unnormalised
    idf: dict | None  # token id -> idf over these references (None without idf)
    scorer_key: tuple


class BertScorer:
    """BERTScore computed in process with an encoder loaded once, reusing reference embeddings.

    Same math, tokenisation and truncation as `bert_score` 0.3.13 (greedy cosine matching over the
    token embeddings of layer `layer`, [CLS]/[SEP] weighted 0, optional idf over the references,
    optional baseline rescaling); results equal `bert_score.score` to float rounding. Unlike it, the
    encoder stays loaded, a sentence seen recently (a reference scored against many candidate
    lists, a candidate repeated by a greedy trial) is not encoded again, and empty candidates score
    0 instead of crashing under transformers 5.

    Args:
        model: `minilm` (embedded) or a local HF encoder directory.
        layer: which hidden layer to use; required for a directory other than the embedded one.
        idf: weight tokens by inverse document frequency over the references.
        baseline: a bert_score baseline file for rescaling (off by default: local encoders ship none).
        batch_size: sentences per forward pass.
        cache_tokens: token embeddings kept for sentences already seen, references and candidates
            alike (least recently used dropped first; 1.5 KB each for MiniLM, so ~200 MB at most).
    """

    # bert_score matches pairs in chunks of 64 (its score() default, whatever the scorer's
    # batch_size); padding inside a chunk adds zero-similarity cells that the max can pick when
    # every real similarity is negative, so the chunking is kept for identical results
    MATCH_CHUNK = 64
    MAX_BATCH_TOKENS = 4096  # padded tokens per encoder pass (64 sentences of 64 tokens)

    def __init__(self, model: str | Path = DEFAULT_SCORER, layer: int | None = None, *, idf: bool = False,
                 baseline: str | Path | None = None, batch_size: int = 64, cache_tokens: int = 131_072):
        from collections import OrderedDict

        path, default_layer = scorer_path(model)
        self.layer = layer or default_layer
        if self.layer is None:
            raise ConfigError(f"scorer {model} needs an explicit layer", fix="pass --scorer-layer N (e.g. the encoder's last layer)")
        self.path = path
        self.idf = idf
        self.baseline = Path(baseline) if baseline else None
        self.batch_size = batch_size
        self.cache_tokens = cache_tokens
        self._tokenizer = None
        self._model = None
        self._baseline_vals = None
        self._cache: OrderedDict = OrderedDict()  # sentence -> (unit token embeddings, token ids)
        self._cached_tokens = 0
        self._idf_cache: OrderedDict = OrderedDict()  # tuple of references -> idf dict
        self.encoded_sentences = 0  # sentences run through the encoder so far (tests, benchmarks)
        self.encoder_calls = 0  # forward passes so far

    # -- loading ------------------------------------------------------------------------------

    def _load(self) -> None:
        """Tokenizer and encoder, loaded on first use and kept; layers above `layer` dropped."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        # bert_score loads the "slow" class (use_fast=False); keep the same for identical tokens
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), use_fast=False)
        model = AutoModel.from_pretrained(str(self.path))
        model.eval()
        if hasattr(model, "decoder") and hasattr(model, "encoder"):  # T5-style: keep the encoder
            model = model.encoder
        for owner, name in ((getattr(model, "encoder", None), "layer"), (getattr(model, "transformer", None), "layer"),
                            (model, "layers"), (model, "layer")):
            layers = getattr(owner, name, None) if owner is not None else None
            if isinstance(layers, torch.nn.ModuleList):
                if not 0 <= self.layer <= len(layers):
                    raise ConfigError(f"scorer layer {self.layer} is outside 0..{len(layers)} for {self.path}")
                setattr(owner, name, torch.nn.ModuleList(list(layers)[: self.layer]))
                break
        else:
            raise ConfigError(f"cannot find the layer stack of the encoder in {self.path}",
                              fix="use a BERT/RoBERTa-style encoder or --scorer minilm")
        self._model = model

    def _token_ids(self, sentence: str) -> list[int]:
        """bert_score's `sent_encode`: stripped, special tokens added, truncated to the model's
        maximum; an empty sentence is just [CLS] [SEP] (bert_score's own call for that case no
        longer exists in transformers 5, so it crashes; this keeps its intended result)."""
        from transformers import GPT2Tokenizer, RobertaTokenizer

        tok = self._tokenizer
        sentence = sentence.strip()
        if not sentence:
            return tok.encode("", add_special_tokens=True)
        extra = {"add_prefix_space": True} if isinstance(tok, (GPT2Tokenizer, RobertaTokenizer)) else {}
        return tok.encode(sentence, add_special_tokens=True, max_length=tok.model_max_length, truncation=True, **extra)

    # -- embedding ----------------------------------------------------------------------------

    def _embed(self, sentences: list[str]) -> dict[str, tuple]:
        """Unit-length token embeddings and token ids of each distinct sentence, in batches."""
        import torch

        if not sentences:
            return {}
        self._load()
        unique = list(dict.fromkeys(sentences))
        ids = {s: self._token_ids(s) for s in unique}
        order = sorted(unique, key=lambda s: len(ids[s]), reverse=True)  # similar lengths, less padding
        pad = self._tokenizer.pad_token_id or 0
        out: dict[str, tuple] = {}
        with torch.no_grad():
            for chunk in self._batches(order, ids):
                width = len(ids[chunk[0]])
                x = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, s in enumerate(chunk):
                    x[row, : len(ids[s])] = torch.tensor(ids[s])
                    mask[row, : len(ids[s])] = 1
                hidden = self._model(x, attention_mask=mask)[0]
                self.encoder_calls += 1
                self.encoded_sentences += len(chunk)
                for row, s in enumerate(chunk):
                    emb = hidden[row, : len(ids[s])]
                    out[s] = (emb / torch.norm(emb, dim=-1).unsqueeze(-1), ids[s])
        return out

    def _batches(self, order: list[str], ids: dict[str, list[int]]) -> list[list[str]]:
        """Consecutive runs of the length-sorted sentences: at most `batch_size` sentences and at
        most MAX_BATCH_TOKENS padded tokens, so one long text does not pad a whole batch to 512."""
        batches: list[list[str]] = []
        for s in order:
            if batches and len(batches[-1]) < self.batch_size and \
                    (len(batches[-1]) + 1) * len(ids[batches[-1][0]]) <= self.MAX_BATCH_TOKENS:
                batches[-1].append(s)
            else:
                batches.append([s])
        return batches

    def _cached_embed(self, sentences: list[str]) -> dict[str, tuple]:
        """Embeddings of `sentences`, encoding only those not seen recently. A sweep scores many
        candidate lists against the same references, and greedy trials repeat candidates too."""
        unique = list(dict.fromkeys(sentences))
        found = self._embed([s for s in unique if s not in self._cache])
        result = {}
        for s in unique:
            if s in found:
                self._cache[s] = found[s]
                self._cached_tokens += len(found[s][1])
            else:
                self._cache.move_to_end(s)
            result[s] = self._cache[s]
        while self._cached_tokens > self.cache_tokens and self._cache:
            _, (_, ids) = self._cache.popitem(last=False)
            self._cached_tokens -= len(ids)
        return result

    # -- weights ------------------------------------------------------------------------------

    def _idf_for(self, references: tuple[str, ...], ids: list[list[int]]) -> dict | None:
        """bert_score's idf: log((M+1)/(df+1)) over the M references; unseen tokens log(M+1)."""
        import math
        from collections import Counter

        if not self.idf:
            return None
        if references in self._idf_cache:
            self._idf_cache.move_to_end(references)
            return self._idf_cache[references]
        counts = Counter(t for one in ids for t in set(one))
        m = len(references)
        idf = {t: math.log((m + 1) / (c + 1)) for t, c in counts.items()}
        self._idf_cache[references] = idf
        while len(self._idf_cache) > 8:
            self._idf_cache.popitem(last=False)
        return idf

    def _weights(self, ids: list[int], idf: dict | None, unseen: float):
        import torch

        if idf is None:
            special = {self._tokenizer.cls_token_id, self._tokenizer.sep_token_id}
            return torch.tensor([0.0 if t in special else 1.0 for t in ids], dtype=torch.float)
        return torch.tensor([idf.get(t, unseen) for t in ids], dtype=torch.float)

    # -- scoring ------------------------------------------------------------------------------

    def prepare_references(self, references: list[str]) -> PreparedReferences:
        """Embed `references` once; score any number of candidate lists against them with
        `score_prepared`."""
        import math

        refs = tuple(references)
        embedded = self._cached_embed(list(refs)) if refs else {}
        ids = [embedded[r][1] for r in refs]
        idf = self._idf_for(refs, ids)
        unseen = math.log(len(refs) + 1)
        return PreparedReferences(refs, tuple(embedded[r][0] for r in refs),
                                  tuple(self._weights(i, idf, unseen) for i in ids), idf, self._key())

    def score_prepared(self, candidates: list[str], prepared: PreparedReferences) -> Scores:
        """Score candidate i against prepared reference i; only unseen candidates are encoded."""
        import math

        import torch

        if prepared.scorer_key != self._key():
            raise DataError("these references were prepared by a scorer with another model, layer or idf setting")
        if len(candidates) != len(prepared.references):
            raise DataError(f"{len(candidates)} candidates but {len(prepared.references)} references")
        if not candidates:
            return Scores([], [], [])
        embedded = self._cached_embed(list(candidates))
        unseen = math.log(len(prepared.references) + 1)
        hyp_w = [self._weights(embedded[c][1], prepared.idf, unseen) for c in candidates]
        preds = []
        for start in range(0, len(candidates), self.MATCH_CHUNK):
            end = start + self.MATCH_CHUNK
            preds.append(self._greedy_match([embedded[c][0] for c in candidates[start:end]], hyp_w[start:end],
                                            list(prepared.embeddings[start:end]), list(prepared.weights[start:end])))
        scores = torch.cat(preds, dim=0)
        if self.baseline is not None:
            base = self._baseline()
            scores = (scores - base) / (1 - base)
        return Scores(scores[:, 0].tolist(), scores[:, 1].tolist(), scores[:, 2].tolist())

    def score(self, candidates: list[str], references: list[str]) -> Scores:
        """Score each candidate against its reference (reference embeddings are cached)."""
        if len(candidates) != len(references):
            raise DataError(f"{len(candidates)} candidates but {len(references)} references")
        if not candidates:
            return Scores([], [], [])
        return self.score_prepared(list(candidates), self.prepare_references(list(references)))

    @staticmethod
    def _greedy_match(hyp: list, hyp_w: list, ref: list, ref_w: list):
        """bert_score's `greedy_cos_idf` on one chunk of pairs: (pairs x 3) precision, recall, F1."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        def padded(embs, weights):
            lens = torch.tensor([e.size(0) for e in embs])
            mask = (torch.arange(int(lens.max())).expand(len(embs), -1) < lens.unsqueeze(1)).float()
            return pad_sequence(embs, batch_first=True), mask, pad_sequence(weights, batch_first=True)

        hyp_e, hyp_m, hyp_i = padded(hyp, hyp_w)
        ref_e, ref_m, ref_i = padded(ref, ref_w)
        sim = torch.bmm(hyp_e, ref_e.transpose(1, 2)) * torch.bmm(hyp_m.unsqueeze(2), ref_m.unsqueeze(1))
        hyp_i = hyp_i / hyp_i.sum(dim=1, keepdim=True)
        ref_i = ref_i / ref_i.sum(dim=1, keepdim=True)
        p = (sim.max(dim=2)[0] * hyp_i).sum(dim=1)
        r = (sim.max(dim=1)[0] * ref_i).sum(dim=1)
        f = 2 * p * r / (p + r)
        # only [CLS] [SEP]: an empty sentence scores 0, as bert_score does
        empty = hyp_m.sum(dim=1).eq(2) | ref_m.sum(dim=1).eq(2)
        p, r = p.masked_fill(empty, 0.0), r.masked_fill(empty, 0.0)
        return torch.stack((p, r, f.masked_fill(torch.isnan(f), 0.0)), dim=-1)

    def _baseline(self):
        """bert_score's rescaling baseline: row `layer` of the file, P/R/F columns, as float32."""
        import csv

        import torch

        if self._baseline_vals is None:
            with open(self.baseline, newline="") as fh:
                rows = [r for r in csv.reader(fh)][1:]
            if not 0 <= self.layer < len(rows):
                raise ConfigError(f"baseline {self.baseline} has no row for layer {self.layer}")
            self._baseline_vals = torch.tensor([float(v) for v in rows[self.layer][1:4]], dtype=torch.float64).float()
        return self._baseline_vals

    def _key(self) -> tuple:
        return (str(self.path), self.layer, self.idf)

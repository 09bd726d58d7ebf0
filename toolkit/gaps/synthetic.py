"""A seeded generator of arXiv-format abstracts with known topics, trends and one planted gap.

Ten topics, each a word distribution (its own terms, a share of words from its family, general
research words), over the years `start`..`end`:

* `protein` and `drug` (family: biology) grow every year and share a few words, but no paper
  combines them until after `planted_after`; then a bridge topic mixing both appears. This is the
  planted gap: near in meaning, unbridged, both sides growing.
* `rl`/`robotics`, `speech`/`translation`, `galaxy`/`cosmology` share more of their family's words
  (so they are the most similar pairs) and are bridged by mixed papers at a steady rate in every
  year: similar, but already explored.
* `quantum` and `graphs` are the largest topics (the size-product baseline's favourites), flat.

Used by the backtest test, `bench/gaps.py` and anyone wanting a demo corpus.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from toolkit.io import write_jsonl

GENERAL = ("method approach results propose show study analysis performance novel framework experiments demonstrate "
           "model data evaluate improve based using new efficient robust accurate large scale").split()
FAMILIES = {
    "biology": "biological cell biochemical molecular organism laboratory".split(),
    "control": "autonomous decision sequential planning simulation controller".split(),
    "language": "linguistic token vocabulary recognition spoken text".split(),
    "astro": "astrophysical gravitational observation sky cosmological astronomy".split(),
}
TOPICS = {
    "protein": ("biology", "protein folding residue amino structure backbone conformation peptide chain tertiary fold enzyme"),
    "drug": ("biology", "ligand compound docking drug pharmacology toxicity inhibitor screening affinity candidate synthesis assay"),
    "rl": ("control", "agent reward policy environment exploration action episode bandit return trajectory value critic"),
    "robotics": ("control", "robot manipulator gripper locomotion actuator motion grasp torque joint legged arm servo"),
    "speech": ("language", "speech acoustic phoneme speaker audio utterance transcription prosody waveform spectrogram asr voice"),
    "translation": ("language", "translation bilingual parallel corpus sentence source target decoder multilingual alignment bleu lexicon"),
    "galaxy": ("astro", "galaxy stellar redshift halo luminosity star cosmic telescope survey spiral nebula dwarf"),
    "cosmology": ("astro", "cosmology inflation dark matter universe background microwave expansion primordial perturbation energy baryon"),
    "quantum": (None, "qubit quantum entanglement gate circuit decoherence superconducting fidelity photon ion spin hamiltonian"),
    "graphs": (None, "graph vertex edge chromatic coloring planar subgraph bipartite matching combinatorial clique tree"),
}
PLANTED = ("protein", "drug")
EXPLORED = (("rl", "robotics"), ("speech", "translation"), ("galaxy", "cosmology"))


def _per_year(topic: str, year: int, start: int) -> float:
    t = year - start
    if topic in PLANTED:
        return 12 + 4 * t  # growing
    if topic in ("quantum", "graphs"):
        return 60
    return 20


def _words(rng: np.random.Generator, topics: list[str], n: int) -> list[str]:
    """`n` words: 55% from the topic(s), a family share (10% biology, 20% others), the rest general."""
    out = []
    for _ in range(n):
        topic = topics[rng.integers(len(topics))]
        family, own = TOPICS[topic]
        own_words = own.split()
        fam_share = 0.10 if family == "biology" else 0.20 if family else 0.0
        u = rng.random()
        if u < 0.55:
            pool = own_words
        elif u < 0.55 + fam_share:
            pool = FAMILIES[family]
        else:
            pool = GENERAL
        weights = 1 / np.arange(1, len(pool) + 1)  # Zipf-like: a few words dominate each pool
        out.append(pool[rng.choice(len(pool), p=weights / weights.sum())])
    return out


_DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def generate(seed: int = 0, start: int = 2015, end: int = 2024, planted_after: int = 2021, scale: float = 1.0,
             bridge_per_year: int = 25, mixed_per_year: int = 4) -> list[dict]:
    """Records in the Kaggle arXiv format (id, title, abstract, categories, versions, update_date),
    each with its generating `topics` (one, or the two it mixes)."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    serial: dict[str, int] = {}

    def add(year: int, topics: list[str]) -> None:
        month = int(rng.integers(1, 13))
        yymm = f"{year % 100:02d}{month:02d}"
        serial[yymm] = serial.get(yymm, 0) + 1
        title = " ".join(_words(rng, topics, 7)).capitalize()
        abstract = " ".join(_words(rng, topics, int(rng.integers(45, 70)))).capitalize() + "."
        day = _DAYS[dt.date(year, month, 15).weekday()]
        created = f"{day}, 15 {_MONTHS[month - 1]} {year} 10:00:00 GMT"  # the form of Kaggle's `versions` (no locale)
        rows.append({"id": f"{yymm}.{serial[yymm]:05d}", "title": title, "abstract": abstract,
                     "categories": "cs.LG", "versions": [{"version": "v1", "created": created}],
                     "update_date": f"{year}-{month:02d}-15", "topics": topics})

    for year in range(start, end + 1):
        for topic in TOPICS:
            for _ in range(max(1, round(_per_year(topic, year, start) * scale))):
                add(year, [topic])
        for pair in EXPLORED:
            for _ in range(max(1, round(mixed_per_year * scale))):
                add(year, list(pair))
        if year > planted_after:
            for _ in range(max(1, round(bridge_per_year * scale))):
                add(year, list(PLANTED))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def write_corpus(path: Path, **kwargs) -> Path:
    """Write `generate(**kwargs)` as JSON Lines (the `topics` field kept, for checking)."""
    return write_jsonl(path, generate(**kwargs))


if __name__ == "__main__":  # python -m toolkit.gaps.synthetic OUT.jsonl [--scale S] [--planted-after YEAR] [--seed N]
    import argparse

    ap = argparse.ArgumentParser(description="Write a synthetic arXiv-format corpus with one planted gap.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=float, default=1.0, help="papers per topic and year, as a multiple of the defaults")
    ap.add_argument("--planted-after", type=int, default=2021, help="the planted bridge appears after this year")
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args()
    write_corpus(ns.out, scale=ns.scale, planted_after=ns.planted_after, seed=ns.seed)
    print(f"wrote {ns.out}")

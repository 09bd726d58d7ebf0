"""Blind human ratings of two systems' answers, kept in SQLite inside the compare folder.

`ratings.sqlite` holds two tables. `pairs` is the plan: which prompts a pair of systems is rated on,
in which order, which system is shown as "A" (random but fixed per pair, seeded), and the texts as
they were shown. `ratings` holds one row per rating (rater, pair, shown order, choice, time); every
rating is committed on its own, so closing the browser or killing the server loses nothing, and a
rater continues at the first pair of the plan they have not rated.

`toolkit rate` (rate.py) serves the page over this store; `toolkit compare` reads it back (human.py).
The connection, the refusals and the decision times are the review-page base's (review_base.py).
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from pathlib import Path

from toolkit.errors import ConfigError
from toolkit.evaluate.metrics import PRIMARY
from toolkit.evaluate.review_base import AlreadyDecided, BadDecision, UnknownItem, connect, now
from toolkit.evaluate.stats import paired

DB_NAME = "ratings.sqlite"
CHOICES = ("A", "tie", "B", "unusable")  # keys 1-4 on the page, in this order
MIN_PAIRS, MAX_PAIRS = 20, 40  # the default plan size stays in what a person rates in ~20 minutes
STRATA = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    pair_id TEXT PRIMARY KEY,
    system_1 TEXT NOT NULL,
    system_2 TEXT NOT NULL,
    position INTEGER NOT NULL,
    example_id TEXT NOT NULL,
    shown_a TEXT NOT NULL,
    prompt TEXT NOT NULL,
    reference TEXT NOT NULL,
    text_1 TEXT NOT NULL,
    text_2 TEXT NOT NULL,
    UNIQUE (system_1, system_2, position)
);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater TEXT NOT NULL,
    pair_id TEXT NOT NULL REFERENCES pairs (pair_id),
    shown_a TEXT NOT NULL,
    shown_b TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'tie', 'B', 'unusable')),
    rated_at TEXT NOT NULL,
    UNIQUE (rater, pair_id)
);
"""


def pair_id(system_1: str, system_2: str, example_id: str) -> str:
    """A short id that names neither system (the page is blind)."""
    return hashlib.sha256(f"{system_1}\0{system_2}\0{example_id}".encode()).hexdigest()[:12]


def check_rater(rater) -> str:
    name = rater.strip() if isinstance(rater, str) else ""
    if not name or len(name) > 60:
        raise BadDecision("a rater name is 1 to 60 characters", fix="type your name on the page")
    return name


class RatingStore:
    """The plan and the ratings of one compare folder. A connection per call: the web server calls
    from several threads, and SQLite serialises the writes."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / DB_NAME
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self):
        return connect(self.path, rows=True)

    # -- the plan -----------------------------------------------------------------------------

    def plan(self, system_1: str, system_2: str) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM pairs WHERE system_1 = ? AND system_2 = ? ORDER BY position",
                              (system_1, system_2)).fetchall()
        return [dict(r) for r in rows]

    def save_plan(self, rows: list[dict]) -> None:
        cols = ("pair_id", "system_1", "system_2", "position", "example_id", "shown_a", "prompt", "reference", "text_1", "text_2")
        with self._connect() as db:
            db.executemany(f"INSERT INTO pairs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           [tuple(r[c] for c in cols) for r in rows])

    # -- ratings ------------------------------------------------------------------------------

    def rate(self, rater: str, pid: str, choice: str) -> dict:
        """Store one rating; refuses (changing nothing) an unknown pair, a choice not among the
        four, and a pair this rater already rated."""
        rater = check_rater(rater)
        if choice not in CHOICES:
            raise BadDecision(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
        with self._connect() as db:
            pair = db.execute("SELECT * FROM pairs WHERE pair_id = ?", (pid,)).fetchone()
            if pair is None:
                raise UnknownItem(f"no pair {pid!r} in this plan")
            shown_b = pair["system_2"] if pair["shown_a"] == pair["system_1"] else pair["system_1"]
            row = (rater, pid, pair["shown_a"], shown_b, choice, now())
            try:
                db.execute("INSERT INTO ratings (rater, pair_id, shown_a, shown_b, choice, rated_at) VALUES (?, ?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                raise AlreadyDecided(f"{rater} already rated pair {pid}", fix="undo the last rating to change it") from None
        return dict(zip(("rater", "pair_id", "shown_a", "shown_b", "choice", "rated_at"), row))

    def undo(self, rater: str, system_1: str, system_2: str) -> str:
        """Delete this rater's latest rating in the plan; returns its pair id."""
        rater = check_rater(rater)
        with self._connect() as db:
            last = db.execute("SELECT r.id, r.pair_id FROM ratings r JOIN pairs p USING (pair_id) WHERE r.rater = ? "
                              "AND p.system_1 = ? AND p.system_2 = ? ORDER BY r.id DESC LIMIT 1", (rater, system_1, system_2)).fetchone()
            if last is None:
                raise AlreadyDecided(f"{rater} has no rating to undo")
            db.execute("DELETE FROM ratings WHERE id = ?", (last["id"],))
        return last["pair_id"]

    def rated(self, rater: str) -> set[str]:
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT pair_id FROM ratings WHERE rater = ?", (rater,))}

    def ratings(self) -> list[dict]:
        """Every rating with its pair, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT r.*, p.system_1, p.system_2, p.example_id, p.text_1, p.text_2 "
                              "FROM ratings r JOIN pairs p USING (pair_id) ORDER BY r.id").fetchall()
        return [dict(r) for r in rows]


def choose_systems(result: dict, systems: list[str]) -> tuple[str, str]:
    labels = [s["label"] for s in result["systems"]]
    chosen = list(systems) or labels[:2]
    if len(chosen) != 2 or chosen[0] == chosen[1]:
        raise ConfigError(f"rating compares two different systems, got {chosen}", fix=f"pass --systems A B from: {', '.join(labels)}")
    missing = [s for s in chosen if s not in labels]
    if missing:
        raise ConfigError(f"system {missing[0]!r} is not in this comparison", fix=f"pick from: {', '.join(labels)}")
    return chosen[0], chosen[1]


def default_size(result: dict, system_1: str, system_2: str) -> int:
    """Compare's estimate of the prompts needed to detect the two systems' difference on the
    headline metric (`PRIMARY`, BERTScore F1), kept between 20 and 40 (and to the prompts there are)."""
    scores = [[ex["outputs"][s][PRIMARY] for ex in result["per_example"]] for s in (system_1, system_2)]
    needed = paired(scores[0], scores[1]).prompts_needed or MAX_PAIRS
    return min(max(needed, MIN_PAIRS), MAX_PAIRS, len(result["per_example"]))


def make_plan(result: dict, system_1: str, system_2: str, size: int, seed: int) -> list[dict]:
    """A stratified, seeded sample of `size` prompts: the prompts are sorted by the headline
    metric's (`PRIMARY`, BERTScore F1) difference between the systems and cut into strata, each sampled in proportion, so the humans
    see prompts where the metric favours either side and where it sees no difference."""
    examples = result["per_example"]
    size = min(size, len(examples))
    rng = random.Random(f"{seed}\0{system_1}\0{system_2}")
    order = sorted(range(len(examples)),
                   key=lambda i: examples[i]["outputs"][system_2][PRIMARY] - examples[i]["outputs"][system_1][PRIMARY])
    strata = [order[k * len(order) // STRATA:(k + 1) * len(order) // STRATA] for k in range(STRATA)]
    quotas = [size * len(s) // len(order) for s in strata]
    for k in sorted(range(STRATA), key=lambda k: -(size * len(strata[k]) % len(order)))[: size - sum(quotas)]:
        quotas[k] += 1  # largest remainders get the pairs left over
    chosen = [i for stratum, quota in zip(strata, quotas) for i in rng.sample(stratum, quota)]
    rng.shuffle(chosen)
    rows = []
    for position, i in enumerate(chosen):
        ex = examples[i]
        rows.append({"pair_id": pair_id(system_1, system_2, ex["id"]), "system_1": system_1, "system_2": system_2,
                     "position": position, "example_id": ex["id"], "shown_a": rng.choice((system_1, system_2)),
                     "prompt": ex["prompt"], "reference": ex["reference"],
                     "text_1": ex["outputs"][system_1]["text"], "text_2": ex["outputs"][system_2]["text"]})
    return rows

"""`toolkit data synth --review`: a person accepts or rejects each kept pair in the browser.

The review-page base (evaluate/review_base.py, as `toolkit rate` uses it: Starlette on uvicorn,
SQLite, one decision committed per request, keys, undo, refused requests change nothing) over
OUT/review.sqlite: the pairs as they were shown, keyed by a hash of their text (a regenerated pair
is a new item), and one decision per pair. Stop any time (Ctrl-C: the command stops, writing
nothing): re-running it resumes at the first undecided pair. With every pair decided, "Write the
dataset" stops the server and the command writes the accepted pairs.

    GET  /api/state                        progress and the next undecided pair
    POST /api/decide {item_id, decision}   decision: accept or reject
    POST /api/undo                         delete the latest decision
    POST /api/finish                       stop reviewing (only once every pair is decided)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from toolkit.errors import DataError
from toolkit.evaluate.review_base import AlreadyDecided, BadDecision, UnknownItem, connect, now, page_url, progress, serve
from toolkit.evaluate.review_base import build_app as page_app

PAGE = Path(__file__).with_name("review_page.html")
DB_NAME = "review.sqlite"
DECISIONS = ("accept", "reject")  # keys 1 and 2 on the page (also A and R)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (item_id TEXT PRIMARY KEY, question TEXT NOT NULL, answer TEXT NOT NULL, seed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE REFERENCES items (item_id),
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject')),
    decided_at TEXT NOT NULL
);
"""


def item_id(row: dict) -> str:
    return hashlib.sha256(f"{row['question']}\0{row['answer']}".encode()).hexdigest()[:12]


class ReviewStore:
    """This run's pairs, in order, and the decisions on them (a connection per call: the server is threaded)."""

    def __init__(self, folder: Path, rows: list[dict]):
        self.path = Path(folder) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.items = [{"item_id": item_id(r), "question": r["question"], "answer": r["answer"], "row_id": r["id"],
                       "seed": json.dumps(r.get("seed_item", {}), ensure_ascii=False)} for r in rows]
        with self._connect() as db:
            db.executescript(_SCHEMA)
            db.executemany("INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?)",
                           [(i["item_id"], i["question"], i["answer"], i["seed"]) for i in self.items])

    def _connect(self):
        return connect(self.path)

    def decisions(self) -> dict[str, str]:
        """item id -> decision, for this run's items."""
        ids = {i["item_id"] for i in self.items}
        with self._connect() as db:
            return {k: d for k, d in db.execute("SELECT item_id, decision FROM decisions") if k in ids}

    def state(self) -> dict:
        decided = self.decisions()
        done, nxt = progress(self.items, "item_id", decided)
        state = {"total": len(self.items), "done": done, "accepted": sum(d == "accept" for d in decided.values()), "item": None}
        if nxt is not None:
            state["item"] = {"item_id": nxt["item_id"], "position": done + 1, "question": nxt["question"],
                             "answer": nxt["answer"], "seed": json.loads(nxt["seed"])}
        return state

    def decide(self, iid, decision) -> None:
        """Store one decision; refuses (changing nothing) an unknown item, a decision not among the two, a decided item."""
        if decision not in DECISIONS:
            raise BadDecision(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        if not isinstance(iid, str) or iid not in {i["item_id"] for i in self.items}:
            raise UnknownItem(f"no pair {iid!r} in this review")
        with self._connect() as db:
            try:
                db.execute("INSERT INTO decisions (item_id, decision, decided_at) VALUES (?, ?, ?)",
                           (iid, decision, now()))
            except sqlite3.IntegrityError:
                raise AlreadyDecided(f"pair {iid} is already decided", fix="undo the last decision to change it") from None

    def undo(self) -> None:
        ids = [i["item_id"] for i in self.items]
        with self._connect() as db:
            marks = ",".join("?" * len(ids))
            last = db.execute(f"SELECT id FROM decisions WHERE item_id IN ({marks}) ORDER BY id DESC LIMIT 1", ids).fetchone()
            if last is None:
                raise AlreadyDecided("no decision to undo")
            db.execute("DELETE FROM decisions WHERE id = ?", (last[0],))


def build_app(store: ReviewStore, on_finish=lambda: None):
    """The Starlette application: the page and its JSON API (the review-page base's, with these actions)."""

    def decide(data: dict) -> dict:
        store.decide(data.get("item_id"), data.get("decision"))
        return store.state()

    def undo(data: dict) -> dict:
        store.undo()
        return store.state()

    def finish(data: dict) -> dict:
        current = store.state()
        if current["item"] is not None:
            raise BadDecision(f"{current['total'] - current['done']} pairs are not decided yet")
        on_finish()
        return current | {"finished": True}

    return page_app(PAGE, lambda query: store.state(), {"decide": decide, "undo": undo, "finish": finish})


def review(rows: list[dict], folder: Path, host: str, port: int, open_page: bool) -> dict[str, bool]:
    """Serve the review page until every pair is decided and the reviewer finishes; row id -> accepted.
    A review stopped early (Ctrl-C) is kept in OUT/review.sqlite and raises, so nothing is written."""
    from toolkit.console import err

    store = ReviewStore(folder, rows)
    state = store.state()
    if state["item"] is None:  # decided in an earlier run: nothing to show
        return _accepted(store)
    err.print(f"review {state['total']} pairs ({state['done']} decided) at {page_url(host, port)}; decisions are saved as you go in "
              f"{store.path}; Ctrl-C stops, and re-running the command continues")
    serve(lambda stop: build_app(store, on_finish=stop), host, port, open_page)
    left = store.state()
    if left["item"] is not None:
        raise DataError(f"review stopped at {left['done']} of {left['total']} pairs: nothing written", path=store.path,
                        fix="re-run the same command to continue where you stopped")
    return _accepted(store)


def _accepted(store: ReviewStore) -> dict[str, bool]:
    decided = store.decisions()
    return {i["row_id"]: decided[i["item_id"]] == "accept" for i in store.items}

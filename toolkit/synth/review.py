"""`toolkit data synth --review`: a person accepts or rejects each kept pair in the browser.

The rating page's web stack (evaluate/rate.py: Starlette on uvicorn, SQLite, one decision
committed per request, keys, undo, refused requests change nothing) over OUT/review.sqlite: the
pairs as they were shown, keyed by a hash of their text (a regenerated pair is a new item), and one
decision per pair. Stop any time: re-running the command resumes at the first undecided pair. With
every pair decided, "Write the dataset" stops the server and the command writes the accepted pairs.

    GET  /api/state                        progress and the next undecided pair
    POST /api/decide {item_id, decision}   decision: accept or reject
    POST /api/undo                         delete the latest decision
    POST /api/finish                       stop reviewing (only once every pair is decided)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.ratings import AlreadyRated, BadChoice, RatingError, UnknownPair

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

    @contextlib.contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA foreign_keys = ON")
        try:
            with db:
                yield db
        finally:
            db.close()

    def decisions(self) -> dict[str, str]:
        """item id -> decision, for this run's items."""
        ids = {i["item_id"] for i in self.items}
        with self._connect() as db:
            return {k: d for k, d in db.execute("SELECT item_id, decision FROM decisions") if k in ids}

    def state(self) -> dict:
        decided = self.decisions()
        nxt = next((i for i in self.items if i["item_id"] not in decided), None)
        state = {"total": len(self.items), "done": len(decided), "accepted": sum(d == "accept" for d in decided.values()), "item": None}
        if nxt is not None:
            state["item"] = {"item_id": nxt["item_id"], "position": len(decided) + 1, "question": nxt["question"],
                             "answer": nxt["answer"], "seed": json.loads(nxt["seed"])}
        return state

    def decide(self, iid, decision) -> None:
        """Store one decision; refuses (changing nothing) an unknown item, a decision not among the two, a decided item."""
        if decision not in DECISIONS:
            raise BadChoice(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        if not isinstance(iid, str) or iid not in {i["item_id"] for i in self.items}:
            raise UnknownPair(f"no pair {iid!r} in this review")
        with self._connect() as db:
            try:
                db.execute("INSERT INTO decisions (item_id, decision, decided_at) VALUES (?, ?, ?)",
                           (iid, decision, datetime.now(timezone.utc).isoformat(timespec="seconds")))
            except sqlite3.IntegrityError:
                raise AlreadyRated(f"pair {iid} is already decided", fix="undo the last decision to change it") from None

    def undo(self) -> None:
        ids = [i["item_id"] for i in self.items]
        with self._connect() as db:
            marks = ",".join("?" * len(ids))
            last = db.execute(f"SELECT id FROM decisions WHERE item_id IN ({marks}) ORDER BY id DESC LIMIT 1", ids).fetchone()
            if last is None:
                raise AlreadyRated("no decision to undo")
            db.execute("DELETE FROM decisions WHERE id = ?", (last[0],))


def build_app(store: ReviewStore, on_finish=lambda: None):
    """The Starlette application: the page and its JSON API."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    async def body(request) -> dict:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise RatingError(f"the request body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RatingError("the request body must be a JSON object")
        return data

    def guarded(handler):
        async def endpoint(request):
            try:
                return JSONResponse(await handler(request))
            except RatingError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return endpoint

    async def page(request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    async def state(request):
        return store.state()

    async def decide(request):
        data = await body(request)
        store.decide(data.get("item_id"), data.get("decision"))
        return store.state()

    async def undo(request):
        store.undo()
        return store.state()

    async def finish(request):
        current = store.state()
        if current["item"] is not None:
            raise BadChoice(f"{current['total'] - current['done']} pairs are not decided yet")
        on_finish()
        return current | {"finished": True}

    async def not_found(request, exc):
        return JSONResponse({"error": f"no such page: {request.url.path}"}, status_code=404)

    routes = [Route("/", page), Route("/api/state", guarded(state)), Route("/api/decide", guarded(decide), methods=["POST"]),
              Route("/api/undo", guarded(undo), methods=["POST"]), Route("/api/finish", guarded(finish), methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={404: not_found})


def review(rows: list[dict], folder: Path, host: str, port: int, open_page: bool) -> dict[str, bool]:
    """Serve the review page until every pair is decided and the reviewer finishes; row id -> accepted.
    A review stopped early (Ctrl-C) is kept in OUT/review.sqlite and raises, so nothing is written."""
    import threading
    import webbrowser

    import uvicorn

    from toolkit.console import err

    store = ReviewStore(folder, rows)
    if store.state()["item"] is None:  # decided in an earlier run: nothing to show
        return _accepted(store)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    servers: list = []  # the finish route stops the server that serves it
    app = build_app(store, on_finish=lambda: setattr(servers[0], "should_exit", True))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    servers.append(server)
    state = store.state()
    err.print(f"review {state['total']} pairs ({state['done']} decided) at {url}; decisions are saved as you go in {store.path}; "
              "Ctrl-C stops, and re-running the command continues")
    if open_page and not os.environ.get("CI") and not os.environ.get("PYTEST_CURRENT_TEST"):
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        raise ConfigError(f"cannot listen on {host}:{port}", fix="pick another --port") from exc
    left = store.state()
    if left["item"] is not None:
        raise DataError(f"review stopped at {left['done']} of {left['total']} pairs: nothing written", path=store.path,
                        fix="re-run the same command to continue where you stopped")
    return _accepted(store)


def _accepted(store: ReviewStore) -> dict[str, bool]:
    decided = store.decisions()
    return {i["row_id"]: decided[i["item_id"]] == "accept" for i in store.items}

"""`toolkit rate COMPARE_DIR`: rate two systems' answers blind, in the browser, one pair at a time.

The review-page base (review_base.py: Starlette on uvicorn, SQLite, one decision committed per
request, keys, undo, resume) serves one page (rate_page.html) and a JSON API over the ratings store
(ratings.py):

    GET  /api/state?rater=NAME        progress and the next pair for this rater (systems hidden)
    POST /api/rate  {rater, pair_id, choice}   choice: A, tie, B or unusable
    POST /api/undo  {rater}                    delete this rater's latest rating

A request the store refuses (unknown pair, a choice not among the four, a pair already rated, no
rating to undo) gets a 4xx with a message and changes nothing. `toolkit compare` re-run on the same
folder adds the human result to its report.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.ratings import RatingStore, check_rater, choose_systems, default_size, make_plan
from toolkit.evaluate.review_base import UnknownItem, page_url, progress, serve
from toolkit.evaluate.review_base import build_app as page_app

PAGE = Path(__file__).with_name("rate_page.html")


class Session:
    """The plan being rated (a pair of systems) and its store."""

    def __init__(self, store: RatingStore, system_1: str, system_2: str):
        self.store = store
        self.system_1, self.system_2 = system_1, system_2
        self.pairs = store.plan(system_1, system_2)

    def state(self, rater: str) -> dict:
        """Progress and the first pair of the plan this rater has not rated (None at the end)."""
        done, nxt = progress(self.pairs, "pair_id", self.store.rated(rater))
        state = {"rater": rater, "total": len(self.pairs), "done": done, "pair": None}
        if nxt is not None:
            first, second = (nxt["text_1"], nxt["text_2"]) if nxt["shown_a"] == self.system_1 else (nxt["text_2"], nxt["text_1"])
            state["pair"] = {"pair_id": nxt["pair_id"], "position": done + 1, "prompt": nxt["prompt"],
                             "reference": nxt["reference"], "a": first, "b": second}
        return state


def build_app(session: Session):
    """The Starlette application: the page and its JSON API (the review-page base's, with these actions)."""

    def state(query: dict) -> dict:
        return session.state(check_rater(query.get("rater")))

    def rate(data: dict) -> dict:
        rater = check_rater(data.get("rater"))
        pid = data.get("pair_id")
        if not isinstance(pid, str) or pid not in {p["pair_id"] for p in session.pairs}:
            raise UnknownItem(f"no pair {pid!r} in this plan")
        session.store.rate(rater, pid, data.get("choice"))
        return session.state(rater)

    def undo(data: dict) -> dict:
        rater = check_rater(data.get("rater"))
        session.store.undo(rater, session.system_1, session.system_2)
        return session.state(rater)

    return page_app(PAGE, state, {"rate": rate, "undo": undo})


def open_session(compare_dir: Path, systems: list[str], pairs: int, seed: int) -> Session:
    """The stored plan for these two systems, or a new one drawn from compare's results."""
    from toolkit.console import err

    results = Path(compare_dir) / "results.json"
    if not results.is_file():
        raise DataError("no results.json here: not a compare folder", path=compare_dir,
                        fix="run `toolkit compare --out DIR` first, then `toolkit rate DIR`")
    result = json.loads(results.read_text(encoding="utf-8"))
    system_1, system_2 = choose_systems(result, systems)
    if pairs < 0:
        raise ConfigError(f"--pairs {pairs} is negative", fix="pass a number of pairs, or 0 for the default")
    store = RatingStore(Path(compare_dir))
    session = Session(store, system_1, system_2)
    if session.pairs:
        if pairs and pairs != len(session.pairs):
            err.print(f"continuing the stored plan of {len(session.pairs)} pairs for {system_1} vs {system_2} (--pairs {pairs} ignored)")
        return session
    store.save_plan(make_plan(result, system_1, system_2, pairs or default_size(result, system_1, system_2), seed))
    return Session(store, system_1, system_2)


def rate(compare_dir: Path, systems: list[str] | None = None, pairs: int = 0, host: str = "127.0.0.1", port: int = 8766,
         open: bool = True, seed: int = 0) -> int:
    """Rate two systems' answers blind in the browser; `toolkit compare --again --out DIR` reports the result.

    Each screen shows a prompt (the reference behind a toggle) and the two systems' answers as A
    and B in a random order fixed per pair, names hidden. Choose A better / tie / B better / both
    unusable by click or keys 1-4; undo the last. Ratings are saved in COMPARE_DIR/ratings.sqlite
    as they are made: stop any time, and re-opening continues where you stopped. Two raters can
    rate the same pairs (each types their name once); their agreement is reported.

    Args:
        compare_dir: a folder written by `toolkit compare` (it holds results.json).
        systems: the two system labels to rate (default: the first two of the comparison).
        pairs: how many prompts to rate (0 = compare's estimate of the prompts needed, 20 to 40);
            drawn once, stratified by the BERTScore difference, then kept.
        host: address to listen on; only 127.0.0.1 keeps the page on this machine (the page has no login).
        port: port to listen on.
        open: open the page in the browser (never under CI).
        seed: seeds which prompts are drawn and which answer is shown as A.
    """
    from toolkit.console import err

    session = open_session(Path(compare_dir), list(systems or []), pairs, seed)
    err.print(f"rating {session.system_1} vs {session.system_2} on {len(session.pairs)} prompts at {page_url(host, port)}\n"
              f"ratings are saved as you go in {session.store.path}; press Ctrl-C to stop; "
              f"then `toolkit compare --again --out {compare_dir}` adds them to the report")
    serve(lambda stop: build_app(session), host, port, open)
    return 0

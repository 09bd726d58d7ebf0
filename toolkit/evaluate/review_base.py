"""The review-page base: a person works through a fixed list of items on a local page, one decision
per request, kept in SQLite.

`toolkit rate` (rate.py + ratings.py: blind pairwise ratings) and `toolkit data synth --review`
(synth/review.py: accept or reject each pair) are built on it; each supplies only what differs, its
items, its buttons and keys, what it stores:

- the store: a connection per call (`connect`), each decision committed as it is made, so a killed
  server loses nothing and the page resumes at the first item without a decision (`progress`);
- the API (`build_app`): the page at `/`, `GET /api/state` and one `POST /api/<action>` per action,
  each answering with the new state; a request the store refuses raises a `Refused` (its `status` is
  the HTTP status) and gets `{"error": message}`, changing nothing;
- the page (`page_html`): `{{review_base.css}}` and `{{review_base.js}}` in a page's HTML are
  replaced by the shared style and script (one request at a time, screens, progress, keys, undo);
- the server (`serve`): uvicorn on host:port until Ctrl-C or the page's `stop`, the browser opened
  unless under CI, a warning when other machines can reach the page (it has no login).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, ToolkitError

HERE = Path(__file__).parent
SHARED = ("review_base.css", "review_base.js")  # inlined into each page: it loads nothing from outside
LOCAL = ("127.0.0.1", "localhost", "::1")

Action = Callable[[dict], dict]  # the request's JSON object (GET: its query parameters) -> the new state


class Refused(ToolkitError):
    """A request the store refuses; `status` is the HTTP status the page's API answers with."""

    status = 400


class UnknownItem(Refused):
    status = 404


class AlreadyDecided(Refused):
    status = 409


class BadDecision(Refused):
    status = 422


@contextlib.contextmanager
def connect(path: Path, rows: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection for one call (the server calls from several threads; SQLite serialises the
    writes): foreign keys enforced, committed on success, rolled back on error, always closed.
    `rows`: rows as `sqlite3.Row` (by column name)."""
    db = sqlite3.connect(path, timeout=30)
    if rows:
        db.row_factory = sqlite3.Row
    db.execute("PRAGMA foreign_keys = ON")
    try:
        with db:
            yield db
    finally:
        db.close()


def now() -> str:
    """A decision's time as stored: UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def progress(items: list[dict], key: str, decided: Collection[str]) -> tuple[int, dict | None]:
    """(how many items have a decision, the first that has none or None): where the page resumes."""
    return sum(i[key] in decided for i in items), next((i for i in items if i[key] not in decided), None)


def page_html(page: Path) -> str:
    """The page's HTML with the shared style and script inlined."""
    text = page.read_text(encoding="utf-8")
    for name in SHARED:
        text = text.replace("{{" + name + "}}", (HERE / name).read_text(encoding="utf-8"))
    return text


def build_app(page: Path, state: Action, actions: dict[str, Action]):
    """The Starlette application: `page` at /, `state` at GET /api/state, each action at POST /api/<name>."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def query(request: Request) -> dict:
        return dict(request.query_params)

    async def body(request: Request) -> dict:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise Refused(f"the request body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise Refused("the request body must be a JSON object")
        return data

    def endpoint(action: Action, read):
        async def answer(request: Request):
            try:
                return JSONResponse(action(await read(request)))
            except Refused as exc:
                return refuse(exc.status, str(exc))
        return answer

    async def show(request: Request):
        return HTMLResponse(page_html(page), headers={"Cache-Control": "no-store"})

    async def not_found(request: Request, exc):
        return refuse(404, f"no such page: {request.url.path}")

    routes = [Route("/", show), Route("/api/state", endpoint(state, query))]
    routes += [Route(f"/api/{name}", endpoint(action, body), methods=["POST"]) for name, action in actions.items()]
    return Starlette(routes=routes, exception_handlers={404: not_found})


def page_url(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"


def should_open(open_page: bool) -> bool:
    """Never in CI or in tests; elsewhere when asked."""
    return open_page and not os.environ.get("CI") and not os.environ.get("PYTEST_CURRENT_TEST")


def serve(app_for: Callable[[Callable[[], None]], Any], host: str, port: int, open_page: bool) -> None:
    """Serve `app_for(stop)` on host:port until Ctrl-C or until the app calls `stop`; either way it
    returns (every decision is already stored), and the caller reads where the person stopped."""
    import threading
    import webbrowser

    import uvicorn

    from toolkit.console import err

    servers: list = []  # built after the app, which holds `stop`
    server = uvicorn.Server(uvicorn.Config(app_for(lambda: setattr(servers[0], "should_exit", True)),
                                           host=host, port=port, log_level="warning"))
    servers.append(server)
    if host not in LOCAL:
        err.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this port can use the page (there is no login)")
    if should_open(open_page):
        threading.Timer(1.0, webbrowser.open, args=(page_url(host, port),)).start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn stops on Ctrl-C, then raises it again
        pass
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        raise ConfigError(f"cannot listen on {host}:{port}", fix="pick another --port") from exc

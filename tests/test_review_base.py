"""The review-page base (toolkit/evaluate/review_base.py) that `toolkit rate` and `data synth --review`
share: the page with the shared style and script inlined, the API's refusals, and the server's ends."""

from __future__ import annotations

import socket
import threading
import urllib.request

import pytest
from review_pages import free_port

from toolkit.errors import ConfigError
from toolkit.evaluate.review_base import AlreadyDecided, build_app, page_html, progress, serve

PAGE = "<style>\n{{review_base.css}}\n</style>\n<script>\n{{review_base.js}}\nfunction render(state) {}\n</script>\n"


def test_both_pages_inline_the_shared_style_and_script(tmp_path):
    from toolkit.evaluate.rate import PAGE as RATE_PAGE
    from toolkit.synth.review import PAGE as REVIEW_PAGE

    for page in (RATE_PAGE, REVIEW_PAGE):
        assert "{{review_base.css}}" in page.read_text() and "{{review_base.js}}" in page.read_text()
        html = page_html(page)
        assert "{{" not in html and "function bindDecisions(" in html and ".hidden{display:none}" in html, page
        assert html.index("function bindDecisions(") < html.index("bindDecisions({"), "the shared script comes first"
        assert html.count('"use strict"') == 1


def test_api_answers_actions_and_refuses_with_the_errors_status(tmp_path):
    from starlette.testclient import TestClient

    page = tmp_path / "page.html"
    page.write_text(PAGE)
    done: list[str] = []

    def mark(data: dict) -> dict:
        if data.get("id") in done:
            raise AlreadyDecided(f"{data.get('id')} is already marked")
        done.append(data["id"])
        return {"done": done}

    client = TestClient(build_app(page, lambda query: {"done": done, "query": query}, {"mark": mark}))
    assert "function showProgress(" in client.get("/").text and client.get("/").headers["cache-control"] == "no-store"
    assert client.get("/api/state", params={"rater": "ann"}).json() == {"done": [], "query": {"rater": "ann"}}
    assert client.post("/api/mark", json={"id": "x"}).json() == {"done": ["x"]}
    refused = client.post("/api/mark", json={"id": "x"})
    assert refused.status_code == 409 and refused.json() == {"error": "x is already marked"}
    assert client.post("/api/mark", content=b"[1]").status_code == 400 and client.get("/api/mark").status_code == 405
    assert client.get("/api/other").json() == {"error": "no such page: /api/other"} and done == ["x"]
    assert progress([{"k": "a"}, {"k": "b"}, {"k": "c"}], "k", {"a", "c", "z"}) == (2, {"k": "b"})


def test_serve_ends_when_the_page_stops_it_and_refuses_a_taken_port(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    port = free_port()
    apps = lambda stop: build_app(page, lambda query: stop() or {"stopping": True}, {})  # noqa: E731
    thread = threading.Thread(target=serve, args=(apps, "127.0.0.1", port, False), daemon=True)
    thread.start()
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2) as res:
                assert res.read() == b'{"stopping":true}'
            break
        except OSError:
            thread.join(0.1)
    thread.join(30)
    assert not thread.is_alive(), "serve did not return after the page's stop"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot listen"):
            serve(apps, "127.0.0.1", taken.getsockname()[1], False)

"""toolkit data synth --review: the review store and API, and the whole command driven in headless
Chromium (keys, clicks, undo, a killed server, resume, and only accepted pairs written)."""

from __future__ import annotations

import functools
import json
import sqlite3
from pathlib import Path

import pytest
import review_pages
from review_pages import NO_BROWSER, chromedriver, free_port, headless_chrome, start_serving
from synth_plant import SAMPLE, SPEC, lines, plant, reply

from toolkit.synth.command import SynthOptions
from toolkit.synth.review import ReviewStore, build_app

QUESTIONS = ["How should a learning-rate sweep be set up for fine-tuning a small model?",
             "Which statistical test suits comparing two models on the same evaluation prompts?",
             "How can a team keep test questions out of its training data when it scrapes the web?"]


def rows_for(n: int) -> list[dict]:
    return [{"id": f"synth-{i:06d}", "question": QUESTIONS[i], "answer": f"A concrete method, number {i}.", "seed_item": {"kind": "topics", "id": f"t{i}"}}
            for i in range(n)]


def decisions(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "review.sqlite") as db:
        return db.execute("SELECT item_id, decision FROM decisions ORDER BY id").fetchall()


def test_review_api_decides_undoes_refuses_and_finishes_only_when_done(tmp_path):
    from starlette.testclient import TestClient

    finished = []
    store = ReviewStore(tmp_path, rows_for(3))
    client = TestClient(build_app(store, on_finish=lambda: finished.append(True)))
    assert "Keep this pair for training?" in client.get("/").text
    first = client.get("/api/state").json()["item"]
    assert first["position"] == 1 and first["question"] == QUESTIONS[0] and first["seed"] == {"kind": "topics", "id": "t0"}
    after = client.post("/api/decide", json={"item_id": first["item_id"], "decision": "accept"}).json()
    assert after["done"] == 1 and after["item"]["position"] == 2
    before = decisions(tmp_path)
    for body, status in [({"item_id": "nope", "decision": "accept"}, 404), ({"item_id": first["item_id"], "decision": "reject"}, 409),
                         ({"item_id": after["item"]["item_id"], "decision": "maybe"}, 422), ({"item_id": ["x"], "decision": "accept"}, 404)]:
        assert client.post("/api/decide", json=body).status_code == status, body
    assert client.post("/api/decide", content=b"{oops", headers={"Content-Type": "application/json"}).status_code == 400
    assert client.post("/api/finish").status_code == 422 and not finished  # two pairs are not decided
    assert decisions(tmp_path) == before, "a refused request changes nothing"
    assert client.post("/api/undo").json()["item"]["item_id"] == first["item_id"]
    assert decisions(tmp_path) == [] and client.post("/api/undo").status_code == 409
    for choice in ("reject", "accept", "accept"):
        state = client.get("/api/state").json()
        client.post("/api/decide", json={"item_id": state["item"]["item_id"], "decision": choice})
    assert client.post("/api/finish").json()["finished"] and finished == [True]
    # another run with one regenerated pair: the unchanged pairs keep their decisions, the new one is undecided
    changed = rows_for(3)
    changed[1]["answer"] = "A different answer."
    again = ReviewStore(tmp_path, changed).state()
    assert again["done"] == 2 and again["item"]["question"] == QUESTIONS[1]


def _start(out: Path, port: int):
    """The real command with --review, on planted replies (no model), waiting until its page answers."""
    import sys

    cmd = [sys.executable, "-m", "toolkit", "data", "synth", "--topics", "planning,evaluation", "--count", "3", "--max-attempts", "4",
           "--backend", SPEC.name, "--url", SPEC.url, "--model", SPEC.model, "--review", "--no-open", "--port", str(port), "--out", str(out)]
    return start_serving(cmd, port, 120, "synth --review")


@pytest.mark.skipif(chromedriver() is None, reason=NO_BROWSER)
def test_review_in_a_real_browser_writes_only_accepted_pairs(tmp_path):
    import signal

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "out"
    plant(out, SynthOptions(topics="planning,evaluation", count=3, max_attempts=4), [reply(q) for q in QUESTIONS] + ["not a pair"])
    port = free_port()
    server = _start(out, port)
    driver = headless_chrome()
    progress_is = functools.partial(review_pages.progress_is, driver)
    key = functools.partial(review_pages.key, driver)

    try:
        driver.get(f"http://127.0.0.1:{port}/")
        progress_is("1 of 3")
        assert driver.find_element(By.ID, "question").text == QUESTIONS[0]
        driver.find_element(By.ID, "accept").click()  # by click
        progress_is("2 of 3")
        key("2")  # reject by key
        progress_is("3 of 3")
        key("u")  # undo by key
        progress_is("2 of 3")
        key("r")  # reject again
        progress_is("3 of 3")
        # kill the server outright: the decisions are kept, and a re-run continues at the third pair
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        assert not (out / "synthetic.jsonl").exists()
        server = _start(out, port)
        driver.refresh()
        progress_is("3 of 3")
        assert driver.find_element(By.ID, "question").text == QUESTIONS[2]
        key("1")
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "end-screen").is_displayed())
        assert driver.find_element(By.ID, "accepted").text == "2"
        driver.find_element(By.ID, "finish").click()
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "done-screen").is_displayed())
        assert server.wait(timeout=60) == 0, server.stdout.read().decode()
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        driver.quit()
        server.kill()
        server.wait(timeout=30)
    rows = lines(out / "synthetic.jsonl")
    assert [r["question"] for r in rows] == [QUESTIONS[0], QUESTIONS[2]]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["review"] == {"accepted": 2, "rejected": 1} and stats["kept"] == 3 and stats["written"] == 2


def test_sample_qa_exists_for_the_judge_calibration():
    from toolkit.synth.judge import SAMPLE_QA

    assert SAMPLE_QA == SAMPLE / "qa.csv" and SAMPLE_QA.is_file()

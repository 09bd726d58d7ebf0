"""toolkit rate: the plan, the ratings store, the page's API, the human result, and the page in a real browser."""

from __future__ import annotations

import functools
import json
import sqlite3
from pathlib import Path

import pytest
import review_pages
from review_pages import NO_BROWSER, chromedriver, free_port, headless_chrome, start_serving

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.human import human_summary
from toolkit.evaluate.rate import build_app, open_session
from toolkit.evaluate.ratings import RatingStore, default_size

SYSTEMS = ("base", "tuned", "other")


def fake_result(n: int = 30) -> dict:
    """A compare results.json with the fields rate and the human summary read (no model needed)."""
    per_example = []
    for i in range(n):
        outputs = {s: {"text": f"Answer {i} in style {k}. It says something.", "bertscore_f1": 0.5 + 0.01 * ((i * (k + 3)) % 17), "tokens": 10 + k + i % 5}
                   for k, s in enumerate(SYSTEMS)}
        per_example.append({"id": f"ex{i:03d}", "prompt": f"Question {i}?", "reference": f"Reference {i}.", "outputs": outputs})
    return {"examples": n, "reference_system": "base", "systems": [{"label": s} for s in SYSTEMS], "per_example": per_example}


def write_compare_dir(folder: Path, n: int = 30) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(fake_result(n)))
    return folder


def rows_of(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "ratings.sqlite") as db:
        return db.execute("SELECT rater, pair_id, shown_a, shown_b, choice FROM ratings ORDER BY id").fetchall()


def test_plan_is_stratified_seeded_blind_and_kept(tmp_path):
    folder = write_compare_dir(tmp_path / "cmp")
    result = json.loads((folder / "results.json").read_text())
    size = default_size(result, "base", "tuned")
    assert 20 <= size <= 30
    session = open_session(folder, [], 0, seed=0)
    assert (session.system_1, session.system_2) == ("base", "tuned")  # the first two by default
    assert len(session.pairs) == size == len({p["example_id"] for p in session.pairs})
    assert {p["shown_a"] for p in session.pairs} == {"base", "tuned"}  # the order is random per pair
    # stratified: every quarter of the prompts (by BERTScore difference) is represented
    diff = {ex["id"]: ex["outputs"]["tuned"]["bertscore_f1"] - ex["outputs"]["base"]["bertscore_f1"] for ex in result["per_example"]}
    ranked = sorted(diff, key=diff.get)
    quarters = {ranked.index(p["example_id"]) * 4 // len(ranked) for p in session.pairs}
    assert quarters == {0, 1, 2, 3}
    # kept: a second start (another seed, another size) continues the same plan
    again = open_session(folder, ["base", "tuned"], 5, seed=9)
    assert [p["pair_id"] for p in again.pairs] == [p["pair_id"] for p in session.pairs]
    # another seed in another folder draws another plan; the state the page gets names no system
    other = open_session(write_compare_dir(tmp_path / "cmp2"), [], 0, seed=1)
    assert [p["example_id"] for p in other.pairs] != [p["example_id"] for p in session.pairs]
    state = session.state("ann")
    assert state["total"] == size and state["done"] == 0 and state["pair"]["position"] == 1
    assert not any(s in json.dumps(state) for s in ("base", "tuned")), "the page must not see the systems' names"


def test_rate_command_refuses_bad_folders_and_systems(tmp_path):
    with pytest.raises(DataError, match="not a compare folder"):
        open_session(tmp_path, [], 0, 0)
    folder = write_compare_dir(tmp_path / "cmp")
    with pytest.raises(ConfigError, match="not in this comparison"):
        open_session(folder, ["base", "nope"], 0, 0)
    with pytest.raises(ConfigError, match="two different systems"):
        open_session(folder, ["base", "base"], 0, 0)
    with pytest.raises(ConfigError, match="negative"):
        open_session(folder, [], -1, 0)


def test_api_rates_undoes_and_refuses_bad_requests_changing_nothing(tmp_path):
    from starlette.testclient import TestClient

    folder = write_compare_dir(tmp_path / "cmp")
    session = open_session(folder, ["base", "tuned"], 4, seed=0)
    client = TestClient(build_app(session))
    assert client.get("/").status_code == 200 and "Which answer is better?" in client.get("/").text
    first = client.get("/api/state", params={"rater": "ann"}).json()["pair"]
    after = client.post("/api/rate", json={"rater": "ann", "pair_id": first["pair_id"], "choice": "A"})
    assert after.status_code == 200 and after.json()["done"] == 1 and after.json()["pair"]["position"] == 2
    before = rows_of(folder)
    bad = [
        ({"rater": "ann", "pair_id": "nope", "choice": "A"}, 404, "no pair"),
        ({"rater": "ann", "pair_id": ["a list"], "choice": "A"}, 404, "no pair"),
        ({"rater": ["ann"], "pair_id": session.pairs[1]["pair_id"], "choice": "A"}, 422, "rater name"),
        ({"rater": "ann", "pair_id": session.pairs[1]["pair_id"], "choice": "C"}, 422, "not one of"),
        ({"rater": "ann", "pair_id": session.pairs[1]["pair_id"], "choice": None}, 422, "not one of"),
        ({"rater": "ann", "pair_id": first["pair_id"], "choice": "B"}, 409, "already rated"),
        ({"rater": "", "pair_id": session.pairs[1]["pair_id"], "choice": "A"}, 422, "rater name"),
    ]
    for body, status, message in bad:
        res = client.post("/api/rate", json=body)
        assert res.status_code == status and message in res.json()["error"], (body, res.text)
    res = client.post("/api/rate", content=b"{not json", headers={"Content-Type": "application/json"})
    assert res.status_code == 400 and "not JSON" in res.json()["error"]
    assert client.get("/api/state").status_code == 422  # no rater named
    assert client.post("/api/undo", json={"rater": "bob"}).status_code == 409  # nothing to undo
    assert client.get("/api/nothing").status_code == 404
    assert rows_of(folder) == before, "a refused request changes nothing"
    # undo puts the pair back in front; a pair from another plan is unknown here
    assert client.post("/api/undo", json={"rater": "ann"}).json()["pair"]["pair_id"] == first["pair_id"]
    assert rows_of(folder) == []
    other = open_session(folder, ["base", "other"], 3, seed=0)
    res = client.post("/api/rate", json={"rater": "ann", "pair_id": other.pairs[0]["pair_id"], "choice": "A"})
    assert res.status_code == 404 and rows_of(folder) == []


def _rate_all(store: RatingStore, session, rater: str, prefer: dict[str, str]) -> None:
    """Rate every pair of the plan: `prefer` maps example id -> the system this rater prefers (or tie)."""
    for p in session.pairs:
        want = prefer.get(p["example_id"], "tie")
        choice = want if want in ("tie", "unusable") else ("A" if p["shown_a"] == want else "B")
        store.rate(rater, p["pair_id"], choice)


def test_human_summary_two_raters_kappa_sign_test_and_bertscore_agreement(tmp_path):
    from scipy.stats import binomtest
    from sklearn.metrics import cohen_kappa_score

    folder = write_compare_dir(tmp_path / "cmp")
    result = json.loads((folder / "results.json").read_text())
    session = open_session(folder, ["base", "tuned"], 20, seed=0)
    ids = [p["example_id"] for p in session.pairs]
    ann = {ex: "tuned" if k < 14 else "base" for k, ex in enumerate(ids)}  # tuned 14, base 6
    bob = {ex: "tuned" if k < 10 else "tie" if k < 16 else "base" for k, ex in enumerate(ids)}
    _rate_all(session.store, session, "ann", ann)
    _rate_all(session.store, session, "bob", bob)
    [h] = human_summary(folder, result, seed=0)
    assert h["systems"] == ["base", "tuned"] and h["ratings"] == 40 and h["prompts"] == 20 and h["stale"] == 0
    assert h["raters"] == {"ann": 20, "bob": 20}
    assert h["counts"] == {"wins": 24, "ties": 6, "losses": 10, "unusable": 0}
    # per prompt: both tuned (10), ann tuned + bob tie (4: 0.75), ann base + bob tie (2: 0.25), both base (4)
    assert h["win_rate"]["mean"] == pytest.approx((10 + 4 * 0.75 + 2 * 0.25) / 20)
    assert h["win_rate"]["low"] < h["win_rate"]["mean"] < h["win_rate"]["high"]
    assert h["sign_test"] == {"wins": 14, "losses": 6, "p_value": pytest.approx(binomtest(14, 20).pvalue)}
    [k] = h["kappa"]
    canon = {"tuned": "second", "base": "first", "tie": "tie"}
    assert k["pairs"] == 20 and k["kappa"] == pytest.approx(cohen_kappa_score([canon[ann[e]] for e in ids], [canon[bob[e]] for e in ids]))
    f1 = {ex["id"]: ex["outputs"] for ex in result["per_example"]}
    expect = sum((f1[e]["tuned"]["bertscore_f1"] > f1[e]["base"]["bertscore_f1"]) == (k < 14) for k, e in enumerate(ids))
    assert h["bertscore_agreement"]["prompts"] == 20 and h["bertscore_agreement"]["agree"] == expect
    # outputs regenerated since: those ratings are stale and left out
    result["per_example"][[ex["id"] for ex in result["per_example"]].index(ids[0])]["outputs"]["tuned"]["text"] = "changed"
    [h2] = human_summary(folder, result, seed=0)
    assert h2["stale"] == 2 and h2["prompts"] == 19
    # a comparison without one of the rated systems has no human result for them
    result["systems"] = [{"label": "base"}, {"label": "other"}]
    assert human_summary(folder, result) == []
    assert human_summary(tmp_path / "empty", result) == []


def test_stats_helpers_match_scipy_and_sklearn():
    from scipy.stats import binomtest
    from sklearn.metrics import cohen_kappa_score

    from toolkit.evaluate.stats import beats_chance, cohen_kappa, sign_test

    assert sign_test(9, 2) == pytest.approx(binomtest(9, 11).pvalue) and sign_test(0, 0) == 1.0
    assert beats_chance(9, 11) == pytest.approx(binomtest(9, 11, alternative="greater").pvalue) and beats_chance(0, 0) == 1.0
    a = ["x", "y", "y", "z", "x", "x", "y", "z"]
    b = ["x", "y", "z", "z", "x", "y", "y", "x"]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(["x", "x"], ["x", "x"]) != cohen_kappa(["x", "x"], ["x", "x"])  # nan: chance agreement is total
    with pytest.raises(ValueError):
        cohen_kappa(["x"], [])


def _start_server(folder: Path, port: int):
    import sys

    cmd = [sys.executable, "-m", "toolkit", "rate", str(folder), "--no-open", "--port", str(port), "--pairs", "5"]
    return start_serving(cmd, port, 60, "the rate server")


@pytest.mark.skipif(chromedriver() is None, reason=NO_BROWSER)
def test_rating_in_a_real_browser_clicks_keys_undo_reload_and_a_killed_server(tmp_path):
    import signal

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder = write_compare_dir(tmp_path / "cmp")
    port = free_port()
    server = _start_server(folder, port)
    driver = headless_chrome()
    url = f"http://127.0.0.1:{port}/"
    progress_is = functools.partial(review_pages.progress_is, driver)
    key = functools.partial(review_pages.key, driver)

    try:
        driver.get(url)
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "name").is_displayed())
        driver.find_element(By.ID, "name").send_keys("ann")
        driver.find_element(By.ID, "start").click()
        progress_is("1 of 5")
        plan = RatingStore(folder).plan("base", "tuned")
        first = plan[0]
        a_text = first["text_1"] if first["shown_a"] == "base" else first["text_2"]
        assert driver.find_element(By.ID, "a").text == a_text.strip() and driver.find_element(By.ID, "prompt").text == first["prompt"]
        assert not driver.find_element(By.ID, "reference").is_displayed()
        driver.find_element(By.ID, "show-ref").click()  # the reference sits behind a toggle
        assert driver.find_element(By.ID, "reference").text == first["reference"]
        driver.find_element(By.ID, "choose-A").click()  # by click
        progress_is("2 of 5")
        key("3")  # by keys: B better
        progress_is("3 of 5")
        key("2")  # tie
        progress_is("4 of 5")
        driver.find_element(By.ID, "undo").click()  # undo the tie by click
        progress_is("3 of 5")
        key("4")  # both unusable, then undone by key
        progress_is("4 of 5")
        key("u")
        progress_is("3 of 5")
        expected = [("ann", plan[0]["pair_id"], "A"), ("ann", plan[1]["pair_id"], "B")]
        assert [(r[0], r[1], r[4]) for r in rows_of(folder)] == expected
        for (_, _, shown_a, shown_b, _), p in zip(rows_of(folder), plan):
            assert shown_a == p["shown_a"] and {shown_a, shown_b} == {"base", "tuned"}  # the shown order is stored
        driver.refresh()  # reload: the name is remembered, the position resumed
        progress_is("3 of 5")
        # kill the server outright: nothing is lost, and a new one continues where the rater stopped
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        server = _start_server(folder, port)
        driver.refresh()
        progress_is("3 of 5")
        assert driver.find_element(By.ID, "prompt").text == plan[2]["prompt"]
        key("1")  # one key at a time: a press while a rating is in flight is ignored on purpose
        progress_is("4 of 5")
        key("1")
        progress_is("5 of 5")
        key("1")
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "end-screen").is_displayed())
        assert driver.find_element(By.ID, "progress").text == "5 of 5"
        assert [r[4] for r in rows_of(folder)] == ["A", "B", "A", "A", "A"]
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        driver.quit()
        server.kill()
        server.wait(timeout=30)

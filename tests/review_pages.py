"""Helpers the review-page tests share (test_rate.py, test_synth_review.py, test_review_base.py): a
free port, a command serving its page started and awaited, and headless Chromium driving the page."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from toolkit.evaluate.browser import FLAGS, find_browser

NO_BROWSER = "no headless Chromium + chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run installs them)"


def chromedriver() -> str | None:
    driver = shutil.which("chromedriver") or (Path("/usr/bin/chromedriver") if Path("/usr/bin/chromedriver").exists() else None)
    return str(driver) if driver and find_browser() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serving(cmd: list[str], port: int, seconds: float, what: str) -> subprocess.Popen:
    """Start `cmd` and wait until its page answers on `port`; fails with its output if it exits first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as res:
                if res.status == 200:
                    return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited: {proc.stdout.read().decode()}") from None
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"{what} did not start in {seconds:.0f} s")


def headless_chrome():
    """A headless Chromium driven by chromedriver (quit it when done)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = find_browser()
    for flag in (*FLAGS, "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument("--headless=new" if flag == "--headless" else flag)
    return webdriver.Chrome(service=Service(chromedriver()), options=options)


def progress_is(driver, text: str) -> None:
    """Wait until the page's progress line reads `text`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "progress").text == text, message=f"progress never showed {text!r}")


def key(driver, k: str) -> None:
    """Press a key on the page."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.TAG_NAME, "body").send_keys(k)

"""Open an HTML report in headless Chromium: does it render, with every plot, and what does it look like?

Used by `toolkit compare --screenshot` and by the test that checks the report in a real browser.
Chromium is optional: `find_browser()` returns None when none is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.io import atomic_path

# No network from the browser: without the background-networking flags Chromium keeps trying to
# reach Google's hosts, which a closed machine refuses.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio")

# Appended to a copy of the page: after load, the title says how many images the browser decoded.
_COUNT_IMAGES = ("<script>window.addEventListener('load', () => { const all = [...document.images];"
                 " document.title = 'decoded ' + all.filter(i => i.complete && i.naturalWidth > 0).length"
                 " + ' of ' + all.length; });</script>")


class BrowserError(ToolkitError):
    """No usable headless browser, or it failed to render the page."""


@dataclass
class Rendered:
    """What the browser made of a page."""

    images: int
    decoded: int
    screenshot: Path | None


def find_browser() -> str | None:
    """A Chromium-family browser: $TOOLKIT_BROWSER, else chromium / chrome on PATH."""
    names = [os.environ.get("TOOLKIT_BROWSER", ""), "chromium", "chromium-browser", "google-chrome", "chrome"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def _run(browser: str, args: list[str], profile: Path) -> str:
    cmd = [browser, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BrowserError(f"{Path(browser).name} failed (exit {proc.returncode}): {last[:200]}",
                           fix="check that the browser starts headless: chromium --headless --no-sandbox --dump-dom about:blank")
    return proc.stdout


def render(html: Path, screenshot: Path | None = None, width: int = 1280, height: int = 2400) -> Rendered:
    """Load `html` in headless Chromium, count the images it decoded, optionally save a PNG screenshot."""
    browser = find_browser()
    if browser is None:
        raise BrowserError("no headless browser found (chromium, google-chrome)",
                           fix="install Chromium (Debian: apt-get install chromium) or set TOOLKIT_BROWSER")
    html = Path(html).resolve()
    with tempfile.TemporaryDirectory(prefix="toolkit-browser-") as tmp:
        probe = Path(tmp) / html.name  # the copy sits in its own folder: relative links would break, as they should
        probe.write_text(html.read_text(encoding="utf-8").replace("</body>", _COUNT_IMAGES + "</body>"), encoding="utf-8")
        dom = _run(browser, ["--dump-dom", probe.as_uri()], Path(tmp) / "profile")
        found = re.search(r"<title>decoded (\d+) of (\d+)</title>", dom)
        if not found:
            raise BrowserError(f"the browser did not finish loading {html}", fix="open the file in a browser to see why")
        if screenshot is not None:
            shot = Path(tmp) / "shot.png"
            _run(browser, [f"--screenshot={shot}", f"--window-size={width},{height}", html.as_uri()], Path(tmp) / "profile2")
            with atomic_path(screenshot) as dest:
                shutil.copyfile(shot, dest)
    return Rendered(images=int(found.group(2)), decoded=int(found.group(1)), screenshot=Path(screenshot) if screenshot else None)

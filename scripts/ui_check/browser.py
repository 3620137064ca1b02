"""What a page shows, as headless chromium renders it: its DOM, its words, its links, a screenshot."""

from __future__ import annotations

import html
import re
import subprocess
import tempfile
from pathlib import Path

from ui_check.common import CHROMIUM, MAX_PNG_BYTES, CheckFailed


def page(url: str, budget_ms: int = 20000, height: int = 900) -> str:
    """The DOM of ``url`` once headless chromium has run its scripts for ``budget_ms`` of virtual time: what a
    user's browser shows, redirects and all (the pages are single-page apps: their HTML alone is empty), in a
    window ``height`` pixels high (charts below it are drawn only when scrolled to)."""
    if not CHROMIUM:
        raise CheckFailed("chromium not found on PATH: the pages cannot be rendered")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             f"--window-size=1400,{height}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True, text=True, timeout=240,
        )
    if done.returncode != 0 or not done.stdout.strip():
        raise CheckFailed(f"chromium could not render {url}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def page_until(url: str, shows, height: int = 900, budgets=(20000, 45000, 90000)) -> str:
    """``page(url)`` rendered with a longer budget each time until ``shows(dom)``: on a busy machine a page's
    charts may take longer to draw than its frame. The last DOM when none shows it."""
    for budget in budgets:
        dom = page(url, budget_ms=budget, height=height)
        if shows(dom):
            break
    return dom


def text_of(dom: str) -> str:
    """The visible words of a DOM (tags, scripts and styles dropped), whitespace squeezed."""
    dom = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", dom)
    return " ".join(html.unescape(re.sub(r"(?s)<[^>]+>", " ", dom)).split())


def hrefs(dom: str) -> list[str]:
    return [html.unescape(link) for link in re.findall(r'href="([^"]+)"', dom)]


def screenshot(url: str, out: Path, window=(1400, 900), box=None, width: int | None = None,
               budget_ms: int = 25000) -> str:
    """Save ``url`` as headless chromium renders it in a ``window`` (width, height), cut to ``box``
    (left, top, right, bottom) and scaled to ``width``, quantized (and shrunk if needed) below MAX_PNG_BYTES."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={window[0]},{window[1]}",
             "--hide-scrollbars", f"--virtual-time-budget={budget_ms}", url],
            check=True, capture_output=True, timeout=240,
        )
    image = Image.open(out).convert("RGB")
    if box:
        image = image.crop(box)
    if width and image.width != width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    while out.stat().st_size > MAX_PNG_BYTES:
        image = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.Resampling.LANCZOS)
        image.quantize(colors=256).save(out, optimize=True)
    return f"{out} ({out.stat().st_size // 1000} KB)"

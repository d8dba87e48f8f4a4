"""Headless Chromium on the demo page, through Playwright's Python API: for the end-to-end test and for the
README's screenshot (`demo/screenshot.py`). Uses the system's Chromium (Debian's ``chromium`` package), never a
browser Playwright downloads itself."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Without the background-networking flags Chromium keeps dialling hosts a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GENERATE_TIMEOUT_MS = 110_000
VIEWPORT = (1500, 1100)


def find_chromium() -> str | None:
    """The Chromium binary: ``$TURBO_DEMO_CHROMIUM``, else the first of `CHROMIUM_NAMES` on the ``PATH``."""
    explicit = os.environ.get("TURBO_DEMO_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def open_browser() -> Iterator[Any]:
    """A Playwright `Browser` in headless system Chromium; ``RuntimeError`` when Playwright or Chromium is missing.
    Open its tabs with ``new_page(viewport=...)``."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError("Playwright is not installed: pip install playwright") from None
    executable = find_chromium()
    if executable is None:
        raise RuntimeError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)} and $TURBO_DEMO_CHROMIUM); "
                           "on Debian: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def browser_page(width: int = VIEWPORT[0], height: int = VIEWPORT[1]) -> Iterator[Any]:
    """One page (tab) of `open_browser`, ``width`` x ``height`` CSS pixels."""
    with open_browser() as browser:
        yield browser.new_page(viewport={"width": width, "height": height})


def open_demo(page: Any, url: str) -> None:
    """Load the demo page and wait until its Generate button is there."""
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#generate").wait_for(state="visible", timeout=60_000)


def set_slider(page: Any, elem_id: str, value: float) -> None:
    """Move the slider ``elem_id`` to ``value``, as dragging it would (input and change events)."""
    page.locator(f"#{elem_id} input[type=range]").fill(str(value))


def fill_settings(page: Any, prompt: str, ratio: float | None = None, seed: int | None = None) -> None:
    """Type ``prompt`` (and ``seed``) and move the ratio slider to ``ratio``, as a person would."""
    page.locator("#prompt textarea").fill(prompt)
    if seed is not None:
        page.locator("#seed input").fill(str(seed))
    if ratio is not None:
        set_slider(page, "ratio", ratio)


def wait_for_result(page: Any, previous: str = "", timeout_ms: int = GENERATE_TIMEOUT_MS) -> str:
    """Wait until the summary under the images is settled (no longer pending), holds a speed-up and is not
    ``previous``; returns its text."""
    page.wait_for_function(
        "previous => { const w = document.querySelector('#summary [data-testid=markdown-wrapper]');"
        " return w !== null && !w.classList.contains('pending') && w.innerText.includes('speed-up')"
        " && w.innerText !== previous; }",
        arg=previous, timeout=timeout_ms,
    )
    return summary_text(page)


def summary_text(page: Any) -> str:
    """The summary under the images (without Gradio's progress text)."""
    return page.locator("#summary [data-testid=markdown-wrapper]").inner_text()


def generate(page: Any, prompt: str, ratio: float | None = None, seed: int | None = None,
             timeout_ms: int = GENERATE_TIMEOUT_MS) -> str:
    """Fill in the settings, click Generate and wait for the new result; returns the summary under the images."""
    fill_settings(page, prompt, ratio, seed)
    previous = summary_text(page)
    page.locator("#generate").click()
    summary = wait_for_result(page, previous, timeout_ms)
    wait_until_idle(page, timeout_ms)
    return summary


def wait_until_idle(page: Any, timeout_ms: int = GENERATE_TIMEOUT_MS) -> None:
    """Wait until no component shows Gradio's progress tracker (e.g. the panel redrawn after a result)."""
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0",
        timeout=timeout_ms,
    )


def image_bytes(page: Any, elem_id: str) -> bytes:
    """The bytes of the image shown in the image component ``elem_id``, fetched as the browser fetched them."""
    source = page.locator(f"#{elem_id} img").first.get_attribute("src")
    if not source:
        raise AssertionError(f"#{elem_id} shows no image")
    response = page.request.get(source if "://" in source else page.url.rstrip("/") + "/" + source.lstrip("/"))
    if not response.ok:
        raise AssertionError(f"#{elem_id}: {source} answered {response.status}")
    return response.body()

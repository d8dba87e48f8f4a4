"""The demo page in a real browser: headless system Chromium, driven by Playwright, against the app served on a
free loopback port in this process (the tiny model, two steps). Skipped, with the reason, only where Playwright
or a Chromium binary is missing (`.ci/run` installs both)."""

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs gradio (pip install 'turbo-diffusion[demo]')")
pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

from turbo_diffusion.demo import browser  # noqa: E402

if browser.find_chromium() is None:
    pytest.skip("no Chromium binary found (apt-get install -y chromium, or set TURBO_DEMO_CHROMIUM)",
                allow_module_level=True)

from turbo_diffusion.demo.app import build_app, serve  # noqa: E402
from turbo_diffusion.demo.session import DemoSession  # noqa: E402

STEPS, SIZE = 2, 64


@pytest.fixture(scope="module")
def served():
    """The demo on the tiny model at 2 steps, served in a thread; yields (url, session) and stops the server."""
    session = DemoSession("tiny", device="cpu")
    session.defaults = session.defaults.replace(steps=STEPS, size=SIZE)
    app = serve(build_app(session), browser.free_port(), block=False, quiet=True)
    try:
        yield app.local_url, session
    finally:
        app.close()


def png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_generate_shows_both_images_the_speed_up_and_what_turbo_merged(served, tmp_path):
    url, session = served
    with browser.browser_page() as page:
        browser.open_demo(page, url)
        assert "random weights" in page.locator("#model-note").inner_text()
        summary = browser.generate(page, "a green apple on a table", ratio=0.3)
        assert "speed-up" in summary and "ratio 0.3" in summary and "PSNR" in summary
        for elem_id in ("baseline-image", "turbo-image"):
            assert png(browser.image_bytes(page, elem_id)).size == (SIZE, SIZE)
        overlay = np.asarray(png(browser.image_bytes(page, "overlay-image")).convert("RGB"))
        assert overlay.shape == (256, 256, 3)
        magenta = (overlay[..., 0] > 150) & (overlay[..., 1] < 100) & (overlay[..., 2] > 100)
        assert 0.1 < magenta.mean() < 0.6  # about 30% of the tokens merged, tinted
        for elem_id in ("r-map", "s-map", "e-map"):
            assert png(browser.image_bytes(page, elem_id)).size == (256, 256)
        assert "tokens merged" in page.locator("#plan-detail").inner_text()
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        assert png((tmp_path / "demo.png").read_bytes()).width > 1000

        # A bad setting is a readable error on the page, and the page keeps working after it.
        page.locator("#prompt textarea").fill("   ")
        page.locator("#generate").click()
        page.get_by_text("Type a prompt first").first.wait_for(timeout=30_000)
        assert "seed 7" in browser.generate(page, "a blue cup", seed=7).lower()


def test_two_tabs_generating_at_once_each_get_their_own_result(served):
    url, session = served
    asked = {"a red cat": (1, 0.3), "a blue dog": (2, 0.7)}
    with browser.open_browser() as chromium:
        pages = {prompt: chromium.new_page() for prompt in asked}
        for prompt, page in pages.items():
            browser.open_demo(page, url)
            seed, ratio = asked[prompt]
            browser.fill_settings(page, prompt, ratio=ratio, seed=seed)
        for page in pages.values():
            page.locator("#generate").click()  # the second click lands while the first request runs or waits
        shown = {prompt: browser.wait_for_result(page) and (png(browser.image_bytes(page, "baseline-image")),
                                                            png(browser.image_bytes(page, "turbo-image")))
                 for prompt, page in pages.items()}
    for prompt, (seed, ratio) in asked.items():
        alone = session.compare(session.defaults.replace(prompt=prompt, seed=seed, ratio=ratio))
        assert np.array_equal(np.asarray(shown[prompt][0].convert("RGB")), np.asarray(alone.baseline))
        assert np.array_equal(np.asarray(shown[prompt][1].convert("RGB")), np.asarray(alone.turbo))


def test_the_sweep_tab_shows_four_ratios_with_time_and_psnr(served):
    url, _ = served
    with browser.browser_page() as page:
        browser.open_demo(page, url)
        page.get_by_role("tab", name="Sweep").click()
        page.locator("#sweep").click()
        rows = page.locator("#sweep-table tbody tr")
        rows.nth(3).wait_for(timeout=browser.GENERATE_TIMEOUT_MS)
        browser.wait_until_idle(page)
        assert rows.count() == 4 and "identical" in rows.nth(0).inner_text() and "dB" in rows.nth(3).inner_text()
        assert page.locator("#sweep-gallery img").count() == 4
        assert "ratio 0.5" in page.locator("#sweep-gallery").inner_text()

"""The draw-a-digit page (``GET /``) in a real headless Chromium, against a real server and model.

A person's path through it: type the API key, draw a digit with the mouse (or a finger), press
Predict, read the digit and the ten probability bars. Also: the key is remembered across reloads,
the auto mode predicts when the stroke ends, Clear resets, a wrong key shows an error on the page
and the page recovers once the key is fixed. The page runs under its own Content-Security-Policy
(no eval), and no script error may happen anywhere.

Needs Debian's Chromium (``apt-get install chromium``) and the ``playwright`` package (test extra).
Without them the tests skip on a laptop, and fail in CI (``CI=true``), where they must run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import needs_tool
from serving_fixtures import KEY, ServerProcess, make_endpoint, registered_model

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("MNISTOPS_CHROMIUM", "/usr/bin/chromium")
SIDE = 280  # the canvas' CSS size
ANSWERED = re.compile(r"^(answered in \d+ ms|\d{3}: .*|request failed: .*)$")


def _unavailable(reason: str):
    needs_tool(f"{reason}: the browser tests need it")


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_api):
    b = playwright_api.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield b
    b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_cache):
    model = registered_model(tmp_path_factory, data_cache)
    srv = ServerProcess(make_endpoint(tmp_path_factory.mktemp("browser-ep"), model)).start()
    yield srv
    srv.stop()


class Page:
    """One browser tab on the page, recording script errors."""

    def __init__(self, browser, url: str, **context):
        self.context = browser.new_context(**{"viewport": {"width": 900, "height": 760}, **context})
        self.page = self.context.new_page()
        self.errors: list = []
        self.console_errors: list = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.goto(url)

    def close(self) -> None:
        self.context.close()

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector).strip()

    def set_key(self, key: str) -> None:
        self.page.fill("#key", key)
        self.page.press("#key", "Tab")  # fires `change`: the page stores the key

    def canvas_origin(self):
        box = self.page.locator("#canvas").bounding_box()
        assert box and round(box["width"]) == SIDE and round(box["height"]) == SIDE, box
        return box["x"], box["y"]

    def draw(self, *strokes) -> None:
        """Mouse strokes, each a list of (x, y) canvas points, moved through in small steps."""
        x0, y0 = self.canvas_origin()
        mouse = self.page.mouse
        for stroke in strokes:
            (x, y), rest = stroke[0], stroke[1:]
            mouse.move(x0 + x, y0 + y)
            mouse.down()
            for x, y in rest:
                mouse.move(x0 + x, y0 + y, steps=12)
            mouse.up()

    def touch_draw(self, *strokes) -> None:
        """Finger strokes through the DevTools protocol: real touch events, so the page sees pointerType
        'touch' (pointerdown / pointermove / pointerup), as on a phone."""
        x0, y0 = self.canvas_origin()
        cdp = self.context.new_cdp_session(self.page)
        for stroke in strokes:
            points = _densify(stroke, 12)
            (x, y), rest = points[0], points[1:]
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0 + x, "y": y0 + y}]})
            for x, y in rest:
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                                      "touchPoints": [{"x": x0 + x, "y": y0 + y}]})
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        cdp.detach()

    def wait_answer(self) -> str:
        from playwright.sync_api import expect

        # the locator-based wait runs in Playwright's own script world: the page's CSP (no eval) stays on
        expect(self.page.locator("#status")).to_have_text(ANSWERED, timeout=15_000)
        return self.text("#status")

    def probabilities(self) -> list:
        values = []
        for i in range(10):
            shown = self.text(f"#p-{i}")
            values.append(float(shown.rstrip("%")) / 100 if shown else 0.0)
        return values


def _densify(stroke, steps: int):
    out = [stroke[0]]
    for (xa, ya), (xb, yb) in zip(stroke, stroke[1:]):
        out += [(xa + (xb - xa) * k / steps, ya + (yb - ya) * k / steps) for k in range(1, steps + 1)]
    return out


ONE = [[(140, 45), (141, 140), (142, 235)]]  # a thick vertical bar
SEVEN = [[(80, 60), (200, 60), (120, 230)]]  # top bar, then the diagonal, in one stroke


def check_prediction(p: Page, digit: int) -> list:
    status = p.wait_answer()
    assert status.startswith("answered in"), status
    assert p.text("#digit") == str(digit), (p.text("#digit"), p.probabilities())
    probs = p.probabilities()
    assert abs(sum(probs) - 1.0) < 0.01, probs  # ten values shown to 0.1 %
    assert max(range(10), key=probs.__getitem__) == digit
    bars = p.page.locator("#bars .bar")
    assert bars.count() == 10
    tops = [i for i in range(10) if "top" in (bars.nth(i).get_attribute("class") or "")]
    assert tops == [digit]
    width = p.page.locator(f"#bar-{digit} > div").evaluate("e => e.style.width")
    assert abs(float(width.rstrip("%")) / 100 - probs[digit]) < 0.002
    assert re.fullmatch(r"mnist-classifier v1 \(blue\) - request [0-9a-f]{32}", p.text("#meta")), p.text("#meta")
    return probs


def test_draw_digits_with_the_mouse_and_predict(browser, server, tmp_path):
    p = Page(browser, server.url + "/")
    try:
        page = p.page
        assert page.title().startswith("mnistops")
        assert p.text("#digit") == "?" and page.locator("#bars .bar").count() == 10
        p.set_key(KEY)

        # manual mode: draw, then press Predict; the page posts the PNG to /predict with the key
        page.uncheck("#auto")
        p.draw(*ONE)
        with page.expect_response(lambda r: r.url.endswith("/predict")) as answer:
            page.click("#predict")
        response = answer.value
        assert response.status == 200
        assert response.request.headers["authorization"] == f"Bearer {KEY}"
        assert response.request.headers["content-type"].startswith("multipart/form-data")
        check_prediction(p, 1)
        shot = tmp_path / "one.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000

        # Clear resets everything; Predict on an empty canvas asks for a drawing (no request)
        page.click("#clear")
        assert p.text("#digit") == "?" and p.probabilities() == [0.0] * 10 and p.text("#meta") == ""
        page.click("#predict")
        assert p.text("#status") == "draw a digit first"

        # auto mode: the prediction comes when the stroke ends
        page.check("#auto")
        p.draw(*SEVEN)
        check_prediction(p, 7)
        page.locator("#canvas").screenshot(path=str(tmp_path / "seven.png"))
        assert (tmp_path / "seven.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # the key lives in localStorage, not in the URL: a reload keeps it
        page.reload()
        assert page.input_value("#key") == KEY and "key" not in page.url.lower()
        assert p.errors == [], p.errors
        assert all(e.startswith("Failed to load resource") for e in p.console_errors), p.console_errors
    finally:
        p.close()


def test_draw_with_a_finger_on_a_touch_screen(browser, server, tmp_path):
    p = Page(browser, server.url + "/", viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True,
             device_scale_factor=2)
    try:
        p.set_key(KEY)
        p.page.uncheck("#auto")
        p.touch_draw(*ONE)
        p.page.click("#predict")
        check_prediction(p, 1)
        p.page.screenshot(path=str(tmp_path / "touch.png"))
        assert (tmp_path / "touch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.errors == [], p.errors
    finally:
        p.close()


def test_a_wrong_key_shows_an_error_on_the_page(browser, server, tmp_path):
    p = Page(browser, server.url + "/")
    try:
        page = p.page
        assert page.input_value("#key") == ""  # a fresh browser profile: nothing stored
        p.set_key("not-the-key")
        page.uncheck("#auto")
        p.draw(*ONE)
        page.click("#predict")
        status = p.wait_answer()
        assert status.startswith("401: ") and "API key" in status, status
        assert page.locator("#status").get_attribute("class") == "error"
        assert p.text("#digit") == "?" and p.probabilities() == [0.0] * 10
        page.screenshot(path=str(tmp_path / "wrong-key.png"))
        assert (tmp_path / "wrong-key.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # no key at all: the same clear message, and the page keeps working once the key is right
        p.set_key("")
        page.click("#predict")
        expect_error = p.wait_answer()
        assert expect_error.startswith("401: "), expect_error
        p.set_key(KEY)
        page.click("#predict")
        check_prediction(p, 1)
        assert p.errors == [], p.errors
    finally:
        p.close()


GRID = [[(40, y), (240, y)] for y in (50, 110, 170, 230)] + [[(x, 40), (x, 240)] for x in (50, 110, 170, 230)]


def test_the_page_says_when_a_drawing_does_not_look_like_a_digit(browser, server):
    """A 7 is answered ood: false and the page shows no warning; a grid of lines is answered ood: true
    (Mahalanobis score ~2x the threshold on the tests' model) and the page says so."""
    p = Page(browser, server.url + "/")
    try:
        page = p.page
        p.set_key(KEY)
        page.uncheck("#auto")
        assert not page.locator("#ood").is_visible()
        for strokes, expect_ood in ((SEVEN, False), (GRID, True)):
            page.click("#clear")
            p.draw(*strokes)
            with page.expect_response(lambda r: r.url.endswith("/predict")) as answer:
                page.click("#predict")
            assert p.wait_answer().startswith("answered in")
            flagged = answer.value.json()["predictions"][0]["ood"]
            assert flagged is expect_ood
            assert page.locator("#ood").is_visible() is expect_ood
        assert p.text("#ood") == "this does not look like a digit"
        page.click("#clear")
        assert not page.locator("#ood").is_visible()
        assert not p.errors and not p.console_errors, (p.errors, p.console_errors)
    finally:
        p.close()

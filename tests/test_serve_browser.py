"""The web page in a real browser: Debian's chromium driven by Playwright, against `weakground serve` started as
a subprocess. Upload a photo, type phrases, see the overlays; upload a bad file, see the error; the server still
answers. With WEAKGROUND_SCREENSHOT=PATH the result page is also saved as a PNG (docs/img/serve.png is made so).
"""

import json
import os
from pathlib import Path

import pytest
from serve_process import running_server

from weakground.data.demo_photos import demo_photo_path

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip("browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser test needs playwright (pip install playwright)")
pytest.importorskip("fastapi", reason="the web app needs the serve extra")


@pytest.fixture(scope="module")
def captioner(tmp_path_factory) -> Path:
    """A tiny captioner trained for the page's Caption button (seconds; the same config as the task's tests)."""
    from test_captioning_task import _config

    from weakground.engine.driver import run_experiment

    tmp = tmp_path_factory.mktemp("captioner")
    mp = pytest.MonkeyPatch()
    mp.setenv("WEAKGROUND_CACHE", str(tmp / "cache"))
    try:
        return Path(run_experiment(_config(), tmp / "run", progress=False, figure=False)["train"]["checkpoint"])
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def server(tmp_path_factory, captioner):
    """`weakground serve` on a free port, as a user would start it; yields its base URL."""
    args = ["--max-upload-mb", "5", "--caption-checkpoint", str(captioner)]
    try:
        with running_server(args, tmp_path_factory.mktemp("serve") / "serve.log") as srv:
            yield srv.url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server + "/")
        page.wait_for_selector("#demo option[value='/api/demo-photos/astronaut']", state="attached")
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"
        browser.close()


def pixel(page, index: int, x: float, y: float) -> list[int]:
    """RGBA of canvas ``index`` at canvas pixel (x, y)."""
    return page.evaluate("([i, x, y]) => Array.from(document.querySelectorAll('#results canvas')[i]"
                         ".getContext('2d').getImageData(Math.floor(x), Math.floor(y), 1, 1).data)", [index, x, y])


def test_upload_locate_and_see_the_overlays(page, server):
    page.set_input_files("#image", str(demo_photo_path("astronaut")))
    page.fill("#phrases", "the astronaut\ncafé table")
    with page.expect_response("**/api/locate") as info:
        page.click("#submit")
    assert info.value.status == 200
    answer = info.value.json()
    page.wait_for_selector("#results[data-state='done']", timeout=20_000)
    assert not page.is_visible("#error")
    cards = page.locator("#results figure.result")
    assert cards.count() == 2
    assert [cards.nth(i).get_attribute("data-phrase") for i in range(2)] == ["the astronaut", "café table"]
    shown = json.loads(page.text_content("#json"))
    for i, result in enumerate(answer["results"]):
        canvas = cards.nth(i).locator("canvas")
        assert canvas.is_visible()
        x, y = result["point"]
        assert canvas.get_attribute("data-point") == f"{x},{y}"
        assert canvas.get_attribute("data-boxes") == str(len(result["boxes"])) != "0"
        assert f"({x}, {y})" in cards.nth(i).locator(".point").text_content()
        # The presence verdict: a "not found" badge exactly on the cards the answer says are not found.
        assert cards.nth(i).get_attribute("data-found") == str(result["found"]).lower()
        assert cards.nth(i).locator(".verdict").count() == (0 if result["found"] else 1)
        assert f"{result['presence']:.2f}" in cards.nth(i).locator(".presence").text_content()
        assert shown["results"][i]["point"] == result["point"] and shown["results"][i]["boxes"] == result["boxes"]
        # The drawing is on the canvas: the cross's centre is white, and so is the first box's left edge.
        width = page.evaluate(f"document.querySelectorAll('#results canvas')[{i}].width")
        scale = width / answer["image"]["width"]
        assert pixel(page, i, (x + 0.5) * scale, (y + 0.5) * scale)[:3] == [255, 255, 255]
        x1, y1, x2, y2 = result["boxes"][0]
        r, g, b, _ = pixel(page, i, x1 * scale, (y1 + y2) / 2 * scale)
        assert (r > 200 and g > 200) or max(r, g, b) < 90  # white / yellow stroke or its dark outline
    assert answer["results"][1]["found"] is False  # no café table in the astronaut photo
    astronaut = answer["results"][0]
    assert astronaut["point"][0] < 400  # the astronaut fills the left two thirds of the 512x512 photo
    if os.environ.get("WEAKGROUND_SCREENSHOT"):
        out = Path(os.environ["WEAKGROUND_SCREENSHOT"])
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)


def test_bad_file_shows_the_reason_and_the_server_keeps_answering(page, server):
    page.set_input_files("#image", {"name": "notes.png", "mimeType": "image/png", "buffer": b"just some text"})
    page.fill("#phrases", "the cat")
    with page.expect_response("**/api/locate") as info:
        page.click("#submit")
    assert info.value.status == 415
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert "415" in message and "notes.png" in message and "not an image format" in message
    assert page.locator("#results canvas").count() == 0
    health = page.request.get(server + "/api/health")
    assert health.ok and health.json()["status"] == "ok"
    # The page and the server both recover: pick a bundled photo from the list and locate again.
    page.select_option("#demo", "/api/demo-photos/chelsea")
    page.wait_for_function("!document.getElementById('preview').hidden && document.getElementById('image').value === ''")
    page.fill("#phrases", "the cat")
    with page.expect_response("**/api/locate") as info:
        page.click("#submit")
    assert info.value.status == 200
    page.wait_for_selector("#results[data-state='done']", timeout=20_000)
    assert page.is_hidden("#error") and page.locator("#results canvas").count() == 1


def test_empty_phrase_and_oversized_upload_show_reasons(page, server):
    page.set_input_files("#image", {"name": "big.png", "mimeType": "image/png", "buffer": bytes(6 * 1024 * 1024)})
    page.fill("#phrases", "the cat")
    page.click("#submit")
    page.wait_for_selector("#results[data-state='error']", state="attached")
    assert "413" in page.text_content("#error") and "limit is 5 MB" in page.text_content("#error")
    page.fill("#phrases", "  \n ")
    page.click("#submit")
    assert "at least one phrase" in page.text_content("#error")


def test_caption_button_writes_a_caption_and_boxes_its_object_words(page, server):
    page.select_option("#demo", "/api/demo-photos/chelsea")
    page.wait_for_function("!document.getElementById('preview').hidden")
    assert page.is_visible("#caption")  # offered because this server was started with --caption-checkpoint
    with page.expect_response("**/api/caption") as info:
        page.click("#caption")
    assert info.value.status == 200
    answer = info.value.json()
    page.wait_for_selector("#caption-result[data-state='done']", timeout=20_000)
    assert page.is_hidden("#error")
    assert page.text_content("#caption-result .caption-text") == answer["caption"]
    marks = page.locator("#caption-result mark")
    assert [marks.nth(i).text_content() for i in range(marks.count())] == [o["word"] for o in answer["objects"]]
    canvas = page.locator("#caption-result canvas")
    assert canvas.get_attribute("data-boxes") == str(len(answer["objects"]))
    assert page.evaluate("document.querySelector('#caption-result canvas').width") == answer["image"]["width"]

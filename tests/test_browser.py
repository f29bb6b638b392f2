"""A real browser (Debian's chromium, driven by Playwright) uploads a photo to the canny app, clicks Run and sees
the detected map and the generated image. The screenshot is kept in outputs/test_artifacts/."""

import json
import os
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image
from skimage import data

from apps.page import build_demo
from apps.pose_editor import detected_json
from apps.runner import Runner
from cldm.outputs import read_params
from tests.helpers import ROOT
from tests.test_apps import NOTE, free_port, task_of

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "outputs/test_artifacts"


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine: install Debian's (apt-get install chromium; .ci/run does) "
                    "or set $CHROMIUM to a Chromium/Chrome executable")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extra)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@contextmanager
def page_of(app, browser, tmp_path):
    """A browser page on `app` served on loopback with the default model, saving into tmp_path/outputs."""
    from toy.model import load_default_model

    task = task_of(app)
    demo = build_demo(task, Runner(task, load_default_model(), NOTE, tmp_path / "outputs", toy=True))
    demo.queue(max_size=4)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        yield page
    finally:
        demo.close()


def run_and_keep_screenshot(page, name):
    page.get_by_role("button", name="Run").click()
    gallery = page.locator(".gallery-container img, .grid-wrap img")
    gallery.nth(1).wait_for(timeout=120_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    return gallery


def test_upload_run_and_see_the_images(browser, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).resize((128, 128)).save(photo)
    with page_of("gradio_canny2image", browser, tmp_path) as page:
        page.locator("input[type=file]").first.set_input_files(str(photo))
        gallery = run_and_keep_screenshot(page, "browser_canny.png")
        assert gallery.count() == 2
        assert page.get_by_text("Seed").count() >= 1 and len(list((tmp_path / "outputs").glob("canny-0*.png"))) == 1


def test_draw_on_the_canvas_and_run(browser, tmp_path):
    with page_of("gradio_scribble2image_interactive", browser, tmp_path) as page:
        canvas = page.locator("canvas").first
        canvas.wait_for(timeout=30_000)
        brush = page.get_by_role("button", name="Brush")
        if brush.count():
            brush.first.click()
        box = canvas.bounding_box()
        cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, min(box["width"], box["height"]) / 4
        page.mouse.move(cx + r, cy)
        page.mouse.down()
        for i in range(1, 61):  # a circle, the shape the default model knows
            page.mouse.move(cx + r * np.cos(2 * np.pi * i / 60), cy + r * np.sin(2 * np.pi * i / 60))
        page.mouse.up()
        run_and_keep_screenshot(page, "browser_scribble_canvas.png")
        hint = sorted((tmp_path / "outputs").glob("scribble_interactive-map-*.png"))
        assert len(hint) == 1
        stroke = (np.asarray(Image.open(hint[0]))[..., 0] > 127).mean()
        assert 0.002 < stroke < 0.3  # the drawn circle, white on black


def test_paint_a_mask_in_the_inpaint_app_and_run(browser, tmp_path):
    """Upload a picture to the inpaint app's editor, paint a stroke over it, run: the saved mask is the stroke,
    and the result keeps the picture away from it."""
    photo = tmp_path / "photo.png"
    Image.fromarray(data.coffee()).resize((192, 128)).save(photo)
    with page_of("gradio_inpaint2image", browser, tmp_path) as page:
        page.locator("input[type=file]").first.set_input_files(str(photo))
        canvas = page.locator("canvas").first
        canvas.wait_for(timeout=30_000)
        page.wait_for_timeout(1000)  # the upload is drawn onto the canvas
        brush = page.get_by_role("button", name="Brush")
        if brush.count():
            brush.first.click()
        box = canvas.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.3, y)
        page.mouse.down()
        for i in range(1, 21):  # a horizontal stroke across the middle
            page.mouse.move(box["x"] + box["width"] * (0.3 + 0.4 * i / 20), y)
        page.mouse.up()
        run_and_keep_screenshot(page, "browser_inpaint.png")
        outputs = tmp_path / "outputs"
        mask = np.asarray(Image.open(next(outputs.glob("inpaint-mask-*.png"))).convert("L"))
        init = np.asarray(Image.open(next(outputs.glob("inpaint-init-*.png")))).astype(int)
        result = np.asarray(Image.open(next(outputs.glob("inpaint-0*.png")))).astype(int)
        assert 0.01 < (mask > 127).mean() < 0.6  # the stroke, not nothing and not everything
        rows = np.nonzero((mask > 127).any(axis=1))[0]
        assert rows.min() > 0 and rows.max() < mask.shape[0] - 1  # a band across the middle
        far = np.ones_like(mask, bool)
        far[max(0, rows.min() - 20):rows.max() + 20] = False  # beyond the mask blur's reach
        assert np.abs(result - init)[far].max() <= 1


def test_one_click_on_an_example_gives_images(browser, tmp_path):
    with page_of("gradio_canny2image", browser, tmp_path) as page:
        page.get_by_text("a drawn star").first.click()
        gallery = page.locator(".gallery-container img, .grid-wrap img")
        gallery.nth(1).wait_for(timeout=120_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser_example.png"), full_page=True)
        assert len(list((tmp_path / "outputs").glob("canny-0*.png"))) == 1


def stroke(page, canvas, start, end, steps=20):
    """Drag the mouse over `canvas` from `start` to `end`, each a fraction (x, y) of its box."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    at = lambda f: (box["x"] + box["width"] * f[0], box["y"] + box["height"] * f[1])  # noqa: E731
    page.mouse.move(*at(start))
    page.mouse.down()
    for i in range(1, steps + 1):
        page.mouse.move(*at([a + (b - a) * i / steps for a, b in zip(start, end)]))
    page.mouse.up()


def test_add_a_second_control_with_a_drawn_region_mask(browser, tmp_path):
    """Open control unit 2, enable it and paint its region mask on the left; run: two maps come back, and the
    saved record has the unit with its mask, white on the left only."""
    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).resize((128, 128)).save(photo)
    with page_of("gradio_canny2image", browser, tmp_path) as page:
        page.locator("input[type=file]").first.set_input_files(str(photo))
        page.get_by_text("Control unit 2").click()
        unit = page.locator(".block").filter(has_text="Control unit 2").last
        unit.get_by_label("Enable").check()
        editor = unit.locator(".block").filter(has_text="Region mask").last
        canvas = editor.locator("canvas").first
        canvas.wait_for(timeout=30_000)
        brush = editor.get_by_role("button", name="Brush")
        if brush.count():
            brush.first.click()
        stroke(page, canvas, (0.33, 0.2), (0.33, 0.8))  # the square mask shows in the middle half of the canvas
        gallery = run_and_keep_screenshot(page, "browser_second_control.png")
        gallery.nth(2).wait_for(timeout=60_000)
        assert gallery.count() == 3  # the two maps and the image
        params = read_params(next((tmp_path / "outputs").glob("canny-0*.png")))
        (unit_record,) = params["controls"]
        assert unit_record["control"] is None and unit_record["strength"] == 1.0  # the model's own
        region = np.asarray(Image.open(tmp_path / "outputs" / unit_record["region_mask"]))
        left, right = region[:, : region.shape[1] // 3], region[:, 2 * region.shape[1] // 3:]
        assert left.max() == 255 and right.max() == 0 and 0.02 < (region > 127).mean() < 0.3


def test_drag_a_joint_and_the_pose_map_follows(browser, tmp_path):
    """Upload a photo of a person to the pose app: the editor shows the detected skeleton; drag its nose and
    run: the map changes along the limbs from the nose's old and new places only, and the downloaded JSON
    has the nose where it was dropped; a person added shows in the map, and goes when removed."""
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    frame = json.loads(detected_json(data.astronaut(), "auto", False, False, 512))
    body = np.reshape(frame["people"][0]["pose_keypoints_2d"], (-1, 3)) / [frame["canvas_width"],
                                                                          frame["canvas_height"], 1]
    nose, neighbours = body[0, :2], body[[1, 14, 15]]  # the neck and the eyes: the nose's limbs end there
    with page_of("gradio_pose2image", browser, tmp_path) as page:
        page.locator("input[type=file]").first.set_input_files(str(photo))
        page.wait_for_function("document.querySelector('.pose-status').textContent.startsWith('1 person')",
                               timeout=60_000)
        detected = run_and_fetch_map(page)
        canvas = page.locator("#pose-editor canvas")
        box = canvas.bounding_box()
        start, end = nose, nose + [0.15, 0.1]
        stroke(page, canvas, start, end, steps=10)
        page.wait_for_timeout(500)
        edited = run_and_fetch_map(page)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download JSON").click()
        moved = json.loads(open(download.value.path()).read())
        status = page.locator(".pose-status")
        page.get_by_role("button", name="Add person").click()
        page.wait_for_function("document.querySelector('.pose-status').textContent.startsWith('2 people')")
        with_two = run_and_fetch_map(page)
        page.get_by_role("button", name="Remove person").click()  # the one just added
        page.wait_for_function("document.querySelector('.pose-status').textContent.startsWith('1 person')")
        assert status.inner_text().startswith("1 person") and np.array_equal(run_and_fetch_map(page), edited)
        assert (with_two != edited).any(axis=2).mean() > 0.01  # a whole skeleton more
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser_pose_editor.png"), full_page=True)
        assert box["width"] > 100 and detected.shape == edited.shape
        changed = np.argwhere((detected != edited).any(axis=2)) / detected.shape[:2]
        assert len(changed) > 20
        ends = np.array([start, end, *(xy for xy, score in zip(neighbours[:, :2], neighbours[:, 2]) if score)])
        low, high = ends.min(axis=0)[::-1] - 0.04, ends.max(axis=0)[::-1] + 0.04  # (y, x), limb width
        assert ((changed >= low) & (changed <= high)).all()  # nothing changed away from the moved limbs
        # the downloaded OpenPose JSON holds the nose where it was dropped, every other point where it was
        dropped = np.reshape(moved["people"][0]["pose_keypoints_2d"], (-1, 3)) / [moved["canvas_width"],
                                                                                moved["canvas_height"], 1]
        assert np.allclose(dropped[0, :2], end, atol=0.01) and np.allclose(dropped[1:], body[1:], atol=1e-6)


def run_and_fetch_map(page):
    """Click Run and read the first picture of the gallery (the map) from the server."""
    import io

    gallery = page.locator(".gallery-container img, .grid-wrap img")
    before = gallery.first.get_attribute("src") if gallery.count() else None
    page.get_by_role("button", name="Run").click()
    page.wait_for_function("(before) => { const img = document.querySelector('.gallery-container img, .grid-wrap "
                           "img'); return img && img.src && img.src !== before; }", arg=before, timeout=60_000)
    source = gallery.first.get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB"))

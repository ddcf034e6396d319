"""The reading room in a real headless Chromium (WebGL through SwiftShader): three planes and 3D render,
a lesion picked in the table is outlined and highlighted, a correction drawn with the mouse is saved as a
new mask version that the API lists, with new numbers.

Two studies go through the same steps: a phantom (48 x 128 x 128, two lesions; fast, no data needed) and
a real CT, 3D-IRCADb 1.17 (512 x 512 x 119, two liver metastases), uploaded as its DICOM zip like a user
would. The job's predictor returns the known labels (the phantom's; the expert mask of the real case), so
the numbers before the correction are known and the test does not depend on the model. Needs Debian's chromium + chromium-driver and the
viewer installed by ``make`` (``npm ci``); skipped with the reason otherwise. Screenshots go to
docs/screenshots/ (reading-room.png, reading-room-corrected.png).
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from liverseg.io import read_volume, write_volume
from liverseg.testing import phantom
from liverseg.web import create_app
from liverseg.web.auth import create_user, new_token

from test_corrections import PhantomPredictor

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "docs" / "screenshots"
VIEWER = REPO / "src" / "liverseg" / "web" / "static" / "vendor" / "niivue.umd.js"
PASSWORD = "radiology rocks 42"


def _driver(tmp_path: Path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    if not VIEWER.is_file():
        pytest.skip(f"the viewer is not installed ({VIEWER.relative_to(REPO)}): run `make viewer` (npm ci)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed (pip install -e '.[dev]')")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--ignore-gpu-blocklist", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1280,1000", "--force-device-scale-factor=1"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    # software WebGL compiles NiiVue's shaders on the page's thread: on a busy 2-core machine one command
    # can wait minutes for it (selenium's default gives up after 120 s)
    driver.command_executor._client_config.timeout = 600
    driver.set_script_timeout(300)
    return driver


def _phantom_study(tmp_path: Path):
    ct, labels = phantom(shape=(48, 128, 128), spacing=(2.5, 1.2, 1.2), lesions=((9.0, None), (6.0, None)), seed=5)
    return write_volume(ct, tmp_path / "phantom.nii.gz"), ct, labels


def _real_study(tmp_path: Path):
    from conftest import SHARED_DATA
    from liverseg.training import find_cases

    folder = SHARED_DATA / "labeled" / "3Dircadb1.17"
    if not (folder / "PATIENT_DICOM.zip").is_file():
        pytest.skip(f"real CT data not found at {folder} (only present in the liverseg workplace)")
    (case,) = find_cases(folder, layout="ircadb")
    ct, labels = case.load()
    return folder / "PATIENT_DICOM.zip", ct, labels


@pytest.fixture(params=["phantom", "3Dircadb1.17"])
def served(request, tmp_path):
    from waitress.server import create_server

    upload, ct, labels = (_phantom_study if request.param == "phantom" else _real_study)(tmp_path)
    app = create_app(data_dir=tmp_path / "data", start_workers=False, job_timeout_s=None,  # a busy machine
                     predictor_factory=lambda: PhantomPredictor(labels.array))
    store = app.extensions["liverseg"].store
    create_user(store, name="radiologist", password=PASSWORD)
    token = new_token()
    store.add_token(store.user_by_name("radiologist").id, token)
    api = app.test_client()
    h = {"Authorization": f"Bearer {token}"}
    with open(upload, "rb") as f:
        sid = api.post("/api/studies", headers=h, data={"files": (f, upload.name)},
                       content_type="multipart/form-data").json["id"]
    assert app.extensions["liverseg"].pool.run_pending() == 1
    assert api.get(f"/api/studies/{sid}", headers=h).json["status"] == "done"
    srv = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.effective_port}", sid, api, h, ct
    srv.close()


def _canvas_png(driver, save_as: str | None = None):
    """The viewing area (both canvases) cut from one screenshot of the window; the window's shot saved too."""
    from PIL import Image

    png = driver.get_screenshot_as_png()
    if save_as:
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / save_as).write_bytes(png)
    r = driver.execute_script("const r = document.getElementById('rr-canvas').getBoundingClientRect();"
                              "return [r.left, r.top, r.width, r.height]")
    img = Image.open(io.BytesIO(png)).convert("RGB")
    return img.crop((int(r[0]), int(r[1]), int(r[0] + r[2]), int(r[1] + r[3])))


def _tile_stats(img, tile) -> dict:
    a = np.asarray(img.crop((int(tile["x"]), int(tile["y"]), int(tile["x"] + tile["w"]), int(tile["y"] + tile["h"]))))
    a = a.astype(np.int32)
    # the highlight (255, 255, 0) over the CT at the overlay's opacity: red = green, well above blue
    yellow = (a[..., 0] > 140) & (np.abs(a[..., 0] - a[..., 1]) < 30) & (a[..., 2] < 0.6 * a[..., 1])
    return {"std": float(a.std()), "lit": float((a.max(axis=2) > 40).mean()), "yellow": int(yellow.sum())}


def _wait_ready(driver, timeout: float = 300.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        lambda d: d.execute_script("return document.getElementById('reading-room').dataset.state") in ("ready", "error"))
    state = driver.execute_script("return document.getElementById('reading-room').dataset.state")
    assert state == "ready", driver.find_element("id", "rr-message").text


T0 = time.monotonic()


def _t(what):
    print(f"{time.monotonic() - T0:7.1f} s  {what}", flush=True)


def test_reading_room_three_planes_3d_lesion_pick_and_a_saved_correction(served, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base, sid, api, h, ct = served
    before = api.get(f"/api/studies/{sid}", headers=h).json
    assert before["mask_version"] == 1 and "mesh-lesion-1.ply" in before["files"]
    driver = _driver(tmp_path)
    wait = WebDriverWait(driver, 30, poll_frequency=0.2)
    try:
        driver.get(base + "/login")
        driver.execute_script("localStorage.setItem('liverseg-theme', 'dark'); localStorage.removeItem('liverseg-palette')")
        driver.find_element(By.ID, "username").send_keys("radiologist")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-button").click()
        wait.until(lambda d: "/history" in d.current_url)
        _t('driver.get(f"{base}/studies/{s')
        driver.get(f"{base}/studies/{sid}")
        _wait_ready(driver)
        _t(f"viewer ready; its own timings (ms since start): {driver.execute_script('return window.readingRoom.timings_ms')}")
        assert "Mask version 1" in driver.find_element(By.ID, "version-bar").text
        assert driver.execute_script("return window.readingRoom.nv3d.meshes.length") == 3  # liver + 2 lesions

        _t('# three planes and the 3D view')
        tiles = driver.execute_script("return window.readingRoom.tiles()")
        planes = sorted(t["plane"] for t in tiles)
        assert planes == ["3d", "axial", "coronal", "sagittal"], tiles

        _t('# keys and wheel')
        # keys and wheel step the same way: down = next slice
        label = driver.find_element(By.ID, "slice-label")
        z0 = int(label.text.split("/")[0])
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
        wait.until(lambda d: int(label.text.split("/")[0]) == z0 + 1)
        from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

        canvas = driver.find_element(By.ID, "rr-canvas")
        axial = next(t for t in tiles if t["plane"] == "axial")
        cw, ch = canvas.size["width"], canvas.size["height"]
        ox = int(axial["x"] + axial["w"] / 2 - cw / 2)
        oy = int(axial["y"] + axial["h"] / 2 - ch / 2)
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas, ox, oy), 0, 120).perform()
        wait.until(lambda d: int(label.text.split("/")[0]) == z0 + 2)

        _t('# presets and mouse-free')
        # presets and mouse-free W/L
        driver.find_element(By.CSS_SELECTOR, ".rr-preset[data-preset='bone']").click()
        assert driver.find_element(By.ID, "win-width").get_attribute("value") == "1800"
        assert driver.execute_script("return window.readingRoom.nv.volumes[0].cal_max") == pytest.approx(1300)
        driver.find_element(By.CSS_SELECTOR, ".rr-preset[data-preset='abdomen']").click()
        # mouse-drag W/L: a right-button drag on the axial view changes width and level (NiiVue's windowing)
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        from selenium.webdriver.common.actions.mouse_button import MouseButton

        assert driver.find_element(By.ID, "win-width").get_attribute("value") == "400"
        drag = ActionBuilder(driver)
        drag.pointer_action.move_to(canvas, ox, oy).pointer_down(MouseButton.RIGHT)
        for _ in range(6):
            drag.pointer_action.move_by(12, -8)
        drag.pointer_action.pointer_up(MouseButton.RIGHT)
        drag.perform()
        wait.until(lambda d: d.find_element(By.ID, "win-width").get_attribute("value") != "400")
        dragged = (float(driver.find_element(By.ID, "win-width").get_attribute("value")),
                   float(driver.find_element(By.ID, "win-level").get_attribute("value")))
        cal = driver.execute_script("const v = window.readingRoom.nv.volumes[0]; return [v.cal_min, v.cal_max]")
        assert dragged[0] == pytest.approx(cal[1] - cal[0], abs=1) and dragged[1] == pytest.approx(sum(cal) / 2, abs=1)
        assert not driver.find_elements(By.CSS_SELECTOR, ".rr-preset.active")  # no preset is shown as active
        driver.find_element(By.CSS_SELECTOR, ".rr-preset[data-preset='abdomen']").click()
        assert driver.find_element(By.ID, "win-width").get_attribute("value") == "400"
        # the colour-blind-safe palette recolours the overlay (NiiVue's drawing LUT: label 1 = liver)
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element(By.ID, "palette")).select_by_value("cbsafe")
        assert driver.execute_script("return Array.from(window.readingRoom.nv.drawLut.lut.slice(4, 7))") == [0, 114, 178]
        Select(driver.find_element(By.ID, "palette")).select_by_value("standard")
        # HU under the cursor
        ActionChains(driver).move_to_element_with_offset(canvas, ox, oy).perform()
        wait.until(lambda d: "HU at" in d.find_element(By.ID, "rr-probe").text)

        _t('# pick the largest lesion')
        # pick the largest lesion in the table: crosshair on its slice, outlined in 2D, yellow in 3D
        rows = driver.find_elements(By.CSS_SELECTOR, "#lesion-table tbody tr")
        assert len(rows) == 2
        lesion_slice = int(rows[0].get_attribute("data-slice"))
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", rows[0])
        rows[0].click()
        wait.until(lambda d: "current" in rows[0].get_attribute("class"))
        wait.until(lambda d: int(label.text.split("/")[0]) == lesion_slice + 1)
        wait.until(lambda d: d.execute_script("return window.readingRoom.outlined") == 1)
        assert driver.execute_script("return window.readingRoom.highlighted") == before["report"]["analysis"][
            "lesions"][0]["voxel_count"]  # the whole lesion, and only it, is picked
        driver.execute_script("window.scrollTo(0, document.getElementById('reading-room').getBoundingClientRect().top"
                              " + window.scrollY - 70)")
        time.sleep(0.5)
        img = _canvas_png(driver, save_as="reading-room.png")
        by_plane = {t["plane"]: _tile_stats(img, t) for t in tiles}
        for plane, stats in by_plane.items():  # the three planes and the 3D view all draw something
            assert stats["std"] > 8 and stats["lit"] > 0.02, (plane, stats)
        for plane in ("axial", "coronal", "sagittal", "3d"):  # the picked lesion, in yellow, in all four views
            assert by_plane[plane]["yellow"] > 20, by_plane

        _t('# a correction:')
        # a correction: paint tumor with the mouse on the axial view, away from the lesion
        driver.find_element(By.ID, "rr-edit").click()
        driver.find_element(By.CSS_SELECTOR, ".rr-pen[data-pen='2']").click()
        driver.execute_script("document.getElementById('pen-size').value = '9';"
                              "document.getElementById('pen-size').dispatchEvent(new Event('change'))")
        def stroke():
            chain = ActionChains(driver).move_to_element_with_offset(canvas, ox - int(axial["w"] * 0.18), oy)
            chain.click_and_hold()
            for _ in range(8):
                chain.move_by_offset(4, 3)
            chain.release().perform()

        stroke()
        wait.until(lambda d: d.find_element(By.ID, "rr-save").is_enabled())
        count_tumor = ("const b = window.readingRoom.nv.drawBitmap; let n = 0;"
                       "for (let i = 0; i < b.length; i++) if (b[i] === 2 || b[i] === 3) n++; return n")
        painted = driver.execute_script(count_tumor)
        assert painted > before["report"]["analysis"]["tumor_voxel_count"]
        driver.find_element(By.ID, "rr-undo").click()  # undo takes the stroke back ...
        assert driver.execute_script(count_tumor) == before["report"]["analysis"]["tumor_voxel_count"]
        stroke()  # ... and it is drawn again
        wait.until(lambda d: d.execute_script(count_tumor) > before["report"]["analysis"]["tumor_voxel_count"])
        painted = driver.execute_script(count_tumor)
        assert painted > before["report"]["analysis"]["tumor_voxel_count"]
        _t('driver.find_element(By.ID, "rr')
        driver.find_element(By.ID, "rr-save").click()
        # the save re-measures every output of the CT inside the request (seconds when quiet, minutes on a loaded 2-core machine)
        WebDriverWait(driver, 240, poll_frequency=0.5).until(lambda d: "version=2" in d.current_url)
        _wait_ready(driver)
        bar = driver.find_element(By.ID, "version-bar").text
        assert "Mask version 2" in bar and "radiologist" in bar
        time.sleep(0.5)
        _canvas_png(driver, save_as="reading-room-corrected.png")

        _t('# the API lists')
        # the API lists the new volume; the numbers are those of the painted mask
        after = api.get(f"/api/studies/{sid}", headers=h).json
        assert after["mask_version"] == 2
        v2 = after["versions"][-1]
        assert v2["edited_by"] == "radiologist" and v2["source"] == "viewer" and "mask.nii.gz" in v2["files"]
        assert v2["changed_voxels"] > 0
        saved = tmp_path / "v2.nii.gz"
        saved.write_bytes(api.get(f"/api/studies/{sid}/versions/2/files/mask.nii.gz", headers=h).data)
        mask2 = read_volume(saved).array
        assert int(np.count_nonzero(mask2 == 2)) == after["report"]["analysis"]["tumor_voxel_count"] == painted
        assert after["summary"]["tumor_volume_ml"] > before["summary"]["tumor_volume_ml"]
        assert mask2.shape == ct.shape
        # ... and a new report: version 2's report.json/HTML/PDF carry the corrected numbers and say who corrected it
        assert {"report.json", "report.html", "report.pdf", "lesions.csv"} <= set(v2["files"])
        doc = api.get(f"/api/studies/{sid}/versions/2/files/report.json", headers=h).json
        assert doc["analysis"]["tumor_voxel_count"] == painted
        html = api.get(f"/api/studies/{sid}/versions/2/files/report.html", headers=h).data.decode("utf-8")
        assert "corrected by hand (version 2, by radiologist" in html
        assert api.get(f"/api/studies/{sid}/versions/2/files/report.pdf", headers=h).data[:5] == b"%PDF-"
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not logs, logs
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)

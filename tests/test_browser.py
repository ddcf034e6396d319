"""End to end in a real headless Chromium: sign in, upload a DICOM zip, wait, read it in NiiVue, download.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the real
DICOM series in ../shared/data; skipped with the reason otherwise. The app runs with
waitress on 127.0.0.1 in a thread, as ``liverseg serve`` runs it. Screenshots go to
docs/screenshots/ (dashboard.png is the one in the README).
"""

from __future__ import annotations

import gzip
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest

from liverseg.web import create_app
from liverseg.web.auth import create_user

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.realdata]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "docs" / "screenshots"
PASSWORD = "radiology rocks 42"


def _browser_or_skip(tmp_path: Path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed (pip install -e '.[dev]')")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--ignore-gpu-blocklist", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1480,1000", "--force-device-scale-factor=1"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.command_executor._client_config.timeout = 600  # a busy 2-core machine: see test_reading_room_browser
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver, downloads


def _predictor_factory(tiny_3d: Path, tiny_2d: Path):
    """The bundled real model when present (nicer screenshots), else the tiny test bundles."""
    from liverseg.inference import Predictor

    real = REPO / "models" / "liver-tumor-3d"
    if _real_model_bundled():
        real2d = REPO / "models" / "liver-tumor-2d"
        return lambda: Predictor(real, model_2d=real2d if real2d.is_dir() else None, threads=2)
    return lambda: Predictor(tiny_3d, model_2d=tiny_2d, threads=1)


@pytest.fixture()
def server(tmp_path, tiny_bundle_3d, tiny_bundle_2d):
    from waitress.server import create_server

    app = create_app(data_dir=tmp_path / "data", workers=1,
                     predictor_factory=_predictor_factory(tiny_bundle_3d, tiny_bundle_2d))
    create_user(app.extensions["liverseg"].store, name="radiologist", password=PASSWORD)
    srv = create_server(app, host="127.0.0.1", port=0, threads=4, max_request_body_size=2 * 1024**3)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.effective_port}"
    srv.close()
    app.extensions["liverseg"].pool.stop(timeout=30)


def _real_model_bundled() -> bool:
    return (REPO / "models" / "liver-tumor-3d" / "weights.safetensors").is_file()


def _dicom_zip(shared_data: Path, tmp_path: Path) -> Path:
    """The DICOM zip to upload.

    With the bundled real model: 3D-IRCADb 1.17's whole CT (512 x 512 x 119, liver
    metastases; the case the model was not trained on), as the user would upload it.
    With only the tiny test bundles: a zip of the dcmqi 3-slice CT series (its SEG object
    and NRRD left out), which keeps the job short.
    """
    ircad = shared_data / "labeled" / "3Dircadb1.17" / "PATIENT_DICOM.zip"
    if _real_model_bundled() and ircad.is_file():
        return ircad
    series = shared_data / "unlabeled" / "dcmqi-ct-3slice"
    files = sorted(series.glob("ct-3slice_*.dcm"))
    if not files:
        pytest.skip(f"{series} holds no ct-3slice_*.dcm")
    out = tmp_path / "ct-3slice.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f"ct-3slice/{f.name}")
    return out


def _shot(driver, name: str, *, height: int | None = None) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    if height:
        driver.set_window_size(1480, height)
        time.sleep(0.5)
    driver.save_screenshot(str(SHOTS / name))


def test_browser_end_to_end(server, shared_data, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    archive = _dicom_zip(shared_data, tmp_path)
    driver, downloads = _browser_or_skip(tmp_path)
    wait = WebDriverWait(driver, 30)
    try:
        # sign in (a wrong password first)
        driver.get(server + "/login")
        # the whole 512 x 512 x 119 CT in software WebGL takes minutes here: this test leaves the viewer to
        # tests/test_reading_room_browser.py (a phantom) and checks that the page holds it, unopened
        driver.execute_script("localStorage.setItem('liverseg-theme', 'dark'); localStorage.setItem('liverseg-viewer', 'manual')")
        driver.get(server + "/login")
        driver.find_element(By.ID, "username").send_keys("radiologist")
        driver.find_element(By.ID, "password").send_keys("not the password")
        driver.find_element(By.ID, "login-button").click()
        wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".alert.error"), "Wrong user name"))
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        _shot(driver, "login.png")
        driver.find_element(By.ID, "login-button").click()
        wait.until(EC.url_contains("/history"))

        # upload the DICOM zip with a note
        driver.get(server + "/upload")
        driver.find_element(By.ID, "file-input").send_keys(str(archive))
        wait.until(EC.text_to_be_present_in_element((By.ID, "selection"), archive.name))
        driver.find_element(By.ID, "note").send_keys("Follow-up, known liver metastases")
        _shot(driver, "upload.png")
        driver.find_element(By.ID, "upload-button").click()
        wait.until(EC.presence_of_element_located((By.ID, "job")))
        try:  # catch it while it runs, for the screenshot
            WebDriverWait(driver, 20, poll_frequency=0.2).until(
                lambda d: d.find_element(By.ID, "job-status").text.lower() == "running"
                and d.find_element(By.ID, "job-percent").text not in ("0 %", ""))
            _shot(driver, "job.png")
        except Exception:  # already done (reloaded) or still queued: no job screenshot this time
            pass

        # the job page reloads itself into the dashboard when the job is done
        WebDriverWait(driver, 300).until(
            lambda d: d.find_elements(By.ID, "reading-room") or d.find_elements(By.ID, "retry-button")
            and d.find_element(By.ID, "retry-button").is_displayed()
        )
        assert driver.find_elements(By.ID, "reading-room"), driver.find_element(By.ID, "job-error").text
        assert driver.execute_script("return document.getElementById('reading-room').dataset.state") == "manual"
        assert driver.find_element(By.ID, "rr-open").is_displayed()
        assert driver.execute_script("return typeof window.niivue.Niivue") == "function"  # served from the app

        # metrics, pie chart, lesion table (each row carries the lesion for the viewer)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".metric")) == 4
        assert driver.find_element(By.ID, "pie").is_displayed()
        rows = driver.find_elements(By.CSS_SELECTOR, "#lesion-table tbody tr")
        lesions_card = driver.find_element(By.CSS_SELECTOR, ".lesions-card")
        assert lesions_card.is_displayed()
        if rows:
            assert rows[0].get_attribute("data-lesion") == "1" and rows[0].get_attribute("data-centroid") != "null"
        else:
            assert "No tumor was found" in lesions_card.text
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1.0)
        _shot(driver, "dashboard.png", height=1420)
        driver.set_window_size(1480, 1000)

        # download the mask
        link = driver.find_element(By.ID, "dl-mask-nii-gz")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
        link.click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = [p for p in downloads.glob("*mask.nii.gz")]
            if done and not list(downloads.glob("*.crdownload")):
                break
            time.sleep(0.2)
        assert done, f"no mask downloaded: {os.listdir(downloads)}"
        assert gzip.decompress(done[0].read_bytes())[344:348] == b"n+1\0"

        # history lists the study with its note
        driver.get(server + "/history")
        assert "Follow-up, known liver metastases" in driver.find_element(By.ID, "history-table").text
        _shot(driver, "history.png")
        # the browser console saw no CSP violation or script error
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
                and not ("/login" in e["message"] and "401" in e["message"])]  # the wrong password above
        assert not logs, logs
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)

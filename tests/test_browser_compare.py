"""The comparison page in a real headless Chromium: the response, the change table, and both panes
scrolled together (linked scrolling in the registered space). Screenshot: docs/screenshots/comparison.png."""

from __future__ import annotations

import threading
import time

import pytest

from liverseg.testing import phantom
from liverseg.testing.moved import rigidly_moved
from liverseg.web import create_app
from liverseg.web.auth import create_user

from test_browser import PASSWORD, _browser_or_skip, _shot
from test_web import login
from test_web_compare import GRID, A, S, finished_study

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _never():
    raise AssertionError("no model runs in this test")


def test_comparison_page_scrolls_both_scans_together(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from waitress.server import create_server

    app = create_app(data_dir=tmp_path / "data", start_workers=False, predictor_factory=_never)
    create_user(app.extensions["liverseg"].store, name="ada", password=PASSWORD)
    setup = app.test_client()
    app.config["SESSION_COOKIE_SECURE"] = False
    assert login(setup, "ada", PASSWORD).status_code == 302
    base = phantom(**GRID, lesions=((12.0, A), (3.5, S)))
    follow = rigidly_moved(*phantom(**GRID, lesions=((7.2, A), (3.5, S), (5.0, (77.5, 64.5, 46.5)))),
                           rotation_deg=(6, 2, -1), shift_mm=(3, -5, 4), spacing=(2.0, 1.6, 1.6))
    b = finished_study(app, setup, tmp_path, *base, "baseline")
    f = finished_study(app, setup, tmp_path, *follow, "followup")
    srv = create_server(app, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=srv.run, daemon=True).start()
    url = f"http://127.0.0.1:{srv.effective_port}"
    driver, _ = _browser_or_skip(tmp_path)
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(url + "/login")
        driver.find_element(By.ID, "username").send_keys("ada")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-button").click()
        wait.until(EC.url_contains("/history"))
        driver.get(f"{url}/studies/{f}")
        driver.find_element(By.ID, "compare-link").click()
        wait.until(EC.url_contains("/compare"))
        assert driver.find_element(By.ID, f"b-{b}").is_selected()
        driver.find_element(By.ID, "compare-button").click()
        # the running page polls and reloads itself when the comparison is done
        wait.until(EC.presence_of_element_located((By.ID, "response")))
        assert driver.find_element(By.ID, "response").text == "PD"  # a new lesion, though the target shrank
        kinds = [tr.get_attribute("data-kind") for tr in driver.find_elements(By.CSS_SELECTOR, "#change-table tbody tr")]
        assert sorted(kinds) == ["matched", "matched", "new"]
        base_img, follow_img = driver.find_element(By.ID, "img-baseline"), driver.find_element(By.ID, "img-followup")

        def slices():
            return [img.get_attribute("src").rsplit("/", 1)[-1] for img in (base_img, follow_img)]

        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0"
                                              " && arguments[1].complete && arguments[1].naturalWidth > 0",
                                              base_img, follow_img))
        first = slices()
        assert first[0] == first[1]  # one slice index drives both panes
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
        wait.until(lambda d: slices() != first)
        after = slices()
        assert after[0] == after[1] and int(after[0][:-4]) == int(first[0][:-4]) + 1
        # a row of the table jumps both panes to its slice
        new_row = driver.find_element(By.CSS_SELECTOR, '#change-table tbody tr[data-kind="new"]')
        new_row.click()
        z = new_row.get_attribute("data-slice")
        wait.until(lambda d: slices() == [f"{z}.png", f"{z}.png"])
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1.0)
        _shot(driver, "comparison.png", height=2150)
    finally:
        driver.quit()
        srv.close()

"""Reports and the dashboard say what happened, in a layout that holds (issue 18, item 8)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from liverseg.analysis import analyze
from liverseg.io import Volume
from liverseg.reporting import write_report_files
from liverseg.testing import phantom

from test_web_hardening import FakePredictor, web  # noqa: F401  (fixture)
from test_web import tiny_nifti

RUN = {"case": "CT abdomen", "input": "CT abdomen.nii.gz", "note": "follow-up after TACE, compare with May",
       "model": {"name": "tiny", "sha256": "ab" * 32}}


def _many_lesions(n: int = 55) -> tuple[Volume, Volume]:
    """Up to 50 small lesions in a liver that touches both ends of a thick-slice scan (several flags)."""
    ct, _ = phantom(shape=(30, 64, 64), spacing=(6.0, 2.0, 2.0), lesions=())
    labels = np.zeros(ct.shape, np.uint8)
    labels[:, 8:56, 8:56] = 1
    k = 0
    for z in range(1, 29, 3):
        for y in range(12, 52, 8):
            if k < n:
                labels[z, y:y + 2, 12 + (k % 5) * 8: 14 + (k % 5) * 8] = 2
                k += 1
    return ct, ct.with_array(labels, is_hu=False)


def _reports(tmp_path, ct, labels, run=RUN):
    """Write the reports; their PDF pages are checked in test_pdf_reportlab.py."""
    return write_report_files(tmp_path / "out", ct=ct, labels=labels, analysis=analyze(labels, ct), run_info=run)


def test_upload_note_reaches_the_html(tmp_path):
    ct, labels = _many_lesions(3)
    assert "follow-up after TACE" in _reports(tmp_path, ct, labels)["html"].read_text()


def test_a_study_without_liver_says_so_instead_of_no_tumor(tmp_path):
    ct, _ = phantom(shape=(8, 40, 40), spacing=(4.0, 2.0, 2.0), lesions=())
    labels = ct.with_array(np.zeros(ct.shape, np.uint8), is_hu=False)
    html = _reports(tmp_path, ct, labels)["html"].read_text()
    assert "No liver was found" in html and "No liver tumor was found" not in html


def test_dashboard_without_liver_shows_no_green_donut(web, tmp_path):  # noqa: F811
    class NoLiver(FakePredictor):
        def predict(self, ct, **kw):
            out = super().predict(ct, **kw)
            out.labels.array[:] = 0
            return out

    app, c, h = web(predictor=NoLiver())
    sid = c.post("/api/studies", headers=h, content_type="multipart/form-data",
                 data={"files": [(io.BytesIO(tiny_nifti(tmp_path / "x.nii.gz").read_bytes()), "x.nii.gz")]}
                 ).get_json()["id"]
    app.extensions["liverseg"].pool.run_pending()
    page = c.get(f"/studies/{sid}").text
    assert 'id="no-liver"' in page and "Liver without tumor" not in page
    assert "No tumor was found in the liver" not in page and "No liver was found, so no tumor" in page


def test_report_title_names_the_upload_not_the_storage_folder(web, tmp_path):  # noqa: F811
    app, c, h = web()
    sid = c.post("/api/studies", headers=h, content_type="multipart/form-data",
                 data={"files": [(io.BytesIO(tiny_nifti(tmp_path / "x.nii.gz").read_bytes()), "Liver CT May.nii.gz")],
                       "note": "baseline"}).get_json()["id"]
    app.extensions["liverseg"].pool.run_pending()
    html = c.get(f"/api/studies/{sid}/files/report.html", headers=h).text
    title = re.search(r"<title>(.*?)</title>", html).group(1)
    assert title.endswith("Liver_CT_May") and "— input" not in title and "— scan" not in title
    assert "baseline" in html


def test_arrow_keys_and_wheel_step_the_same_way():
    # the reading room's handlers (tests/test_reading_room_browser.py drives them in Chromium too)
    js = (Path(__file__).parents[1] / "src/liverseg/web/static/reading_room.js").read_text()
    keys = re.search(r"const by = \{([^}]*)\}\[e\.key\]", js).group(1)
    steps = {k.strip(): int(v) for k, v in (kv.split(":") for kv in keys.split(","))}
    wheel = re.search(r'step\(axis, e\.deltaY > 0 \? (-?\d+) : (-?\d+)\)', js)
    wheel_down = int(wheel.group(1))
    assert np.sign(steps["ArrowDown"]) == np.sign(wheel_down) == np.sign(steps["PageDown"])
    assert np.sign(steps["ArrowUp"]) == -np.sign(wheel_down)


def test_long_names_wrap_in_the_page_css():
    css = (Path(__file__).parents[1] / "src/liverseg/web/static/app.css").read_text()
    rule = re.search(r"([^{}]*)\{[^}]*overflow-wrap: anywhere", css)
    assert rule and all(sel in rule.group(1) for sel in (".page-head h1", ".dialog", "td a"))

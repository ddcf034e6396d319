"""Report files: JSON, CSV, PNG overlays, self-contained HTML, PDF."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from liverseg.analysis import analyze
from liverseg.io import Volume
from liverseg.reporting import DISCLAIMER, render_slice_png, render_slice_rgb, write_report_files
from liverseg.reporting.overlays import LIVER_RGB, TUMOR_RGB, display_transform, overlay_slices
from liverseg.testing import phantom, phantom_2d

RUN = {
    "case": "phantom-1",
    "input": "phantom.nii.gz",
    "model": {"name": "nnformer-liver-3d", "version": "0.1", "sha256": "ab" * 32},
    "device": "cpu",
    "timings_s": {"predict": 1.5},
}


@pytest.fixture(scope="module")
def case():
    ct, lab = phantom(shape=(16, 64, 64), spacing=(3.0, 2.0, 2.0), lesions=((8.0, None), (4.0, None)))
    return ct, lab, analyze(lab, ct)


def test_render_slice_colours_window_and_png():
    ct = Volume(array=np.array([[[-1000, 40, 240], [40, 40, 40]]], np.int16), spacing=(1, 1, 1))
    lab = ct.with_array(np.array([[[0, 1, 2], [0, 0, 0]]], np.uint8))
    plain = render_slice_rgb(ct, None, 0)
    assert plain.shape == (2, 3, 3) and plain.dtype == np.uint8
    assert plain[0, 0].tolist() == [0, 0, 0]  # below the window: black
    assert plain[0, 1].tolist() == [127, 127, 127]  # the level: mid grey
    assert plain[0, 2].tolist() == [255, 255, 255]  # at the top of the window: white
    filled = render_slice_rgb(ct, lab, 0, opacity=1.0, outline=False)
    assert filled[0, 1].tolist() == list(LIVER_RGB) and filled[0, 2].tolist() == list(TUMOR_RGB)
    assert render_slice_rgb(ct, lab, 0, opacity=1.0, show_tumor=False, outline=False)[0, 2].tolist() == list(LIVER_RGB)
    png = render_slice_png(ct, lab, 0, window=(2000, 0))
    img = Image.open(io.BytesIO(png))
    assert img.size == (3, 2) and img.mode == "RGB"
    with pytest.raises(ValueError, match="outside"):
        render_slice_rgb(ct, lab, 1)
    with pytest.raises(ValueError, match="opacity"):
        render_slice_rgb(ct, lab, 0, opacity=2.0)


def test_radiological_orientation_follows_direction():
    arr = np.zeros((1, 2, 3), np.int16)
    arr[0, 0, 0] = 240  # index (y=0, x=0)
    ct = Volume(array=arr, spacing=(1, 1, 1))
    assert render_slice_rgb(ct, None, 0)[0, 0, 0] == 255
    flipped = Volume(array=arr, spacing=(1, 1, 1), direction=np.diag([-1.0, -1.0, 1.0]))  # RAS-like storage
    assert display_transform(flipped.direction) == (False, True, True)
    assert render_slice_rgb(flipped, None, 0)[-1, -1, 0] == 255


def test_overlay_slices_cover_lesions_and_liver_centre(case):
    _, lab, a = case
    zs = [z for z, _ in overlay_slices(lab, a)]
    assert a.lesions[0].diameter_slice in zs and a.lesions[1].diameter_slice in zs
    assert any("liver" in t for _, t in overlay_slices(lab, a)) or len(set(zs)) < 3


def test_write_report_files(case, tmp_path):
    ct, lab, a = case
    paths = write_report_files(tmp_path / "out", ct=ct, labels=lab, analysis=a, run_info=RUN)
    assert set(paths) == {"json", "csv", "overlay", "montage", "html", "pdf"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    doc = json.loads(paths["json"].read_text())
    assert doc["analysis"]["tumor_count"] == 2 and doc["run"]["model"]["sha256"] == "ab" * 32
    assert doc["analysis"]["liver_volume_ml"] == pytest.approx(a.liver_volume_ml)
    assert doc["disclaimer"] == DISCLAIMER and doc["files"]["pdf"] == "report.pdf"
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [int(r["id"]) for r in rows] == [1, 2]
    assert float(rows[0]["longest_axial_diameter_mm"]) == pytest.approx(a.lesions[0].longest_axial_diameter_mm)
    assert rows[0]["longest_axial_diameter_px"] == ""  # not computable -> empty, not 0
    html = paths["html"].read_text()
    assert html.count('src="data:image/png;base64,') == 2
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "not for diagnostic use" in html and "includes the tumor" in html
    assert "nnformer-liver-3d" in html and "ab" * 32 in html
    assert f"{a.liver_volume_ml:.1f} mL" in html
    assert paths["pdf"].read_bytes()[:5] == b"%PDF-"
    for key in ("overlay", "montage"):
        w, h = Image.open(paths[key]).size
        assert w > 200 and h > 100


def test_flags_appear_in_plain_words(tmp_path):
    ct, lab = phantom_2d(shape=(64, 64), spacing=(1.5, 1.5), lesions=((6.0, None),))
    png_ct = ct.with_array(np.clip(ct.array + 160, 0, 255).astype(np.uint8), spacing=None, is_hu=False)
    png_lab = lab.with_array(lab.array, spacing=None)
    a = analyze(png_lab, png_ct)
    paths = write_report_files(tmp_path, ct=png_ct, labels=png_lab, analysis=a, run_info={})
    html = paths["html"].read_text()
    assert "does not say its pixel size" in html and "single slice" in html.lower()
    assert "Longest diameter (px)" in html
    assert "unknown" in html  # model unknown: said so, not blank


"""A case's output folder: checked before predicting, user files kept on overwrite, a SEG that cannot be
written does not cost the other outputs, lesions.csv numbers slices as the page does (issue 18, items 4, 6, 8).
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

import bad_inputs as bi
from liverseg.cli import main
from liverseg.errors import InputError
from liverseg.inference import run_case
from liverseg.io import write_volume
from liverseg.testing import phantom

from test_web_hardening import FakePredictor


class CountingPredictor(FakePredictor):
    calls = 0

    def predict(self, ct, **kw):
        type(self).calls += 1
        return super().predict(ct, **kw)


@pytest.fixture()
def scan(tmp_path):
    ct, _ = phantom(shape=(8, 40, 40), spacing=(4.0, 2.0, 2.0), lesions=())
    return write_volume(ct, tmp_path / "ct.nii.gz")


@pytest.mark.parametrize("make_out, match", [
    (lambda t: (t / "file").write_text("x") and t / "file", "is a file"),
    (lambda t: (t / "file").write_text("x") and t / "file" / "case", "cannot be written"),
    (lambda t: t / ("n" * 300), "cannot be written"),
])
def test_unwritable_output_is_refused_before_predicting(tmp_path, scan, make_out, match):
    out = make_out(tmp_path)
    CountingPredictor.calls = 0
    with pytest.raises(InputError, match=match):
        run_case(scan, out, predictor=CountingPredictor(), overwrite=True)
    assert CountingPredictor.calls == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_is_refused_before_predicting(tmp_path, scan):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    CountingPredictor.calls = 0
    with pytest.raises(InputError, match="cannot be written"):
        run_case(scan, ro / "case", predictor=CountingPredictor())
    assert CountingPredictor.calls == 0


def test_overwrite_replaces_only_what_liverseg_wrote(tmp_path, scan):
    out = tmp_path / "case"
    run_case(scan, out, predictor=FakePredictor())
    (out / "my notes.txt").write_text("keep me")
    (out / "report.json").write_text("{}")  # liverseg's own file: replaced
    run_case(scan, out, predictor=FakePredictor(), overwrite=True)
    assert (out / "my notes.txt").read_text() == "keep me"
    assert json.loads((out / "report.json").read_text())["schema"].startswith("liverseg.report")


def test_report_json_has_no_model_path(tmp_path, scan):
    doc = run_case(scan, tmp_path / "case", predictor=FakePredictor(model_path="/srv/secret/bundle"))
    assert "/srv/secret" not in json.dumps(doc)
    assert "/srv/secret" not in (tmp_path / "case" / "report.json").read_text()
    assert doc["run"]["model"]["sha256"] == "0" * 64


@pytest.mark.parametrize("edit", [
    lambda ds, k: setattr(ds, "ImagePositionPatient", [0.0, 2.0 * k * np.tan(np.radians(20)), 2.0 * k]),  # tilt
    lambda ds, k: delattr(ds, "ImagePositionPatient"),
    lambda ds, k: setattr(ds, "ImagePositionPatient", [0.0, 0.0, 2.0 * k + (20.0 if k >= 3 else 0.0)]),  # gap
], ids=["gantry-tilt", "no-position", "10-slice-gap"])
def test_dicom_seg_refused_by_the_geometry_keeps_every_other_output(tmp_path, edit):
    bi.dicom_series(tmp_path / "series", n=6, edit=edit)
    doc = run_case(tmp_path / "series", tmp_path / "case", predictor=FakePredictor())
    names = sorted(p.name for p in (tmp_path / "case").iterdir())
    for expected in ("mask.nii.gz", "report.json", "report.pdf", "report.html", "lesions.csv"):
        assert expected in names
    assert "seg.dcm" not in names and "dicom_seg" not in doc["files"]
    assert any(w.startswith("no DICOM SEG was written: ") for w in doc["run"]["warnings"])
    assert doc["run"]["dicom_seg_missing"]


def test_lesions_csv_numbers_slices_from_1_like_the_page(tmp_path):
    from liverseg.analysis import analyze
    from liverseg.reporting.report import write_lesions_csv

    ct, labels = phantom(shape=(16, 64, 64), spacing=(3.0, 2.0, 2.0), lesions=((8.0, None),))
    a = analyze(labels, ct)
    rows = list(csv.DictReader(write_lesions_csv(tmp_path / "l.csv", a).open()))
    les = a.lesions[0]
    assert int(rows[0]["slice_first"]) == les.slice_range[0] + 1
    assert int(rows[0]["slice_last"]) == les.slice_range[1] + 1
    assert int(rows[0]["diameter_slice"]) == les.diameter_slice + 1


def test_cli_predict_to_an_output_under_a_file_is_exit_2(tmp_path, scan, tiny_bundle_3d, capsys):
    (tmp_path / "f").write_text("x")
    code = main(["predict", str(scan), "-o", str(tmp_path / "f" / "out"), "--model", str(tiny_bundle_3d),
                 "--model-2d", "none"])
    assert code == 2

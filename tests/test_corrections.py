"""Corrected masks: stored as new versions beside the model's, every output re-measured, wrong grids refused.

The job runs a predictor that returns the phantom's own labels (two lesions), so every number
the corrections change is known in advance.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from liverseg.inference.predictor import Prediction
from liverseg.io import read_volume, write_volume
from liverseg.testing import phantom, write_dicom_series
from liverseg.web import create_app
from liverseg.web.auth import create_user, new_token

from test_web import PASSWORD, csrf_of, login

SHAPE, SPACING = (20, 64, 64), (3.0, 1.5, 1.5)


class PhantomPredictor:
    """Returns the labels of the phantom the study was made from (matched by shape)."""

    threads, engine, tta, overlap, min_tumor_volume_mm3 = 1, "torch", False, 0.5, 10.0

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def predict(self, ct, *, progress=None, return_probabilities=False):
        return Prediction(labels=ct.with_array(self.labels.copy(), is_hu=False, modality="SEG"), probabilities=None,
                          timings_s={}, model={"name": "phantom", "sha256": "1" * 64, "kind": "3d", "stages": []},
                          device="cpu", warnings=[])


def phantom_app(tmp_path: Path, labels: np.ndarray):
    """An app whose predictor returns ``labels``, and an API header for its user "ada"."""
    app = create_app(data_dir=tmp_path / "data", start_workers=False, job_timeout_s=None, TESTING=True,
                     predictor_factory=lambda: PhantomPredictor(labels))
    store = app.extensions["liverseg"].store
    create_user(store, name="ada", password=PASSWORD)
    token = new_token()
    store.add_token(store.user_by_name("ada").id, token)
    return app, {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def case():
    return phantom(shape=SHAPE, spacing=SPACING, lesions=((7.0, None), (4.5, None)), seed=3)


@pytest.fixture()
def web(tmp_path, case):
    ct, labels = case
    app = create_app(data_dir=tmp_path / "data", start_workers=False, job_timeout_s=None,
                     predictor_factory=lambda: PhantomPredictor(labels.array), TESTING=True)
    store = app.extensions["liverseg"].store
    create_user(store, name="ada", password=PASSWORD, is_admin=True)
    create_user(store, name="bob", password=PASSWORD)
    tokens = {}
    for name in ("ada", "bob"):
        tokens[name] = new_token()
        store.add_token(store.user_by_name(name).id, tokens[name])
    return app, {n: {"Authorization": f"Bearer {t}"} for n, t in tokens.items()}


def _study(app, headers, tmp_path, ct, name="ct.nii.gz"):
    path = write_volume(ct, tmp_path / name)
    c = app.test_client()
    r = c.post("/api/studies", headers=headers, data={"files": (open(path, "rb"), name)},
               content_type="multipart/form-data")
    assert r.status_code == 202, r.json
    assert app.extensions["liverseg"].pool.run_pending() == 1
    body = c.get(f"/api/studies/{r.json['id']}", headers=headers).json
    assert body["status"] == "done", body["error"]
    return c, r.json["id"], body


def _nifti_bytes(arr_zyx: np.ndarray, affine: np.ndarray, *, gz: bool = False, dtype=np.uint8) -> bytes:
    img = nib.Nifti1Image(np.ascontiguousarray(arr_zyx.transpose(2, 1, 0)).astype(dtype), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


def test_a_correction_is_a_new_version_and_everything_is_remeasured(web, case, tmp_path):
    app, h = web
    ct, labels = case
    c, sid, body = _study(app, h["ada"], tmp_path, ct)
    # the model's outputs, meshes included, are version 1
    assert body["mask_version"] == 1 and [v["version"] for v in body["versions"]] == [1]
    assert {"mask.nii.gz", "report.pdf", "lesions.csv", "meshes.json", "mesh-liver.ply", "mesh-lesion-1.ply",
            "mesh-lesion-2.ply"} <= set(body["files"])
    before = body["report"]["analysis"]
    assert before["tumor_count"] == 2
    original = c.get(f"/api/studies/{sid}/files/mask.nii.gz", headers=h["ada"]).data
    mask = read_volume(_to_file(tmp_path / "m.nii.gz", original)).array

    # the radiologist erases lesion 2 (it becomes liver) and paints a new lesion
    comp = _lesion_map(mask)
    corrected = mask.copy()
    corrected[comp == 2] = 1
    liver_z, liver_y, liver_x = np.nonzero(corrected == 1)
    zc, yc, xc = int(np.median(liver_z)), int(np.median(liver_y)), int(np.median(liver_x))
    far = (comp == 0)
    corrected[zc - 1:zc + 2, yc + 8:yc + 12, xc + 8:xc + 12][far[zc - 1:zc + 2, yc + 8:yc + 12, xc + 8:xc + 12]] = 2
    affine = ct.affine_ras()
    r = c.put(f"/api/studies/{sid}/mask?based_on=1", headers=h["ada"], data=_nifti_bytes(corrected, affine, gz=True))
    assert r.status_code == 201, r.json
    assert r.json["version"]["version"] == 2 and r.json["version"]["edited_by"] == "ada"
    assert r.json["version"]["changed_voxels"] == int(np.count_nonzero(corrected != mask))

    body = c.get(f"/api/studies/{sid}", headers=h["ada"]).json
    assert body["mask_version"] == 2
    v2 = body["versions"][-1]
    assert v2["kind"] == "correction" and v2["based_on"] == 1 and v2["source"] == "api"
    assert "mask.nii.gz" in v2["files"] and "report.pdf" in v2["files"] and "meshes.json" in v2["files"]
    after = body["report"]["analysis"]
    new_lesion_voxels = int(np.count_nonzero(corrected == 2)) - int(np.count_nonzero(comp == 1))
    assert after["tumor_voxel_count"] == int(np.count_nonzero(corrected == 2))
    assert after["tumor_count"] == 2 and sorted(l["voxel_count"] for l in after["lesions"]) == sorted(
        [int(np.count_nonzero(comp == 1)), new_lesion_voxels])
    assert after["liver_voxel_count"] == int(np.count_nonzero(corrected >= 1))  # tumor is part of the liver
    assert body["summary"]["tumor_volume_ml"] == after["tumor_volume_ml"] != before["tumor_volume_ml"]
    assert all(l["confidence"] is None for l in after["lesions"])  # no model probabilities for an edit
    assert any("corrected by hand (version 2, by ada" in w for w in body["report"]["run"]["warnings"])

    # the newest version is what downloads give; version 1 is untouched and still there
    got = read_volume(_to_file(tmp_path / "v2.nii.gz", c.get(f"/api/studies/{sid}/files/mask.nii.gz",
                                                              headers=h["ada"]).data)).array
    assert np.array_equal(got, corrected)
    assert c.get(f"/api/studies/{sid}/versions/1/files/mask.nii.gz", headers=h["ada"]).data == original
    assert c.get(f"/api/studies/{sid}/files/mask.nii.gz?version=1", headers=h["ada"]).data == original
    csv_v2 = c.get(f"/api/studies/{sid}/files/lesions.csv", headers=h["ada"]).text
    assert csv_v2.count("\n") == 3  # header + two lesions
    html = c.get(f"/api/studies/{sid}/versions/2/files/report.html", headers=h["ada"]).text
    assert "corrected by hand" in html
    meshes = c.get(f"/api/studies/{sid}/files/meshes.json", headers=h["ada"]).json
    assert [m["voxel_count"] for m in meshes["meshes"] if m["structure"] == "lesion"] == [
        l["voxel_count"] for l in after["lesions"]]
    assert c.get(f"/api/studies/{sid}/versions", headers=h["ada"]).json["versions"][1]["version"] == 2
    # bob sees none of it
    assert c.put(f"/api/studies/{sid}/mask", headers=h["bob"], data=_nifti_bytes(corrected, affine)).status_code == 404
    assert c.get(f"/api/studies/{sid}/versions/2/files/mask.nii.gz", headers=h["bob"]).status_code == 404


BAD_MASKS = [
    (lambda m, a: _nifti_bytes(m[:, :, :-1], a), "voxels"),
    (lambda m, a: _nifti_bytes(m, a @ np.diag([1.2, 1.0, 1.0, 1.0])), "voxel size"),
    (lambda m, a: _nifti_bytes(m, _shifted(a, 5.0)), "origin"),
    (lambda m, a: _nifti_bytes(m, a @ np.diag([-1.0, 1.0, 1.0, 1.0])), "orientation"),
    (lambda m, a: _nifti_bytes(np.where(m == 2, 3, m), a), "values \\[3\\]"),
    (lambda m, a: _nifti_bytes(m.astype(np.float32) * 0.5, a, dtype=np.float32), "fractional"),
    (lambda m, a: b"this is not a nifti file at all" * 20, "NIfTI|format"),
    (lambda m, a: b"", "no mask was sent"),
]


def test_a_mask_off_the_grid_or_with_other_labels_is_refused_and_nothing_is_written(web, case, tmp_path):
    import re

    app, h = web
    ct, labels = case
    c, sid, _ = _study(app, h["ada"], tmp_path, ct)
    study = tmp_path / "data" / "studies" / sid
    for make, reason in BAD_MASKS:  # shape, spacing, origin, direction, labels, fractions, not NIfTI, empty
        r = c.put(f"/api/studies/{sid}/mask", headers=h["ada"], data=make(labels.array, ct.affine_ras()))
        assert r.status_code == 400, (reason, r.json)
        assert re.search(reason, r.json["error"]), r.json["error"]
        assert "/tmp" not in r.json["error"] and "received" not in r.json["error"]  # no server path
        assert not (study / "versions").exists() or not [p for p in (study / "versions").iterdir()]
        assert not any((tmp_path / "data" / "tmp").iterdir())
    assert c.put(f"/api/studies/{sid}/mask?based_on=5", headers=h["ada"],
                 data=_nifti_bytes(labels.array, ct.affine_ras())).status_code == 400
    assert c.get(f"/api/studies/{sid}", headers=h["ada"]).json["mask_version"] == 1


def test_the_page_saves_with_its_csrf_token_and_shows_who_edited_which_version(web, case, tmp_path):
    app, h = web
    ct, labels = case
    c, sid, _ = _study(app, h["ada"], tmp_path, ct)
    page = app.test_client()
    assert login(page).status_code == 302
    html = page.get(f"/studies/{sid}").text
    assert 'id="reading-room"' in html and "Mask version 1" in html
    corrected = labels.array.copy()
    corrected[corrected == 2] = 1  # no tumor at all
    body = _nifti_bytes(corrected, ct.affine_ras())
    assert page.put(f"/studies/{sid}/mask", data=body).status_code == 400  # no CSRF token
    r = page.put(f"/studies/{sid}/mask", data=body, headers={"X-CSRFToken": csrf_of(html)})
    assert r.status_code == 201, r.json
    assert r.json["version"]["source"] == "viewer" and r.json["summary"]["lesion_count"] == 0
    html = page.get(f"/studies/{sid}").text
    assert "Mask version 2" in html and "ada" in html and "No tumor was found" in html
    old = page.get(f"/studies/{sid}?version=1").text
    assert "Mask version 1" in old and 'id="lesion-table"' in old
    assert page.get(f"/studies/{sid}?version=7").status_code == 404
    # the viewer's CT is the scan as the job read it, on the mask's grid
    raw = page.get(f"/studies/{sid}/viewer/ct.nii.gz").data
    img = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
    assert np.array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), ct.array)
    assert np.allclose(img.affine, ct.affine_ras())


def test_a_dicom_study_gets_a_new_dicom_seg_for_its_correction(tmp_path):
    import pydicom

    ct, labels = phantom(shape=(8, 48, 48), spacing=(3.0, 1.5, 1.5), lesions=((5.0, None),), seed=1)
    paths = write_dicom_series(ct, tmp_path / "series")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in paths:
            zf.write(p, f"series/{p.name}")
    dicom_ct = read_volume(archive)
    app, h = phantom_app(tmp_path, labels.array)
    c = app.test_client()
    sid = c.post("/api/studies", headers=h, data={"files": (open(archive, "rb"), "series.zip")},
                 content_type="multipart/form-data").json["id"]
    app.extensions["liverseg"].pool.run_pending()
    assert "seg.dcm" in c.get(f"/api/studies/{sid}", headers=h).json["files"]
    corrected = labels.array.copy()
    corrected[corrected == 2] = 1
    r = c.put(f"/api/studies/{sid}/mask", headers=h, data=_nifti_bytes(corrected, dicom_ct.affine_ras()))
    assert r.status_code == 201, r.json
    assert "seg.dcm" in r.json["version"]["files"]
    seg = pydicom.dcmread(io.BytesIO(c.get(f"/api/studies/{sid}/files/seg.dcm", headers=h).data))
    assert "corrected (v2)" in seg.SeriesDescription
    old = pydicom.dcmread(io.BytesIO(c.get(f"/api/studies/{sid}/files/seg.dcm?version=1", headers=h).data))
    assert "corrected" not in old.SeriesDescription


def _to_file(path, data: bytes):
    path.write_bytes(data)
    return path


def _lesion_map(mask: np.ndarray) -> np.ndarray:
    from liverseg.reporting.meshes import lesion_components

    return lesion_components(mask)[0]


def _shifted(affine: np.ndarray, mm: float) -> np.ndarray:
    out = affine.copy()
    out[0, 3] += mm
    return out



def test_a_single_slice_study_has_no_3d_view_and_its_correction_keeps_mask_png(tmp_path):
    from liverseg.testing import phantom_2d

    ct, labels = phantom_2d(shape=(64, 64), spacing=(1.5, 1.5), lesions=((6.0, None),))
    app, h = phantom_app(tmp_path, labels.array)
    c, sid, body = _study(app, h, tmp_path, ct, name="slice.nii.gz")
    assert not [f for f in body["files"] if f.startswith("mesh")]
    page = app.test_client()
    assert login(page).status_code == 302
    html = page.get(f"/studies/{sid}").text
    assert 'data-is-2d="1"' in html and "rr-canvas-3d" not in html and 'data-meshes-url=""' in html
    corrected = labels.array.copy()
    corrected[corrected == 2] = 1
    r = c.put(f"/api/studies/{sid}/mask", headers=h,
              data=_nifti_bytes(corrected, ct.affine_ras()))
    assert r.status_code == 201, r.json
    assert "mask.png" in r.json["version"]["files"] and r.json["summary"]["lesion_count"] == 0


def test_leftovers_of_a_killed_save_are_never_served_and_are_removed_at_start(web, case, tmp_path, caplog):
    import logging
    import shutil

    app, h = web
    ct, labels = case
    c, sid, _ = _study(app, h["ada"], tmp_path, ct)
    corrected = labels.array.copy()
    corrected[corrected == 2] = 1
    assert c.put(f"/api/studies/{sid}/mask", headers=h["ada"],
                 data=_nifti_bytes(corrected, ct.affine_ras())).status_code == 201
    study = tmp_path / "data" / "studies" / sid
    versions = study / "versions"
    assert sorted(p.name for p in versions.iterdir()) == ["2"]  # published by one rename: no temporary left
    v2 = {p.name: p.read_bytes() for p in (versions / "2").iterdir()}
    v1 = {p.name: p.read_bytes() for p in (study / "output").iterdir() if p.is_file()}
    assert "version.json" in v2 and "mask.nii.gz" in v2

    # what saves killed at each step leave: a reservation, remeasure_case's partial folder, a staged folder
    # (complete, with version.json, but never renamed into place), a numbered folder without version.json
    # (an older save killed between its rename and its version.json), and a temporary file
    (versions / ".reserve-3").mkdir()
    partial = versions / "..staging-3.partial-k1ll3d"
    partial.mkdir()
    (partial / "mask.nii.gz").write_bytes(v2["mask.nii.gz"][:100])
    shutil.copytree(versions / "2", versions / ".staging-4")
    shutil.copytree(versions / "2", versions / "5")
    (versions / "5" / "version.json").unlink()
    (versions / "5" / ".version-x1y2").write_text("{\"version\": 5", encoding="utf-8")
    (versions / ".version-tmp").write_text("{}", encoding="utf-8")

    # before any restart: none of it is listed or served
    body = c.get(f"/api/studies/{sid}", headers=h["ada"]).json
    assert body["mask_version"] == 2 and [v["version"] for v in body["versions"]] == [1, 2]
    assert [v["version"] for v in c.get(f"/api/studies/{sid}/versions", headers=h["ada"]).json["versions"]] == [1, 2]
    for n in ("3", "4", "5", ".staging-4"):
        assert c.get(f"/api/studies/{sid}/versions/{n}/files/mask.nii.gz", headers=h["ada"]).status_code == 404
    assert c.get(f"/api/studies/{sid}/files/mask.nii.gz?version=5", headers=h["ada"]).status_code == 404
    assert c.get(f"/api/studies/{sid}/files/mask.nii.gz", headers=h["ada"]).data == v2["mask.nii.gz"]

    # a restart removes exactly the leftovers, and says so
    with caplog.at_level(logging.WARNING, logger="liverseg.web.corrections"):
        again = create_app(data_dir=tmp_path / "data", start_workers=False, job_timeout_s=None, TESTING=True,
                           predictor_factory=lambda: PhantomPredictor(labels.array))
    assert sorted(p.name for p in versions.iterdir()) == ["2"]
    logged = [r.getMessage() for r in caplog.records if sid in r.getMessage()
              and r.name == "liverseg.web.corrections" and r.levelno >= logging.WARNING]
    assert len(logged) == 1 and "removed 5 leftover(s)" in logged[0], logged
    for name in (".reserve-3", "..staging-3.partial-k1ll3d", ".staging-4", "5", ".version-tmp"):
        assert name in logged[0]
    # the complete version and the original are intact, and still served
    assert {p.name: p.read_bytes() for p in (versions / "2").iterdir()} == v2
    assert {p.name: p.read_bytes() for p in (study / "output").iterdir() if p.is_file()} == v1
    c2 = again.test_client()
    body = c2.get(f"/api/studies/{sid}", headers=h["ada"]).json
    assert body["mask_version"] == 2 and body["summary"]["lesion_count"] == 0
    assert c2.get(f"/api/studies/{sid}/files/mask.nii.gz", headers=h["ada"]).data == v2["mask.nii.gz"]
    assert c2.get(f"/api/studies/{sid}/versions/1/files/mask.nii.gz", headers=h["ada"]).data == v1["mask.nii.gz"]
    # nothing is left to remove at the next start
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="liverseg.web.corrections"):
        create_app(data_dir=tmp_path / "data", start_workers=False, job_timeout_s=None, TESTING=True)
    assert not [r for r in caplog.records if "leftover" in r.getMessage()]
    assert sorted(p.name for p in versions.iterdir()) == ["2"]


def test_the_start_time_cleanup_keeps_what_it_did_not_write(tmp_path, caplog):
    import logging

    from liverseg.web.corrections import clean_incomplete_versions

    versions = tmp_path / "studies" / "abc123" / "versions"
    (versions / "2").mkdir(parents=True)
    (versions / "2" / "version.json").write_text("{\"version\": 2}", encoding="utf-8")
    (versions / "3").mkdir()
    (versions / "3" / "version.json").write_text("not json", encoding="utf-8")  # damaged: kept, logged
    (versions / "1").mkdir()  # not a correction's number
    (versions / "notes").mkdir()  # not ours
    (versions / "6").mkdir()  # incomplete
    (tmp_path / "studies" / "abc123" / "output").mkdir()
    (tmp_path / "studies" / "abc123" / "output" / "mask.nii.gz").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="liverseg.web.corrections"):
        removed = clean_incomplete_versions(tmp_path)
    assert removed == [versions / "6"]
    assert sorted(p.name for p in versions.iterdir()) == ["1", "2", "3", "notes"]
    assert (tmp_path / "studies" / "abc123" / "output" / "mask.nii.gz").is_file()
    assert any("unreadable version.json" in r.getMessage() for r in caplog.records)
    assert clean_incomplete_versions(tmp_path / "nowhere") == []

"""Web jobs end to end with the tiny throw-away model bundles: upload → job → dashboard → downloads."""

from __future__ import annotations

import gzip
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from liverseg.io import write_volume
from liverseg.testing import phantom, phantom_2d
from liverseg.web import create_app
from liverseg.web.auth import create_user, new_token
from liverseg.web.jobs import run_study_job, shared_factory

from test_web import PASSWORD, csrf_of, login, upload


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("scans")
    ct, _ = phantom(shape=(10, 40, 40), spacing=(4.0, 2.0, 2.0), lesions=((5.0, None),))
    write_volume(ct, d / "ct.nii.gz")
    out = {"nifti": (d / "ct.nii.gz").read_bytes()}
    from PIL import Image

    sl, _ = phantom_2d(shape=(64, 64), spacing=(1.5, 1.5))
    pixels = np.clip((sl.array[0].astype(float) + 160) / 400 * 255, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    out["png"] = buf.getvalue()
    return out


@pytest.fixture()
def env(tmp_path, tiny_bundle_3d, tiny_bundle_2d):
    from liverseg.inference import Predictor

    factory = shared_factory(lambda: Predictor(tiny_bundle_3d, model_2d=tiny_bundle_2d, threads=1))
    app = create_app(data_dir=tmp_path / "data", start_workers=False, predictor_factory=factory, TESTING=True)
    store = app.extensions["liverseg"].store
    create_user(store, name="ada", password=PASSWORD)
    token = new_token()
    store.add_token(store.user_by_name("ada").id, token)
    c = app.test_client()
    login(c)
    return app, c, {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_nifti_study_runs_and_the_dashboard_shows_it(env, scans):
    app, c, h = env
    pool = app.extensions["liverseg"].pool
    sid = upload(c, [(io.BytesIO(scans["nifti"]), "ct.nii.gz")], note="liver mets?").get_json()["id"]
    assert pool.run_pending() == 1
    s = c.get(f"/studies/{sid}/status.json").get_json()
    assert s["status"] == "done", s["error"]
    assert s["progress"] == 1 and {"mask.nii.gz", "report.json", "lesions.csv", "report.pdf"} <= set(s["files"])
    report = app.extensions["liverseg"].store.result(sid)
    a = report["analysis"]
    assert s["summary"]["liver_volume_ml"] == a["liver_volume_ml"]
    assert s["summary"]["lesion_count"] == a["tumor_count"]
    assert report["run"]["note"] == "liver mets?"

    page = c.get(f"/studies/{sid}")
    assert page.status_code == 200 and 'id="reading-room"' in page.text
    for label in ("Liver volume", "Lesions", "Tumor volume", "Tumor burden", "RECIST 1.1", "Downloads"):
        assert label in page.text
    data = c.get(f"/studies/{sid}/data.json").get_json()
    assert data["shape"] == [10, 40, 40] and not data["is_2d"]
    assert 0 <= data["start_slice"] < 10

    times = []
    for z in range(3):
        t0 = time.perf_counter()
        r = c.get(f"/studies/{sid}/slice/{z}.png?w=150&l=60&overlay=1&opacity=0.5&liver=1&tumor=0")
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200 and r.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert min(times[1:]) < 0.15, times  # cached volume: a slice is fast
    assert c.get(f"/studies/{sid}/slice/10.png").status_code == 404
    assert c.get(f"/studies/{sid}/slice/0.png?opacity=3").status_code == 400

    mask = c.get(f"/studies/{sid}/files/mask.nii.gz")
    assert mask.status_code == 200 and gzip.decompress(mask.data)[344:348] == b"n+1\0"
    assert "attachment" in mask.headers["Content-Disposition"]
    csv = c.get(f"/studies/{sid}/files/lesions.csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv" and len(csv.data.splitlines()) == 1 + a["tumor_count"]

    api = c.get(f"/api/studies/{sid}", headers=h).get_json()
    assert api["status"] == "done" and api["report"]["analysis"]["shape"] == [10, 40, 40]
    r = c.get(f"/api/studies/{sid}/files/report.json", headers=h)
    assert r.status_code == 200 and json.loads(r.data)["analysis"]["liver_volume_ml"] == a["liver_volume_ml"]
    assert c.get(f"/api/studies/{sid}/files/seg.dcm", headers=h).status_code == 404  # not DICOM input
    hist = c.get("/history").text
    assert "liver mets?" in hist and 'badge done' in hist


@pytest.mark.slow
def test_png_slice_shows_areas(env, scans):
    app, c, _ = env
    sid = upload(c, [(io.BytesIO(scans["png"]), "slice.png")]).get_json()["id"]
    app.extensions["liverseg"].pool.run_pending()
    s = c.get(f"/studies/{sid}/status.json").get_json()
    assert s["status"] == "done", s["error"]
    page = c.get(f"/studies/{sid}").text
    assert "Liver area" in page and "px" in page and 'id="slice"' not in page
    assert c.get(f"/studies/{sid}/slice/0.png").status_code == 200
    assert "mask.png" in s["files"]


def test_png_slice_with_a_pixel_size_gets_areas_in_mm2(env, scans):
    app, c, h = env
    page = c.get("/upload").text
    assert 'name="pixel_size_mm"' in page
    data = {"csrf_token": csrf_of(page), "note": "", "pixel_size_mm": "0,8",  # a decimal comma is read too
            "files": [(io.BytesIO(scans["png"]), "slice.png")]}
    r = c.post("/upload", data=data, headers={"Accept": "application/json"}, content_type="multipart/form-data")
    assert r.status_code == 202, r.get_json()
    sid = r.get_json()["id"]
    app.extensions["liverseg"].pool.run_pending()
    s = c.get(f"/studies/{sid}/status.json").get_json()
    assert s["status"] == "done", s["error"]
    report = app.extensions["liverseg"].store.result(sid)
    assert report["run"]["pixel_size_mm"] == 0.8
    a = report["analysis"]
    assert a["liver_area_px"] > 0 and a["liver_area_mm2"] == pytest.approx(a["liver_area_px"] * 0.64, rel=1e-6)
    # the REST API takes it too; nonsense is refused with the reason, and nothing is stored
    n_before = len(c.get("/api/studies", headers=h).get_json()["studies"])
    bad = c.post("/api/studies", data={"files": [(io.BytesIO(scans["png"]), "slice.png")], "pixel_size_mm": "-1"},
                 headers=h, content_type="multipart/form-data")
    assert bad.status_code == 400 and "pixel size" in bad.get_json()["error"]
    assert len(c.get("/api/studies", headers=h).get_json()["studies"]) == n_before


@pytest.mark.slow
def test_corrupt_file_fails_with_reason_and_the_server_goes_on(env, scans):
    app, c, _ = env
    pool = app.extensions["liverseg"].pool
    broken = scans["nifti"][: len(scans["nifti"]) // 3]  # truncated: the header sniffs fine, the data is cut
    bad = upload(c, [(io.BytesIO(broken), "ct.nii.gz")]).get_json()["id"]
    good = upload(c, [(io.BytesIO(scans["nifti"]), "ct.nii.gz")]).get_json()["id"]
    assert pool.run_pending() == 2
    s = c.get(f"/studies/{bad}/status.json").get_json()
    assert s["status"] == "failed" and s["error"] and "internal error" not in s["error"]
    page = c.get(f"/studies/{bad}").text
    assert 'id="retry-button"' in page and s["error"][:30] in page.replace("&#39;", "'").replace("&#34;", '"')
    assert c.get(f"/studies/{good}/status.json").get_json()["status"] == "done"
    # retry queues a new attempt (which fails the same way, with the same reason)
    r = c.post(f"/studies/{bad}/retry", data={"csrf_token": csrf_of(page)})
    assert r.status_code == 303
    assert c.get(f"/studies/{bad}/status.json").get_json()["status"] == "queued"
    pool.run_pending()
    assert c.get(f"/studies/{bad}/status.json").get_json()["status"] == "failed"


def test_broken_model_fails_the_job_not_the_server(tmp_path, scans):
    def broken_factory():
        from liverseg.inference import Predictor

        return Predictor(tmp_path / "no-such-bundle")

    app = create_app(data_dir=tmp_path / "data", start_workers=False, predictor_factory=broken_factory, TESTING=True)
    create_user(app.extensions["liverseg"].store, name="ada", password=PASSWORD)
    c = app.test_client()
    login(c)
    sid = upload(c, [(io.BytesIO(scans["nifti"]), "ct.nii.gz")]).get_json()["id"]
    assert run_study_job(sid, store=app.extensions["liverseg"].store, data_dir=tmp_path / "data",
                         predictor_factory=broken_factory) == "failed"
    s = c.get(f"/studies/{sid}/status.json").get_json()
    assert s["status"] == "failed" and s["error"]
    assert c.get("/history").status_code == 200


@pytest.mark.slow
def test_worker_threads_run_jobs_in_the_background(tmp_path, tiny_bundle_3d, tiny_bundle_2d, scans):
    from liverseg.inference import Predictor

    app = create_app(data_dir=tmp_path / "data", workers=2, TESTING=True,
                     predictor_factory=lambda: Predictor(tiny_bundle_3d, model_2d=tiny_bundle_2d, threads=1))
    pool = app.extensions["liverseg"].pool
    try:
        assert pool.running
        create_user(app.extensions["liverseg"].store, name="ada", password=PASSWORD)
        c = app.test_client()
        login(c)
        sid = upload(c, [(io.BytesIO(scans["png"]), "s.png")]).get_json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            s = c.get(f"/studies/{sid}/status.json").get_json()
            if s["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert s["status"] == "done", s
    finally:
        pool.stop()
    assert not pool.running


@pytest.mark.slow
def test_patient_name_and_id_never_reach_the_logs(env, tmp_path, caplog):
    """A DICOM study (uploaded as a zip, run to the DICOM SEG) logs nothing that names the patient."""
    import logging
    import zipfile

    from liverseg.testing.dicom import write_dicom_series

    app, c, _ = env
    ct, _ = phantom(shape=(8, 40, 40), spacing=(4.0, 2.0, 2.0), lesions=((5.0, None),))
    files = write_dicom_series(ct, tmp_path / "series")  # PatientName Phantom^Liverseg, PatientID PHANTOM-0001
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f"series/{f.name}")
    caplog.set_level(logging.DEBUG)
    sid = upload(c, [(io.BytesIO(buf.getvalue()), "study.zip")]).get_json()["id"]
    assert app.extensions["liverseg"].pool.run_pending() == 1
    s = c.get(f"/studies/{sid}/status.json").get_json()
    assert s["status"] == "done", s["error"]
    assert "seg.dcm" in s["files"]
    assert caplog.records, "the job logged nothing at all: the check below would be vacuous"
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("Phantom^Liverseg", "Phantom Liverseg", "PHANTOM-0001"):
        assert secret not in text


def test_warm_up_builds_the_shared_predictor_before_the_first_job(tmp_path, tiny_bundle_3d, tiny_bundle_2d, caplog):
    import logging

    from liverseg.inference import Predictor

    built = []

    def factory():
        built.append(Predictor(tiny_bundle_3d, model_2d=tiny_bundle_2d, threads=1))
        return built[-1]

    app = create_app(data_dir=tmp_path / "data", start_workers=False, predictor_factory=factory, TESTING=True)
    pool = app.extensions["liverseg"].pool
    with caplog.at_level(logging.INFO, logger="liverseg.web.jobs"):
        pool.warm_up().join(60)
    assert len(built) == 1
    predictor = built[0]
    assert set(k for k, _ in predictor._nets) == {"3d", "2d"}  # every stage's network built
    # the imports, then one phantom DICOM case through every writer (a failure there would be logged instead)
    assert any("warmed up" in r.getMessage() and "first_case_files" in r.getMessage() for r in caplog.records)
    assert pool.predictor_factory() is predictor  # the first job gets the same, warm predictor
    assert Predictor(tiny_bundle_3d, model_2d=None, threads=1).warm_up().keys() == {"load", "first_pass"}


def test_a_failed_warm_up_is_logged_not_raised(tmp_path, scans, caplog):
    import logging

    from liverseg.inference import Predictor

    app = create_app(data_dir=tmp_path / "data", start_workers=False, TESTING=True,
                     predictor_factory=lambda: Predictor(tmp_path / "no-such-bundle"))
    with caplog.at_level(logging.WARNING, logger="liverseg.web.jobs"):
        app.extensions["liverseg"].pool.warm_up().join(30)
    assert any("warming up the predictor failed" in r.getMessage() for r in caplog.records)


def test_a_done_job_hands_its_volumes_to_the_slice_viewer(env, scans):
    """The embedded backend puts the job's CT and mask in the viewer's cache: the first dashboard reads
    neither file, and what it shows is what the files hold."""
    from liverseg.web.uploads import input_path, output_dir
    from liverseg.web.viewer import load_study_volumes

    app, c, _ = env
    ctx = app.extensions["liverseg"]
    sid = upload(c, [(io.BytesIO(scans["nifti"]), "ct.nii.gz")]).get_json()["id"]
    assert sid not in ctx.cache
    assert ctx.pool.run_pending() == 1
    assert c.get(f"/studies/{sid}/status.json").get_json()["status"] == "done"
    assert sid in ctx.cache
    ct, labels = ctx.cache.get(sid)
    ct_file, labels_file = load_study_volumes(input_path(ctx.data_dir, sid), output_dir(ctx.data_dir, sid) / "mask.nii.gz")
    np.testing.assert_array_equal(ct.array, ct_file.array)
    np.testing.assert_array_equal(labels.array, labels_file.array)
    assert labels.array.dtype == np.uint8 and labels.spacing == ct_file.spacing and (labels.array > 0).any()
    assert c.get(f"/studies/{sid}/slice/5.png?overlay=1").status_code == 200

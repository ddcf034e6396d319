"""report.pdf on first download: Analysis.from_dict, the PDF drawn later from a case folder, the web
app's jobs and corrections skipping it, and its downloads drawing it once (issue 14)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from liverseg.analysis import Analysis, analyze
from liverseg.analysis.lesions import Flag, Lesion
from liverseg.errors import InputError
from liverseg.inference import run_case
from liverseg.io import write_volume
from liverseg.reporting import pdf as report_pdf
from liverseg.reporting import write_report_files
from liverseg.reporting.pdf import write_report_pdf_from_folder
from liverseg.testing import phantom, phantom_2d
from liverseg.web import create_app
from liverseg.web.auth import create_user, new_token

from test_corrections import PhantomPredictor
from test_web import PASSWORD, login

SHAPE, SPACING = (16, 48, 48), (3.0, 2.0, 2.0)
RUN = {"case": "phantom-1", "input": "phantom.nii.gz", "note": "liver mets?", "device": "cpu", "created": "2025-01-01",
       "model": {"name": "nnformer-liver-3d", "version": "0.1", "sha256": "ab" * 32, "path": "/srv/models/x"}}


@pytest.fixture(scope="module")
def case():
    ct, lab = phantom(shape=SHAPE, spacing=SPACING, lesions=((7.0, None), (4.5, None)), seed=3)
    return ct, lab


# --------------------------------------------------------------------------- Analysis.from_dict


def _roundtrip(a: Analysis) -> Analysis:
    return Analysis.from_dict(json.loads(json.dumps(a.to_dict())))


def test_analysis_from_dict_is_the_inverse_of_to_dict_in_3d(case):
    ct, lab = case
    a = analyze(lab, ct)
    assert a.tumor_count == 2 and a.flags  # lesions and flags to rebuild
    back = _roundtrip(a)
    assert back == a
    assert isinstance(back.shape, tuple) and isinstance(back.spacing_mm, tuple)
    les = back.lesions[0]
    assert isinstance(les, Lesion) and isinstance(les.slice_range, tuple) and isinstance(les.centroid_voxel, tuple)
    assert isinstance(les.long_axis_endpoints_px, tuple) and isinstance(les.long_axis_endpoints_px[0], tuple)
    assert isinstance(back.flags[0], Flag)
    assert back.target_candidates == a.target_candidates


def test_analysis_from_dict_is_the_inverse_of_to_dict_in_2d():
    ct, lab = phantom_2d(shape=(64, 64), spacing=(1.5, 1.5), lesions=((6.0, None),))
    a = analyze(lab, ct)
    assert a.is_2d and a.tumor_count == 1
    assert _roundtrip(a) == a
    # a slice without a pixel size: sizes in pixels, no world position (None stays None)
    png_ct = ct.with_array(np.clip(ct.array + 160, 0, 255).astype(np.uint8), spacing=None, is_hu=False)
    b = analyze(lab.with_array(lab.array, spacing=None), png_ct)
    assert b.spacing_mm is None and b.lesions[0].centroid_lps_mm is None
    assert _roundtrip(b) == b


def test_analysis_from_dict_says_what_is_missing(case):
    ct, lab = case
    d = analyze(lab, ct).to_dict()
    old = json.loads(json.dumps(d))
    for les in old["lesions"]:  # a report written before lesions had a confidence
        del les["confidence"], les["confidence_level"]
    old["a_field_from_a_newer_version"] = 1
    assert Analysis.from_dict(old).lesions[0].confidence is None
    del d["lesions"]
    with pytest.raises(ValueError, match="no 'lesions'"):
        Analysis.from_dict(d)
    with pytest.raises(ValueError, match="from a dict"):
        Analysis.from_dict([])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the PDF later, from a folder


@pytest.mark.slow
def test_the_pdf_drawn_from_the_folder_is_the_one_written_at_case_time(case, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")  # ReportLab's dates (and the /ID made from them): otherwise the files differ by them
    ct, lab = case
    a = analyze(lab, ct)
    now = write_report_files(tmp_path / "now", ct=ct, labels=lab, analysis=a, run_info=RUN)
    later = write_report_files(tmp_path / "later", ct=ct, labels=lab, analysis=a, run_info=RUN, pdf=False)
    assert "pdf" not in later and not (tmp_path / "later" / "report.pdf").exists()
    files = json.loads(later["json"].read_text())["files"]
    assert files["pdf_on_demand"] is True and "pdf" not in files
    assert json.loads(now["json"].read_text())["files"]["pdf"] == "report.pdf"
    path = write_report_pdf_from_folder(tmp_path / "later")
    assert path == tmp_path / "later" / "report.pdf"
    assert path.read_bytes() == now["pdf"].read_bytes()  # same pages, tables, images: the same bytes
    assert sorted(p.name for p in (tmp_path / "later").iterdir()) == sorted(p.name for p in (tmp_path / "now").iterdir())


def test_drawing_the_pdf_from_a_folder_fails_whole(case, tmp_path, monkeypatch):
    ct, lab = case
    folder = tmp_path / "case"
    write_report_files(folder, ct=ct, labels=lab, analysis=analyze(lab, ct), run_info=RUN, pdf=False)

    def broken(target, *args, **kwargs):
        target.write(b"%PDF-1.4 half a file")
        raise RuntimeError("the renderer broke")

    monkeypatch.setattr(report_pdf, "_draw_report_pdf", broken)
    with pytest.raises(RuntimeError):
        write_report_pdf_from_folder(folder)
    assert not (folder / "report.pdf").exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    monkeypatch.undo()
    with pytest.raises(InputError, match="holds no report.json"):
        write_report_pdf_from_folder(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text('{"schema": "x"}')
    with pytest.raises(InputError, match="no 'analysis'"):
        write_report_pdf_from_folder(tmp_path / "bad")


@pytest.mark.slow
def test_run_case_without_the_pdf_and_over_an_old_one(case, tmp_path):
    ct, lab = case
    scan = write_volume(ct, tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    doc = run_case(scan, out, predictor=PhantomPredictor(lab.array))
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-" and doc["files"]["pdf"] == "report.pdf"
    assert "pdf_on_demand" not in doc["files"]
    doc = run_case(scan, out, predictor=PhantomPredictor(lab.array), overwrite=True, pdf=False)
    assert not (out / "report.pdf").exists()  # the old case's PDF does not stay beside the new report
    assert doc["files"]["pdf_on_demand"] is True and "pdf" not in doc["files"]
    assert json.loads((out / "report.json").read_text()) == doc
    write_report_pdf_from_folder(out)
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_cli_predict_still_writes_the_pdf(case, tmp_path, tiny_bundle_3d):
    import logging

    from liverseg.cli import NOISY_LOGGERS, main

    ct, _ = case
    scan = write_volume(ct, tmp_path / "abdomen.nii.gz")
    loggers = [logging.getLogger(n) for n in ("liverseg", *NOISY_LOGGERS)]
    levels = [lg.level for lg in loggers]
    try:
        assert main(["predict", str(scan), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle_3d)]) == 0
    finally:  # main() configures logging for a command line; later tests count log records
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    out = tmp_path / "out" / "abdomen"
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    files = json.loads((out / "report.json").read_text())["files"]
    assert files["pdf"] == "report.pdf" and "pdf_on_demand" not in files


# --------------------------------------------------------------------------- the web app


@pytest.fixture()
def web(tmp_path, case, monkeypatch):
    """(app, API headers, render counter): a study of the phantom, done, its PDF not drawn yet."""
    ct, labels = case
    app = create_app(data_dir=tmp_path / "data", start_workers=False, job_timeout_s=None,
                     predictor_factory=lambda: PhantomPredictor(labels.array), TESTING=True)
    store = app.extensions["liverseg"].store
    create_user(store, name="ada", password=PASSWORD)
    token = new_token()
    store.add_token(store.user_by_name("ada").id, token)
    h = {"Authorization": f"Bearer {token}"}
    renders: list[Path] = []
    real = report_pdf.write_report_pdf_from_folder

    def counting(folder, **kwargs):
        renders.append(Path(folder))
        return real(folder, **kwargs)

    monkeypatch.setattr(report_pdf, "write_report_pdf_from_folder", counting)
    path = write_volume(ct, tmp_path / "ct.nii.gz")
    c = app.test_client()
    r = c.post("/api/studies", headers=h, data={"files": (open(path, "rb"), "ct.nii.gz")},
               content_type="multipart/form-data")
    assert r.status_code == 202, r.json
    assert app.extensions["liverseg"].pool.run_pending() == 1
    return app, h, renders, r.json["id"]


def _output(app, sid: str) -> Path:
    return app.extensions["liverseg"].data_dir / "studies" / sid / "output"


def test_a_study_is_done_before_its_pdf_which_its_first_download_draws_once(web):
    app, h, renders, sid = web
    c = app.test_client()
    body = c.get(f"/api/studies/{sid}", headers=h).json
    assert body["status"] == "done", body["error"]
    out = _output(app, sid)
    assert not (out / "report.pdf").exists() and (out / "report.json").is_file()
    assert body["report"]["files"]["pdf_on_demand"] is True and "pdf" not in body["report"]["files"]
    # listed all the same: the API's files, the versions, the page's button
    assert "report.pdf" in body["files"] and "report.pdf" in body["versions"][0]["files"]
    assert "report.pdf" in c.get(f"/api/studies/{sid}/versions", headers=h).json["versions"][0]["files"]
    login(c)
    page = c.get(f"/studies/{sid}").text
    button = re.search(r'<a class="btn" href="[^"]*files/report\.pdf\?download=1"[^>]*>Report \(PDF\)</a>', page)
    assert button and "hidden" not in button.group(0)
    assert renders == []  # listing draws nothing

    r = c.get(f"/api/studies/{sid}/files/report.pdf", headers=h)
    assert r.status_code == 200 and r.mimetype == "application/pdf" and r.data[:5] == b"%PDF-"
    assert (out / "report.pdf").read_bytes() == r.data and renders == [out]
    again = c.get(f"/studies/{sid}/files/report.pdf")  # the page's route: served, not drawn again
    assert again.status_code == 200 and again.data == r.data and len(renders) == 1
    assert c.get(f"/api/studies/{sid}/versions/1/files/report.pdf", headers=h).data == r.data and len(renders) == 1
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_corrected_version_gets_its_own_pdf_on_first_download(web, case, tmp_path):
    app, h, renders, sid = web
    ct, _ = case
    c = app.test_client()
    v1 = c.get(f"/api/studies/{sid}/files/report.pdf", headers=h).data
    from liverseg.io import read_volume

    (tmp_path / "m.nii.gz").write_bytes(c.get(f"/api/studies/{sid}/files/mask.nii.gz", headers=h).data)
    mask = read_volume(tmp_path / "m.nii.gz").array.copy()
    mask[mask == 2] = 1  # every lesion erased
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8), ct.affine_ras())
    img.set_sform(ct.affine_ras(), code=1)
    img.set_qform(ct.affine_ras(), code=1)
    r = c.put(f"/api/studies/{sid}/mask?based_on=1", headers=h, data=img.to_bytes())
    assert r.status_code == 201, r.json
    assert "report.pdf" in r.json["version"]["files"]
    v2_dir = app.extensions["liverseg"].data_dir / "studies" / sid / "versions" / "2"
    assert not (v2_dir / "report.pdf").exists()  # the save skipped it too
    assert json.loads((v2_dir / "report.json").read_text())["files"]["pdf_on_demand"] is True
    body = c.get(f"/api/studies/{sid}", headers=h).json
    assert body["mask_version"] == 2 and "report.pdf" in body["files"] and body["report"]["analysis"]["tumor_count"] == 0
    n = len(renders)
    v2 = c.get(f"/api/studies/{sid}/files/report.pdf", headers=h)  # the newest version's
    assert v2.status_code == 200 and v2.data[:5] == b"%PDF-" and v2.data != v1
    assert "-v2-report.pdf" in v2.headers["Content-Disposition"]
    assert renders[n:] == [v2_dir] and (v2_dir / "report.pdf").read_bytes() == v2.data
    assert c.get(f"/api/studies/{sid}/versions/2/files/report.pdf", headers=h).data == v2.data
    assert c.get(f"/api/studies/{sid}/files/report.pdf?version=1", headers=h).data == v1
    assert len(renders) == n + 1


def test_two_downloads_at_once_draw_the_pdf_once(web, monkeypatch):
    app, h, renders, sid = web
    counting = report_pdf.write_report_pdf_from_folder

    def slow(folder, **kwargs):
        time.sleep(0.5)  # the second request arrives while the first draws
        return counting(folder, **kwargs)

    monkeypatch.setattr(report_pdf, "write_report_pdf_from_folder", slow)
    bodies: list[tuple[int, bytes]] = []

    def get() -> None:
        r = app.test_client().get(f"/api/studies/{sid}/files/report.pdf", headers=h)
        bodies.append((r.status_code, r.data))

    threads = [threading.Thread(target=get) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(bodies) == 2 and all(code == 200 and data[:5] == b"%PDF-" for code, data in bodies)
    assert bodies[0][1] == bodies[1][1] and len(renders) == 1


def test_a_pdf_that_cannot_be_drawn_is_a_clear_error_and_no_file(web, monkeypatch):
    app, h, renders, sid = web
    c = app.test_client()
    out = _output(app, sid)

    def broken(target, *args, **kwargs):
        target.write(b"%PDF-1.4 half")
        raise RuntimeError("no fonts")

    monkeypatch.setattr(report_pdf, "_draw_report_pdf", broken)
    r = c.get(f"/api/studies/{sid}/files/report.pdf", headers=h)
    assert r.status_code == 500 and "PDF could not be made" in r.json["error"] and "report.html" in r.json["error"]
    assert str(out) not in r.json["error"]
    assert not (out / "report.pdf").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()  # the renderer is back: the next download draws it
    r = c.get(f"/api/studies/{sid}/files/report.pdf", headers=h)
    assert r.status_code == 200 and r.data[:5] == b"%PDF-"


def test_deleting_the_study_while_its_pdf_is_drawn(web, monkeypatch):
    app, h, renders, sid = web
    counting = report_pdf.write_report_pdf_from_folder
    started, deleted = threading.Event(), threading.Event()

    def waits_for_the_delete(folder, **kwargs):
        started.set()
        deleted.wait(30)
        return counting(folder, **kwargs)

    monkeypatch.setattr(report_pdf, "write_report_pdf_from_folder", waits_for_the_delete)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(
        app.test_client().get(f"/api/studies/{sid}/files/report.pdf", headers=h).status_code))
    t.start()
    assert started.wait(30)
    c = app.test_client()
    assert c.delete(f"/api/studies/{sid}", headers=h).json["deleted"] is True
    deleted.set()
    t.join(60)
    assert got == [404]
    assert not (app.extensions["liverseg"].data_dir / "studies" / sid).exists()
    assert c.get("/api/studies", headers=h).json["studies"] == []  # the server goes on

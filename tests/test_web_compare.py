"""The web comparison through Flask's test client: pick an earlier study, the REST API, the page,
its linked slices, ownership, refusals. The studies are real uploads whose job output is written
by the library from the phantom's known mask (the model is not what is tested here)."""

from __future__ import annotations

import io
import json
import time

import pytest

from liverseg.analysis import analyze
from liverseg.io import write_mask, write_volume
from liverseg.reporting import write_report_files
from liverseg.testing import phantom
from liverseg.testing.moved import moved_in_world
from liverseg.web import create_app
from liverseg.web.auth import create_user, new_token
from liverseg.web.jobs import summarize_report
from liverseg.web.uploads import output_dir

from test_web import PASSWORD, login, upload

GRID = dict(shape=(40, 96, 96), spacing=(2.5, 1.5, 1.5), seed=3)
A, S = (55.0, 64.5, 46.5), (25.0, 60.0, 40.0)


def _never():
    raise AssertionError("no model runs in these tests")


@pytest.fixture()
def env(tmp_path):
    app = create_app(data_dir=tmp_path / "data", start_workers=False, predictor_factory=_never, TESTING=True)
    store = app.extensions["liverseg"].store
    create_user(store, name="ada", password=PASSWORD)
    create_user(store, name="bob", password=PASSWORD)
    tokens = {}
    for name in ("ada", "bob"):
        tokens[name] = new_token()
        store.add_token(store.user_by_name(name).id, tokens[name])
    return app, tokens


def finished_study(app, client, tmp_path, ct, lab, name):
    """Upload ``ct`` through the page, then finish its job with the known mask's outputs."""
    path = tmp_path / f"{name}.nii.gz"
    write_volume(ct, path)
    sid = upload(client, [(io.BytesIO(path.read_bytes()), path.name)]).get_json()["id"]
    c = app.extensions["liverseg"]
    job = c.store.claim_job()
    out = output_dir(c.data_dir, sid)
    out.mkdir(parents=True)
    write_mask(ct, lab, out / "mask.nii.gz")
    write_report_files(out, ct=ct, labels=lab, analysis=analyze(lab, ct), run_info={"case": name})
    report = json.loads((out / "report.json").read_text())
    c.store.finish_job(job.id, report=report, summary=summarize_report(report))
    time.sleep(1.1)  # created_at has one-second resolution: the next study is later
    return sid


def wait(app):
    app.extensions["liverseg_compare"].wait(timeout=120)


@pytest.mark.slow  # about 20 s on the busy 2-core machine (uploads, reports, two comparisons)
def test_compare_page_api_and_linked_slices(env, tmp_path):
    app, tokens = env
    c = app.test_client()
    assert login(c).status_code == 302
    base = phantom(**GRID, lesions=((12.0, A), (3.5, S)))
    follow = tuple(moved_in_world(v, rotation_deg=(5, 0, 2), shift_mm=(6, -8, 10))
                   for v in phantom(**GRID, lesions=((7.2, A), (3.5, S))))
    b = finished_study(app, c, tmp_path, *base, "baseline")
    f = finished_study(app, c, tmp_path, *follow, "followup")

    # the study page links to the picker, which lists the earlier study (not itself, not later ones)
    assert f"/studies/{f}/compare" in c.get(f"/studies/{f}").text
    page = c.get(f"/studies/{f}/compare").text
    assert f'value="{b}"' in page and f'value="{f}"' not in page
    assert "No earlier finished study" in c.get(f"/studies/{b}/compare").text

    # start it from the page (CSRF form), as the follow-up of this study
    from test_web import csrf_of

    r = c.post(f"/studies/{f}/compare", data={"csrf_token": csrf_of(page), "baseline": b})
    assert r.status_code == 303
    cid = r.headers["Location"].rsplit("/", 1)[-1]
    wait(app)
    s = c.get(f"/comparisons/{cid}/status.json").get_json()
    assert s["status"] == "done", s
    assert s["response"] == "PR" and s["counts"] == {"matched": 2}
    html = c.get(f"/comparisons/{cid}").text
    assert 'id="response"' in html and ">PR<" in html and 'id="change-table"' in html
    assert html.count('data-kind="matched"') == 2
    # both panes render the same baseline-grid slice: linked scrolling in the registered space
    for side in ("baseline", "followup"):
        png = c.get(f"/comparisons/{cid}/slice/{side}/22.png")
        assert png.status_code == 200 and png.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert c.get(f"/comparisons/{cid}/slice/followup/400.png").status_code == 404
    assert c.get(f"/comparisons/{cid}/slice/other/1.png").status_code == 404
    pdf = c.get(f"/comparisons/{cid}/files/comparison.pdf")
    assert pdf.status_code == 200 and pdf.data[:5] == b"%PDF-"

    # REST: POST two study ids, GET the result
    h = {"Authorization": f"Bearer {tokens['ada']}"}
    r = c.post("/api/comparisons", json={"baseline": b, "followup": f}, headers=h)
    assert r.status_code == 202 and r.headers["Location"].startswith("/api/comparisons/")
    wait(app)
    doc = c.get(r.headers["Location"], headers=h).get_json()
    assert doc["status"] == "done" and doc["result"]["response"] == "PR"
    assert doc["result"]["recist"]["change_percent"] == pytest.approx(-40, abs=4)
    assert "lesion_changes.csv" in doc["files"]
    csv_text = c.get(f"{r.headers['Location']}/files/lesion_changes.csv", headers=h).text
    assert csv_text.startswith("id,kind,")

    # another user sees none of it, and cannot compare ada's studies
    hb = {"Authorization": f"Bearer {tokens['bob']}"}
    assert c.get(r.headers["Location"], headers=hb).status_code == 404
    assert c.post("/api/comparisons", json={"baseline": b, "followup": f}, headers=hb).status_code == 404
    bob = app.test_client()
    login(bob, "bob")
    assert bob.get(f"/comparisons/{cid}").status_code == 404
    assert bob.get(f"/comparisons/{cid}/slice/baseline/1.png").status_code == 404
    assert bob.get(f"/studies/{f}/compare").status_code == 404

    # bad requests say what is wrong
    assert c.post("/api/comparisons", json={"baseline": b, "followup": b}, headers=h).status_code == 400
    assert c.post("/api/comparisons", data="x", headers=h).status_code == 400
    assert c.post("/api/comparisons", json={"baseline": b}, headers=h).status_code == 400
    assert c.post("/api/comparisons", json={"baseline": b, "followup": f}).status_code == 401

    # deleting a study removes the comparisons made from it, files included
    folder = app.extensions["liverseg"].data_dir / "comparisons" / cid
    assert (folder / "result" / "lesion_pairs.png").is_file()
    c.delete(f"/api/studies/{b}", headers=h)
    assert not folder.exists()
    assert c.get(f"/comparisons/{cid}").status_code == 404


def test_a_scan_without_liver_is_refused_with_the_reason(env, tmp_path):
    app, tokens = env
    c = app.test_client()
    login(c)
    ct, lab = phantom(**GRID, lesions=((12.0, A),))
    b = finished_study(app, c, tmp_path, ct, lab, "baseline")
    f = finished_study(app, c, tmp_path, ct, lab.with_array(lab.array * 0), "legs")
    h = {"Authorization": f"Bearer {tokens['ada']}"}
    r = c.post("/api/comparisons", json={"baseline": b, "followup": f}, headers=h)
    wait(app)
    doc = c.get(r.headers["Location"], headers=h).get_json()
    assert doc["status"] == "refused" and doc["code"] == "different_body_region"
    assert "holds no liver" in doc["error"]
    html = c.get(f"/comparisons/{doc['id']}").text
    assert "cannot be compared" in html and "holds no liver" in html


def _dicom_zip(tmp_path, ct, name, patient_id):
    """``ct`` as a zipped DICOM series whose headers name ``patient_id``."""
    import zipfile

    import pydicom

    from liverseg.testing import write_dicom_series

    folder = tmp_path / name
    for p in write_dicom_series(ct, folder):
        ds = pydicom.dcmread(p)
        ds.PatientID = patient_id
        ds.save_as(p)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{name}/{p.name}")
    return buf.getvalue()


def finished_dicom_study(app, client, tmp_path, ct, lab, name, patient_id):
    data = _dicom_zip(tmp_path, ct, name, patient_id)
    sid = upload(client, [(io.BytesIO(data), f"{name}.zip")]).get_json()["id"]
    c = app.extensions["liverseg"]
    job = c.store.claim_job()
    out = output_dir(c.data_dir, sid)
    out.mkdir(parents=True)
    write_mask(ct, lab, out / "mask.nii.gz")
    write_report_files(out, ct=ct, labels=lab, analysis=analyze(lab, ct), run_info={"case": name})
    report = json.loads((out / "report.json").read_text())
    c.store.finish_job(job.id, report=report, summary=summarize_report(report))
    time.sleep(1.1)
    return sid


@pytest.mark.slow  # about 18 s: three DICOM uploads with their reports
def test_the_picker_keeps_to_the_patient_the_dicom_names(env, tmp_path):
    app, tokens = env
    c = app.test_client()
    login(c)
    small = dict(shape=(24, 64, 64), spacing=(3.0, 1.5, 1.5), seed=1)
    ct, lab = phantom(**small, lesions=((6.0, None),))
    mine = finished_dicom_study(app, c, tmp_path, ct, lab, "earlier", "PAT-A")
    other = finished_dicom_study(app, c, tmp_path, ct, lab, "someone", "PAT-B")
    follow = finished_dicom_study(app, c, tmp_path, ct, lab, "later", "PAT-A")
    page = c.get(f"/studies/{follow}/compare").text
    assert f'value="{mine}"' in page and f'value="{other}"' not in page
    assert "same PatientID" in page and "1 earlier study belongs to another patient" in page
    assert "PAT-A" not in page and "PAT-B" not in page  # the IDs themselves are never shown
    # the API refuses the pair the picker hid, with the reason
    h = {"Authorization": f"Bearer {tokens['ada']}"}
    r = c.post("/api/comparisons", json={"baseline": other, "followup": follow}, headers=h)
    wait(app)
    doc = c.get(r.headers["Location"], headers=h).get_json()
    assert doc["status"] == "refused" and doc["code"] == "different_patient"
    assert "PAT-" not in json.dumps(doc)

"""The web app under careless and hostile use (issue 18, items 2, 3, 4, 7).

Jobs here run a fake predictor (no network, no torch work) so that limits, cancellation
and clean-up are tested in milliseconds; test_web_jobs.py runs the real one.
"""

from __future__ import annotations

import io
import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

import bad_inputs as bi
from liverseg.inference.predictor import Prediction
from liverseg.web import create_app
from liverseg.web.auth import create_user, new_token
from liverseg.web.jobs import run_study_job

from test_web import PASSWORD, csrf_of, login, make_app, tiny_nifti, upload


class FakePredictor:
    """Duck-types :class:`liverseg.inference.Predictor` for run_case: calls ``hook`` at every step."""

    threads, engine, tta, overlap, min_tumor_volume_mm3 = 1, "torch", False, 0.5, 10.0

    def __init__(self, hook=None, *, steps: int = 5, model_path: str = "/srv/secret/models/liver-tumor-3d") -> None:
        self.hook, self.steps, self.model_path = hook, steps, model_path

    def predict(self, ct, *, progress=None, return_probabilities=False):
        for k in range(self.steps):
            if self.hook is not None:
                self.hook(k)
            if progress is not None:
                progress("segment", k / self.steps)
        labels = np.zeros(ct.shape, np.uint8)
        labels[:, 10:30, 10:30] = 1
        return Prediction(
            labels=ct.with_array(labels, is_hu=False, modality="SEG"), probabilities=None, timings_s={},
            model={"name": "fake", "sha256": "0" * 64, "kind": "3d", "path": self.model_path, "stages": []},
            device="cpu", warnings=[],
        )


@pytest.fixture()
def web(tmp_path):
    def build(predictor=None, **kw):
        app = create_app(data_dir=tmp_path / "data", start_workers=False,
                         predictor_factory=lambda: predictor or FakePredictor(), TESTING=True, **kw)
        store = app.extensions["liverseg"].store
        create_user(store, name="ada", password=PASSWORD, is_admin=True)
        token = new_token()
        store.add_token(store.user_by_name("ada").id, token)
        c = app.test_client()
        assert login(c).status_code == 302
        return app, c, {"Authorization": f"Bearer {token}"}

    return build


def _post(c, h, files, **form):
    return c.post("/api/studies", headers=h, data={"files": files, **form}, content_type="multipart/form-data")


def _nifti_upload(tmp_path) -> tuple[io.BytesIO, str]:
    return io.BytesIO(tiny_nifti(tmp_path / "x.nii.gz").read_bytes()), "Patient Scan.nii.gz"


# --------------------------------------------------------------------------- item 2: tiny uploads


def test_gzip_bomb_nifti_is_refused_at_upload_before_any_job(web, tmp_path):
    app, c, h = web()
    raw = bi.nifti_bytes(np.zeros((256, 256, 600), np.int16), zooms=(1.0, 1.0, 1.0))  # 75 MiB of zeros
    data = bi.gz(raw)
    assert len(data) < 200_000
    r = _post(c, h, [(io.BytesIO(data), "bomb.nii.gz")])
    assert r.status_code == 413, r.text
    assert "would decode to" in r.get_json()["error"] and "bomb.nii.gz" in r.get_json()["error"]
    assert app.extensions["liverseg"].store.count_jobs("queued") == 0


def test_many_member_zip_bomb_is_refused_at_upload_and_nothing_stays_on_disk(web, tmp_path):
    app, c, h = web()
    data = bi.zip_bomb(30, 3 * 2**20)  # 90 MiB of zeros in about 90 KiB, each member far below 16 MiB
    t0 = time.perf_counter()
    r = _post(c, h, [(io.BytesIO(data), "series.zip")])
    assert r.status_code == 400 and "zip bomb" in r.get_json()["error"]
    assert time.perf_counter() - t0 < 5.0
    data_dir = app.extensions["liverseg"].data_dir
    assert not any((data_dir / "studies").iterdir()) and not any((data_dir / "tmp").iterdir())


@pytest.mark.parametrize("make, status, match", [
    (lambda: bi.gz(bi.nifti_bytes(np.zeros((100, 100, 100), np.int16), zooms=(50.0, 50.0, 50.0))), 400,
     "larger than 30 mm"),
    (lambda: bi.gz(bi.header_only_nifti((1600, 1600, 800), datatype=64, bitpix=64)), 400, "GiB"),
    (lambda: bi.png_claiming(12000, 12000), 400, "12000 x 12000 pixels"),
])
def test_tiny_hostile_files_are_refused_at_upload(web, make, status, match):
    app, c, h = web()
    r = _post(c, h, [(io.BytesIO(make()), "scan.bin")])
    assert r.status_code == status and match in r.get_json()["error"], r.text
    assert "/tmp" not in r.get_json()["error"] and "upload-" not in r.get_json()["error"]


def test_job_past_its_time_limit_is_stopped_with_the_reason(web, tmp_path):
    app, c, h = web(predictor=FakePredictor(lambda k: time.sleep(0.2), steps=50), job_timeout_s=0.5)
    sid = _post(c, h, [_nifti_upload(tmp_path)]).get_json()["id"]
    t0 = time.perf_counter()
    app.extensions["liverseg"].pool.run_pending()
    assert time.perf_counter() - t0 < 3.0
    s = c.get(f"/api/studies/{sid}", headers=h).get_json()
    assert s["status"] == "failed" and "time limit of 0.5 s" in s["error"]


def test_job_past_its_memory_limit_is_stopped_with_the_reason(web, tmp_path):
    held = []
    app, c, h = web(predictor=FakePredictor(lambda k: held.append(np.ones(64 * 2**20, np.uint8))),
                    job_memory_bytes=100 * 2**20)
    sid = _post(c, h, [_nifti_upload(tmp_path)]).get_json()["id"]
    app.extensions["liverseg"].pool.run_pending()
    held.clear()
    s = c.get(f"/api/studies/{sid}", headers=h).get_json()
    assert s["status"] == "failed" and "memory limit" in s["error"]


# --------------------------------------------------------------------------- item 4: deleting a running study


def test_deleting_a_running_study_stops_its_job_and_leaves_no_files(web, tmp_path):
    box = {}

    def delete_midway(k):
        if k == 2:
            assert box["c"].delete(f"/api/studies/{box['sid']}", headers=box["h"]).get_json()["deleted"] is True
            time.sleep(0.6)  # the job notices at its next progress step

    app, c, h = web(predictor=FakePredictor(delete_midway, steps=6))
    box.update(c=c, h=h, sid=_post(c, h, [_nifti_upload(tmp_path)]).get_json()["id"])
    app.extensions["liverseg"].pool.run_pending()
    study = app.extensions["liverseg"].data_dir / "studies" / box["sid"]
    assert not study.exists()


def test_a_job_finishing_after_its_study_was_deleted_removes_what_it_wrote(web, tmp_path):
    app, c, h = web()
    ctx = app.extensions["liverseg"]
    sid = _post(c, h, [_nifti_upload(tmp_path)]).get_json()["id"]
    job = ctx.store.claim_job()

    def factory():  # the study disappears after the last progress check, just before the job stores its result
        class Late(FakePredictor):
            def predict(self, ct, **kw):
                out = super().predict(ct, **kw)
                ctx.store.delete_study(sid)
                return out
        return Late(steps=0)

    assert run_study_job(job.study_id, store=ctx.store, data_dir=ctx.data_dir, predictor_factory=factory,
                         job=job) == "missing"
    assert not (ctx.data_dir / "studies" / sid).exists()


def test_leftover_partial_outputs_are_removed_on_start(web, tmp_path):
    app, c, h = web()
    ctx = app.extensions["liverseg"]
    sid = _post(c, h, [_nifti_upload(tmp_path)]).get_json()["id"]
    partial = ctx.data_dir / "studies" / sid / ".output.partial-abc123"
    partial.mkdir()
    (partial / "mask.nii.gz").write_bytes(b"half")
    create_app(data_dir=ctx.data_dir, start_workers=False, predictor_factory=FakePredictor, TESTING=True)
    assert not partial.exists() and (ctx.data_dir / "studies" / sid / "input").is_dir()


def test_data_folder_is_private(web, tmp_path):
    app, c, h = web()
    ctx = app.extensions["liverseg"]
    _post(c, h, [_nifti_upload(tmp_path)])
    assert stat.S_IMODE(ctx.data_dir.stat().st_mode) == 0o700
    for name in ("liverseg.sqlite3", "secret_key"):
        assert stat.S_IMODE((ctx.data_dir / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((ctx.data_dir / "studies").stat().st_mode) == 0o700


def test_report_does_not_carry_the_servers_model_path(web, tmp_path):
    app, c, h = web()
    sid = _post(c, h, [_nifti_upload(tmp_path)]).get_json()["id"]
    app.extensions["liverseg"].pool.run_pending()
    s = c.get(f"/api/studies/{sid}", headers=h).get_json()
    assert s["status"] == "done", s["error"]
    assert "/srv/secret" not in json.dumps(s["report"])
    on_disk = c.get(f"/api/studies/{sid}/files/report.json", headers=h)
    assert b"/srv/secret" not in on_disk.data and b"/srv/secret" not in c.get(
        f"/api/studies/{sid}/files/report.html", headers=h).data


def test_failure_names_the_upload_not_the_stored_file(web, tmp_path):
    app, c, h = web()
    raw = bi.nifti_bytes(np.zeros((20, 20, 5), np.int16), patch={bi.VOX_OFFSET: bi.f32(0.0)})  # passes upload
    sid = _post(c, h, [(io.BytesIO(raw), "Follow-Up CT.nii")]).get_json()["id"]
    app.extensions["liverseg"].pool.run_pending()
    s = c.get(f"/api/studies/{sid}", headers=h).get_json()
    assert s["status"] == "failed" and "Follow-Up CT.nii" in s["error"] and "scan.nii" not in s["error"]


# --------------------------------------------------------------------------- item 3: sessions and sign-in


def test_sign_out_ends_the_session_on_the_server(web):
    app, c, h = web()
    cookie = c.get_cookie("liverseg_session").value
    assert c.post("/logout", data={"csrf_token": csrf_of(c.get("/history").text)}).status_code == 302
    replay = app.test_client()
    replay.set_cookie("liverseg_session", cookie)
    assert replay.get("/history").status_code == 302  # the replayed cookie no longer signs anyone in


@pytest.mark.parametrize("nxt", ["/%09/evil.example", "/%0A/evil.example", "/%0D/evil.example",
                                 "//evil.example", "/\\evil.example", "https://evil.example/", "/%2F%2Fevil"])
def test_next_never_redirects_off_site_nor_crashes(web, nxt):
    app, _, _ = web()
    c = app.test_client()
    token = csrf_of(c.get("/login").text)
    r = c.post(f"/login?next={nxt}", data={"username": "ada", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 302, r.text
    location = r.headers["Location"]
    assert "evil" not in location.replace("%2F%2Fevil", "") or location.startswith("/%2F")
    assert not location.startswith("//") and "://" not in location


def test_next_to_a_page_of_this_site_still_works(web):
    app, _, _ = web()
    c = app.test_client()
    token = csrf_of(c.get("/login").text)
    r = c.post("/login?next=/upload", data={"username": "ada", "password": PASSWORD, "csrf_token": token})
    assert r.headers["Location"] == "/upload"


def test_failed_guesses_from_one_client_do_not_lock_the_owner_out(tmp_path):
    app = make_app(tmp_path, login_max_failures=3)
    create_user(app.extensions["liverseg"].store, name="ada", password=PASSWORD)
    attacker = app.test_client()
    for _ in range(5):
        token = csrf_of(attacker.get("/login").text)
        attacker.post("/login", data={"username": "ada", "password": "wrong guess!", "csrf_token": token},
                      environ_base={"REMOTE_ADDR": "203.0.113.9"})
    token = csrf_of(attacker.get("/login").text)
    r = attacker.post("/login", data={"username": "ada", "password": PASSWORD, "csrf_token": token},
                      environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert r.status_code == 429
    owner = app.test_client()
    assert login(owner).status_code == 302  # from her own machine (127.0.0.1)


def test_first_admin_password_goes_to_a_private_file_not_stdout(tmp_path, capsys, monkeypatch):
    import liverseg.web.server as server
    from liverseg.cli import main

    monkeypatch.setattr(server, "serve", lambda **kw: None)
    import liverseg.cli  # noqa: F401  (serve is imported inside the handler)

    d = tmp_path / "data"
    assert main(["serve", "--data-dir", str(d)]) == 0
    out = capsys.readouterr().out
    secret = (d / "initial_admin_password").read_text().split("\n")
    assert secret[0] == "admin" and len(secret[1]) >= 16 and secret[1] not in out
    assert stat.S_IMODE((d / "initial_admin_password").stat().st_mode) == 0o600
    assert "initial_admin_password" in out


# --------------------------------------------------------------------------- item 7: limits and messages


def test_a_too_long_note_is_refused_not_cut(web, tmp_path):
    app, c, h = web()
    r = _post(c, h, [_nifti_upload(tmp_path)], note="x" * 5000)
    assert r.status_code == 400 and "at most 2000" in r.get_json()["error"]


def test_a_huge_form_field_gets_a_json_413_that_names_the_field_limit(web, tmp_path):
    app, c, h = web()
    r = _post(c, h, [_nifti_upload(tmp_path)], note="x" * (1024 * 1024))
    assert r.status_code == 413 and r.is_json
    assert "text field" in r.get_json()["error"] and "GB" not in r.get_json()["error"]


def test_an_oversized_body_gets_a_json_413_that_names_the_size_limit(tmp_path):
    app = make_app(tmp_path, max_upload_bytes=1000)
    store = app.extensions["liverseg"].store
    user = create_user(store, name="ada", password=PASSWORD)
    token = new_token()
    store.add_token(user.id, token)
    r = app.test_client().post("/api/studies", headers={"Authorization": f"Bearer {token}"},
                               data={"files": [(io.BytesIO(bytes(5000)), "a.nii")]},
                               content_type="multipart/form-data")
    assert r.status_code == 413 and "at most" in r.get_json()["error"] and "per study" in r.get_json()["error"]


def test_zip_without_dicom_is_refused_at_upload(web):
    app, c, h = web()
    data = bi.zip_of({"notes/readme.txt": b"hello", "a.csv": b"1,2"})
    r = _post(c, h, [(io.BytesIO(data), "export.zip")])
    assert r.status_code == 400 and "holds no DICOM" in r.get_json()["error"] and "export.zip" in r.get_json()["error"]


def test_long_file_names_are_stored_not_a_500(web):
    app, c, h = web()
    for name in ("a" * 300 + ".nii", "é" * 5000 + ".nii"):
        r = _post(c, h, [(io.BytesIO(b"plain text, not a scan"), name)])
        assert r.status_code == 400, (len(name), r.status_code)


@pytest.mark.parametrize("members", [
    {"x": b"1", "x/y.dcm": b"2"},
    {"d" * 300 + "/a.dcm": b"1"},
    {"/".join(["n"] * 2000) + "/a.dcm": b"1"},
])
def test_odd_zip_members_are_refused_with_a_reason_not_a_500(web, members):
    app, c, h = web()
    r = _post(c, h, [(io.BytesIO(bi.zip_of(members)), "odd.zip")])
    assert r.status_code == 400, r.text
    assert "zip" in r.get_json()["error"]


def test_user_name_error_keeps_its_capitals(web):
    app, c, h = web()
    token = csrf_of(c.get("/admin/users").text)
    r = c.post("/admin/users", data={"csrf_token": token, "action": "add", "username": "Bad Name!"})
    assert r.status_code == 400 and "&#39;Bad Name!&#39;" in r.text


def test_waitress_gets_connection_limits_and_timeouts(monkeypatch, tmp_path):
    import waitress

    import liverseg.web.server as server

    seen = {}

    class Bound:  # what waitress.create_server returns, without listening
        def run(self):
            seen["ran"] = True

        def close(self):
            pass

    monkeypatch.setattr(waitress, "create_server", lambda app, **kw: seen.update(kw) or Bound())
    monkeypatch.setattr(os, "umask", lambda mask: seen.setdefault("umask", mask) and 0o022)
    server.serve(data_dir=tmp_path / "d", start_workers=False)
    assert seen["ran"]
    assert seen["connection_limit"] <= 200 and seen["channel_timeout"] <= 60
    assert seen["max_request_body_size"] > 2 * 1024**3  # Flask answers 413 (JSON) first
    assert seen["umask"] == 0o077


def test_a_full_disk_is_507_with_a_message_and_leaves_nothing(web, tmp_path, monkeypatch):
    import errno

    from werkzeug.datastructures import FileStorage

    app, c, h = web()

    def full(self, dst, buffer_size=16384):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileStorage, "save", full)
    r = _post(c, h, [_nifti_upload(tmp_path)])
    assert r.status_code == 507 and "disk is full" in r.get_json()["error"]
    data_dir = app.extensions["liverseg"].data_dir
    assert not any((data_dir / "studies").iterdir()) and not any((data_dir / "tmp").iterdir())


def test_a_small_upload_gets_a_short_time_limit(web, tmp_path, monkeypatch):
    import liverseg.web.jobs as jobs

    assert jobs.job_time_limit(2 * 2**20, 1800) == 55.0  # no upload of 2 MiB holds a worker past a minute
    assert jobs.job_time_limit(500 * 2**20, 1800) == 1800  # a real CT gets the pool's limit
    monkeypatch.setattr(jobs, "JOB_BASE_S", 0.3)
    monkeypatch.setattr(jobs, "JOB_S_PER_MIB", 0.0)
    app, c, h = web(predictor=FakePredictor(lambda k: time.sleep(0.2), steps=50))  # pool limit: 1800 s
    sid = _post(c, h, [_nifti_upload(tmp_path)]).get_json()["id"]
    t0 = time.perf_counter()
    app.extensions["liverseg"].pool.run_pending()
    assert time.perf_counter() - t0 < 3
    assert "time limit of 0.3 s" in c.get(f"/api/studies/{sid}", headers=h).get_json()["error"]


def test_huge_voxels_are_not_upsampled_a_thousandfold(tiny_bundle_3d):
    from liverseg.errors import DimensionError
    from liverseg.inference import Predictor
    from liverseg.io import Volume

    # 16 x 40 x 40 voxels of 30 x 15 x 15 mm pass the readers (480 x 600 x 600 mm) but would become
    # millions of voxels on the model's grids
    ct = Volume(array=np.full((16, 40, 40), 40, np.int16), spacing=(30.0, 15.0, 15.0))
    with pytest.raises(DimensionError, match="far coarser than a CT"):
        Predictor(tiny_bundle_3d, model_2d=None, threads=1).predict(ct)


def test_large_binary_uploads_are_not_mistaken_for_a_long_form_field(web):
    """A form-field cap at werkzeug's read size answered 413 for real zips and scans (their bytes hold CRLFs)."""
    app, c, h = web()
    noise = np.random.default_rng(0).integers(0, 256, 3 * 2**20, dtype=np.uint8).tobytes()
    r = _post(c, h, [(io.BytesIO(b"PK\x03\x04" + noise), "series.zip")])
    assert r.status_code == 400 and "not a readable zip" in r.get_json()["error"], r.text
    scan = bi.nifti_bytes(np.random.default_rng(1).integers(-1000, 1000, (64, 64, 64)).astype(np.int16))
    r = _post(c, h, [(io.BytesIO(scan), "ct.nii")])
    assert r.status_code == 202, r.text


def test_a_full_disk_while_a_job_writes_says_so_and_leaves_nothing_half_written(web, tmp_path, monkeypatch):
    import errno

    import liverseg.io

    app, c, h = web()
    sid = _post(c, h, [_nifti_upload(tmp_path)]).get_json()["id"]

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(liverseg.io, "write_mask", full)
    app.extensions["liverseg"].pool.run_pending()
    s = c.get(f"/api/studies/{sid}", headers=h).get_json()
    assert s["status"] == "failed" and "disk is full" in s["error"] and "internal error" not in s["error"]
    study = app.extensions["liverseg"].data_dir / "studies" / sid
    assert not (study / "output").exists() and not any(p.name.startswith(".output") for p in study.iterdir())

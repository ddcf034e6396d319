"""The web app through Flask's test client: accounts, CSRF, uploads, limits, the API, restart safety."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from liverseg.io import Volume, write_volume
from liverseg.web import create_app
from liverseg.web.auth import LoginLimiter, create_user, new_token
from liverseg.web.store import MIGRATIONS, Store

PASSWORD = "correct horse battery"


def _unavailable_predictor():
    raise AssertionError("these tests never run a job")


def make_app(tmp_path: Path, **kw):
    kw.setdefault("predictor_factory", _unavailable_predictor)
    return create_app(data_dir=tmp_path / "data", start_workers=False, TESTING=True, **kw)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def login(client, name: str = "ada", password: str = PASSWORD):
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"username": name, "password": password, "csrf_token": token})


def tiny_nifti(path: Path) -> Path:
    arr = np.full((6, 20, 20), -100, np.int16)
    arr[2:4, 5:15, 5:15] = 60
    write_volume(Volume(array=arr, spacing=(2.0, 1.0, 1.0)), path)
    return path


@pytest.fixture()
def app(tmp_path):
    app = make_app(tmp_path)
    store = app.extensions["liverseg"].store
    create_user(store, name="ada", password=PASSWORD, is_admin=True)
    create_user(store, name="bob", password=PASSWORD)
    return app


@pytest.fixture()
def client(app):
    c = app.test_client()
    assert login(c).status_code == 302
    return c


def upload(client, files, note="", *, json_accept=True):
    page = client.get("/upload").text
    data = {"csrf_token": csrf_of(page), "note": note, "files": files}
    headers = {"Accept": "application/json"} if json_accept else {}
    return client.post("/upload", data=data, headers=headers, content_type="multipart/form-data")


# --------------------------------------------------------------------------- accounts


def test_login_logout_and_pages_need_a_session(app):
    c = app.test_client()
    r = c.get("/history")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert c.get("/studies/abc/status.json").status_code == 401
    r = login(c)
    assert r.status_code == 302 and r.headers["Location"].endswith("/history")
    cookie = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("liverseg_session="))
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
    for path in ("/history", "/upload", "/account", "/admin/users"):
        assert c.get(path).status_code == 200, path
    assert c.get("/").status_code == 302
    token = csrf_of(c.get("/history").text)
    assert c.post("/logout", data={"csrf_token": token}).status_code == 302
    assert c.get("/history").status_code == 302


def test_wrong_password_is_refused_and_failures_are_rate_limited(tmp_path):
    app = make_app(tmp_path, login_max_failures=3)
    create_user(app.extensions["liverseg"].store, name="ada", password=PASSWORD)
    c = app.test_client()
    for _ in range(3):
        r = login(c, password="wrong password!")
        assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = login(c)  # even the right password waits now
    assert r.status_code == 429 and "Too many failed sign-ins" in r.text
    assert c.get("/history").status_code == 302


def test_unknown_user_is_refused_like_a_wrong_password(app):
    r = login(app.test_client(), name="nobody")
    assert r.status_code == 401 and "Wrong user name or password" in r.text


def test_forms_without_csrf_token_are_refused(app):
    c = app.test_client()
    r = c.post("/login", data={"username": "ada", "password": PASSWORD})
    assert r.status_code == 400 and "security token" in r.text
    assert login(c).status_code == 302
    r = c.post("/upload", data={"files": (io.BytesIO(b"x"), "a.nii")}, content_type="multipart/form-data")
    assert r.status_code == 400
    r = c.post("/admin/users", data={"action": "add", "username": "eve"})
    assert r.status_code == 400
    assert app.extensions["liverseg"].store.user_by_name("eve") is None


def test_security_headers_and_csp_without_inline_code(client):
    r = client.get("/upload")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-store"
    html = r.text
    assert "<script>" not in html and not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert " style=" not in html and "<style" not in html, "inline style"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    assert "http://" not in html and "https://" not in html, "external resource"


def test_password_change_ends_sessions(app, client):
    other = app.test_client()
    assert login(other).status_code == 302
    token = csrf_of(client.get("/account").text)
    r = client.post("/account", data={"csrf_token": token, "action": "password", "current": PASSWORD,
                                      "new": "a brand new secret", "confirm": "a brand new secret"})
    assert r.status_code == 303
    assert other.get("/history").status_code == 302  # the other session ended too
    assert login(app.test_client(), password="a brand new secret").status_code == 302


def test_admin_manages_users_and_non_admin_cannot(app, client):
    token = csrf_of(client.get("/admin/users").text)
    r = client.post("/admin/users", data={"csrf_token": token, "action": "add", "username": "carol"})
    assert r.status_code == 200
    password = re.search(r'id="new-password">([^<]+)<', r.text).group(1)
    assert login(app.test_client(), name="carol", password=password).status_code == 302
    r = client.post("/admin/users", data={"csrf_token": token, "action": "add", "username": "carol"})
    assert r.status_code == 400 and "already exists" in r.text
    bob = app.extensions["liverseg"].store.user_by_name("bob")
    r = client.post("/admin/users", data={"csrf_token": token, "action": "delete", "user_id": str(bob.id)})
    assert r.status_code == 200 and app.extensions["liverseg"].store.user_by_name("bob") is None
    c = app.test_client()
    assert login(c, name="carol", password=password).status_code == 302
    assert c.get("/admin/users").status_code == 404


def test_account_creates_api_token(app, client):
    token = csrf_of(client.get("/account").text)
    r = client.post("/account", data={"csrf_token": token, "action": "token"})
    api_token = re.search(r'id="new-token">([^<]+)<', r.text).group(1)
    assert app.test_client().get("/api/studies", headers={"Authorization": f"Bearer {api_token}"}).status_code == 200


def test_login_limiter_unit():
    """Issue 18, item 3: failures back off the client that made them, never the account's owner elsewhere."""
    lim = LoginLimiter(max_failures=2, window_s=60)
    assert lim.retry_after("ada", "1.1.1.1") == 0
    lim.failed("ada", "1.1.1.1")
    lim.failed("ADA", "1.1.1.1")
    assert lim.retry_after("ada", "1.1.1.1") > 0  # this client, this name: wait
    assert lim.retry_after("ada", "3.3.3.3") == 0  # the owner on another machine: not locked out
    assert lim.retry_after("bob", "1.1.1.1") == 0  # the same client may still try another name ...
    for name in ("bob", "carol", "dave", "erin", "frank", "gina"):
        lim.failed(name, "1.1.1.1")
    assert lim.retry_after("zoe", "1.1.1.1") > 0  # ... until it failed 4 x max_failures times in all
    lim.succeeded("ada", "3.3.3.3")
    assert lim.retry_after("ada", "3.3.3.3") == 0
    with pytest.raises(ValueError, match="max_failures"):
        LoginLimiter(max_failures=0)


# --------------------------------------------------------------------------- uploads


def test_upload_nifti_creates_a_queued_study(app, client, tmp_path):
    data = tiny_nifti(tmp_path / "scan.nii.gz").read_bytes()
    r = upload(client, [(io.BytesIO(data), "DOE^JOHN.nii.gz")], note="follow-up")
    assert r.status_code == 202, r.text
    body = r.get_json()
    study_id = body["id"]
    assert body["status"] == "queued" and body["url"] == f"/studies/{study_id}"
    folder = tmp_path / "data" / "studies" / study_id / "input"
    assert (folder / "DOEJOHN.nii.gz").read_bytes() == data  # under the name given (made safe): the case's name
    page = client.get(f"/studies/{study_id}")
    assert page.status_code == 200 and 'data-status="queued"' in page.text
    s = client.get(f"/studies/{study_id}/status.json").get_json()
    assert s["status"] == "queued" and s["note"] == "follow-up" and s["input_format"] == "nifti-gz"
    hist = client.get("/history?q=follow").text
    assert study_id in hist
    assert study_id not in client.get("/history?q=nothing-like-this").text
    assert not list((tmp_path / "data" / "tmp").iterdir())


def test_upload_without_javascript_redirects(client, tmp_path):
    data = tiny_nifti(tmp_path / "scan.nii").read_bytes()
    r = upload(client, [(io.BytesIO(data), "scan.nii")], json_accept=False)
    assert r.status_code == 303 and r.headers["Location"].startswith("/studies/")


def test_upload_refuses_a_text_file_with_a_clear_message(client, tmp_path):
    r = upload(client, [(io.BytesIO(b"patient notes, not an image\n" * 10), "scan.nii.gz")])
    assert r.status_code == 400
    assert "not an image" in r.get_json()["error"]
    r = upload(client, [(io.BytesIO(b"hello"), "notes.txt")], json_accept=False)
    assert r.status_code == 400 and "alert error" in r.text
    assert not list((tmp_path / "data" / "studies").glob("*")) if (tmp_path / "data" / "studies").exists() else True


def test_upload_nothing_is_refused(client):
    r = upload(client, [])
    assert r.status_code == 400 and "no file" in r.get_json()["error"]


def test_oversized_upload_answers_413(tmp_path):
    app = make_app(tmp_path, max_upload_bytes=50_000)
    create_user(app.extensions["liverseg"].store, name="ada", password=PASSWORD)
    c = app.test_client()
    login(c)
    r = upload(c, [(io.BytesIO(b"\0" * 60_000), "big.nii")])
    assert r.status_code == 413 and "too large" in r.get_json()["error"]


def test_too_many_files_answers_413(tmp_path):
    app = make_app(tmp_path, max_files=3)
    create_user(app.extensions["liverseg"].store, name="ada", password=PASSWORD)
    c = app.test_client()
    login(c)
    r = upload(c, [(io.BytesIO(b"DICM"), f"IM{i}") for i in range(4)])
    assert r.status_code == 413


def test_zip_slip_answers_400(client, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("series/IM0001.dcm", b"\0" * 128 + b"DICM" + b"\0" * 64)
        zf.writestr("../../evil.txt", b"owned")
    r = upload(client, [(io.BytesIO(buf.getvalue()), "scan.zip")])
    assert r.status_code == 400 and "climbs out" in r.get_json()["error"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()


def test_folder_without_dicom_is_refused(client):
    r = upload(client, [(io.BytesIO(b"just text"), "dir/a.txt"), (io.BytesIO(b"more text"), "dir/b.txt")])
    assert r.status_code == 400 and "DICOM" in r.get_json()["error"]


# --------------------------------------------------------------------------- ownership and deletion


def _study_of(client, tmp_path) -> str:
    data = tiny_nifti(tmp_path / "s.nii.gz").read_bytes()
    return upload(client, [(io.BytesIO(data), "s.nii.gz")]).get_json()["id"]


def test_another_users_study_is_404(app, client, tmp_path):
    study_id = _study_of(client, tmp_path)
    bob = app.test_client()
    login(bob, name="bob")
    for path in (f"/studies/{study_id}", f"/studies/{study_id}/status.json", f"/studies/{study_id}/data.json",
                 f"/studies/{study_id}/files/report.json", f"/studies/{study_id}/slice/0.png"):
        assert bob.get(path).status_code == 404, path
    token = csrf_of(bob.get("/history").text)
    assert bob.post(f"/studies/{study_id}/delete", data={"csrf_token": token}).status_code == 404
    assert study_id not in bob.get("/history").text
    assert client.get(f"/studies/{study_id}").status_code == 200


def test_delete_removes_files(app, client, tmp_path):
    study_id = _study_of(client, tmp_path)
    folder = tmp_path / "data" / "studies" / study_id
    assert folder.is_dir()
    token = csrf_of(client.get("/history").text)
    r = client.post(f"/studies/{study_id}/delete", data={"csrf_token": token})
    assert r.status_code == 303
    assert not folder.exists()
    assert "were deleted" in client.get("/history").text
    assert client.get(f"/studies/{study_id}").status_code == 404


def test_output_files_only_from_the_whitelist(client, tmp_path):
    study_id = _study_of(client, tmp_path)
    for name in ("../input/scan.nii.gz", "secret_key", "report.json"):
        assert client.get(f"/studies/{study_id}/files/{name}").status_code == 404  # not done, or not an output


# --------------------------------------------------------------------------- REST API


@pytest.fixture()
def api(app):
    store = app.extensions["liverseg"].store
    tokens = {}
    for name in ("ada", "bob"):
        tokens[name] = new_token()
        store.add_token(store.user_by_name(name).id, tokens[name])
    return app.test_client(), {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}


def test_api_requires_a_bearer_token(api):
    c, _ = api
    r = c.get("/api/studies")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.get("/api/studies", headers={"Authorization": "Bearer lst_wrong"}).status_code == 401
    assert c.get("/api/studies", headers={"Authorization": "Basic abc"}).status_code == 401
    assert c.post("/api/studies").status_code == 401
    assert c.delete("/api/studies/abc").status_code == 401


def test_api_create_list_get_delete(api, tmp_path):
    c, h = api
    data = tiny_nifti(tmp_path / "a.nii.gz").read_bytes()
    r = c.post("/api/studies", headers=h["ada"], data={"files": [(io.BytesIO(data), "a.nii.gz")], "note": "api"},
               content_type="multipart/form-data")
    assert r.status_code == 202, r.text
    body = r.get_json()
    assert body == {"id": body["id"], "status": "queued"}
    sid = body["id"]
    listed = c.get("/api/studies", headers=h["ada"]).get_json()["studies"]
    assert [s["id"] for s in listed] == [sid] and listed[0]["note"] == "api"
    one = c.get(f"/api/studies/{sid}", headers=h["ada"]).get_json()
    assert one["status"] == "queued" and one["progress"] == 0 and one["error"] is None and "report" not in one
    assert c.get(f"/api/studies/{sid}/files/mask.nii.gz", headers=h["ada"]).status_code == 404  # not done yet
    # bob sees nothing of it
    assert c.get("/api/studies", headers=h["bob"]).get_json()["studies"] == []
    assert c.get(f"/api/studies/{sid}", headers=h["bob"]).status_code == 404
    assert c.delete(f"/api/studies/{sid}", headers=h["bob"]).status_code == 404
    assert c.get(f"/api/studies/{sid}/files/report.json", headers=h["bob"]).status_code == 404
    assert c.delete(f"/api/studies/{sid}", headers=h["ada"]).get_json() == {"id": sid, "deleted": True}
    assert c.get(f"/api/studies/{sid}", headers=h["ada"]).status_code == 404


def test_api_refusals(api):
    c, h = api
    r = c.post("/api/studies", headers=h["ada"], data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "error" in r.get_json()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("/etc/evil", b"x")
    r = c.post("/api/studies", headers=h["ada"], data={"files": [(io.BytesIO(buf.getvalue()), "x.zip")]},
               content_type="multipart/form-data")
    assert r.status_code == 400 and "absolute path" in r.get_json()["error"]


def test_openapi_spec_lists_every_route(app):
    spec = app.test_client().get("/api/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/api/studies", "/api/studies/{id}", "/api/studies/{id}/files/{name}",
                                  "/api/studies/{id}/mask", "/api/studies/{id}/versions",
                                  "/api/studies/{id}/versions/{n}/files/{name}", "/api/openapi.json", "/api/comparisons", "/api/comparisons/{cid}",
                                  "/api/comparisons/{cid}/files/{name}"}
    assert set(spec["paths"]["/api/studies"]) == {"get", "post"}
    assert "202" in spec["paths"]["/api/studies"]["post"]["responses"]
    assert set(spec["paths"]["/api/studies/{id}"]) == {"get", "delete"}
    rules = {r.rule for r in app.url_map.iter_rules() if r.rule.startswith("/api/")}
    assert {re.sub(r"<(\w+)>", lambda m: "{id}" if m.group(1) == "study_id" else "{" + m.group(1) + "}", r)
            for r in rules} == set(spec["paths"])


# --------------------------------------------------------------------------- store, restart, CLI


def test_restart_requeues_running_job(tmp_path, app, client):
    import subprocess
    import sys

    sid = _study_of(client, tmp_path)
    store = app.extensions["liverseg"].store
    # a worker process claims the job and dies with it (its lease is still live: only its death frees the job)
    claim = ("import sys; from liverseg.web.store import Store; from liverseg.web.lease import worker_id; "
             "Store(path=sys.argv[1]).claim_job(worker=worker_id())")
    subprocess.run([sys.executable, "-c", claim, str(store.path)], check=True)
    assert store.latest_job(sid).status == "running"
    # a new app on the same data folder starts
    app2 = make_app(tmp_path)
    job2 = app2.extensions["liverseg"].store.latest_job(sid)
    assert job2.status == "queued" and "restart" in job2.stage
    assert (tmp_path / "data" / "studies" / sid / "input" / "s.nii.gz").is_file()  # nothing uploaded is lost


def test_restart_fails_a_job_interrupted_too_often(tmp_path):
    store = Store(path=tmp_path / "db.sqlite3")
    u = store.add_user(name="ada", password_hash="x")
    store.add_study(study_id="abc123", user_id=u.id, note="", input_name="a", input_kind="file",
                    input_format="nifti", n_files=1, n_bytes=1)
    for _ in range(3):
        assert store.claim_job(lease_s=0.0) is not None  # its lease runs out at once, as a dead worker's does
        store.recover_running(max_attempts=3)
    job = store.latest_job("abc123")
    assert job.status == "failed" and "3 times" in job.error


def test_store_migrations_and_claims(tmp_path):
    store = Store(path=tmp_path / "db.sqlite3")
    assert store.schema_version == len(MIGRATIONS)
    assert Store(path=tmp_path / "db.sqlite3").schema_version == len(MIGRATIONS)  # idempotent
    u = store.add_user(name="ada", password_hash="x")
    for sid in ("s1", "s2"):
        store.add_study(study_id=sid, user_id=u.id, note="", input_name="a", input_kind="file",
                        input_format="nifti", n_files=1, n_bytes=1)
    assert store.claim_job().study_id == "s1"
    assert store.claim_job().study_id == "s2"
    assert store.claim_job() is None
    store.fail_job(store.latest_job("s1").id, error="bad")
    store.requeue("s1")
    assert store.latest_job("s1").status == "queued"
    assert store.user_by_token("lst_nothing") is None


def test_cli_users_add_token_passwd(tmp_path, capsys, monkeypatch):
    from liverseg.cli import main

    d = str(tmp_path / "data")
    assert main(["users", "--data-dir", d, "add", "ada", "--admin"]) == 0
    password = capsys.readouterr().out.strip().splitlines()[-1]
    store = Store(path=tmp_path / "data" / "liverseg.sqlite3")
    from liverseg.web.auth import check_password

    assert check_password(store.user_by_name("ada"), password) and store.user_by_name("ada").is_admin
    assert main(["users", "token", "ada", "--data-dir", d]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert store.user_by_token(token).name == "ada"
    monkeypatch.setattr("sys.stdin", io.StringIO("another long secret\n"))
    assert main(["users", "passwd", "ada", "--data-dir", d]) == 0
    assert check_password(store.user_by_name("ada"), "another long secret")
    assert main(["users", "token", "nobody", "--data-dir", d]) == 2
    assert main(["users", "add", "ada", "--data-dir", d]) == 2  # exists


def test_first_admin_password(tmp_path):
    from liverseg.web.app import open_store
    from liverseg.web.auth import check_password, ensure_admin

    store = open_store(tmp_path)
    password = ensure_admin(store)
    assert password and check_password(store.user_by_name("admin"), password)
    assert ensure_admin(store) is None  # only on first start


def test_create_app_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        create_app(data_dir=tmp_path, workers=0, start_workers=False)
    with pytest.raises(ValueError, match="max_files"):
        create_app(data_dir=tmp_path, max_files=0, start_workers=False)


def test_error_pages_are_json_for_the_api_and_html_for_pages(client):
    r = client.get("/studies/nope")
    assert r.status_code == 404 and "<html" in r.text
    assert json.loads(client.get("/api/studies/x").data)["error"]

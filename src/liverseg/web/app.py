"""The Flask app factory: configuration, security headers, error pages, the worker pool."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from liverseg.web.auth import INITIAL_PASSWORD_FILE, LoginLimiter
from liverseg.web.backends import JobBackend, make_job_backend
from liverseg.web.jobs import DEFAULT_JOB_MEMORY_BYTES, DEFAULT_JOB_TIMEOUT_S, WorkerPool, shared_factory
from liverseg.web.lock import check_database_of
from liverseg.web.store import DEFAULT_LEASE_S, Store
from liverseg.web.uploads import input_path, output_dir
from liverseg.web.viewer import VolumeCache, load_study_volumes

__all__ = ["create_app", "default_predictor_factory", "WebContext", "open_store", "DEFAULT_MAX_UPLOAD_BYTES",
           "DEFAULT_MAX_FILES", "MAX_NOTE_CHARS"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3
DEFAULT_MAX_FILES = 5000
#: Longest text form field (bytes): the note and the CSRF token are far shorter. Werkzeug applies it to each
#: chunk it buffers while parsing, files included, so it must stay well above its 64 KiB read size.
MAX_FORM_FIELD_BYTES = 512 * 1024
#: Longest note kept with a study (characters); a longer one is refused, never cut silently.
MAX_NOTE_CHARS = 2000

#: Every page satisfies this: scripts and styles only from our own static files.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@dataclasses.dataclass
class WebContext:
    """What the views share: ``app.extensions['liverseg']``."""

    data_dir: Path
    store: Store
    pool: JobBackend
    cache: VolumeCache
    limiter: LoginLimiter
    max_files: int
    max_upload_bytes: int


def open_store(data_dir: str | Path, *, database: str | None = None) -> Store:
    """The store of a data folder (``<data_dir>/liverseg.sqlite3``), or of ``database`` (``postgresql://...``),
    created and migrated when needed."""
    if database:
        from liverseg.web.db import open_database

        return Store(database=open_database(database))
    return Store(path=Path(data_dir) / "liverseg.sqlite3")


def _secret_key(data_dir: Path) -> bytes:
    """The session-signing key kept in ``<data_dir>/secret_key`` (created once, mode 0600)."""
    path = data_dir / "secret_key"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        os.replace(tmp, path)
    return path.read_bytes()


def _too_large_message(max_upload_bytes: int, max_files: int) -> str:
    """What a 413 says: which of the request's limits was passed (size, form fields, a field's length)."""
    length = request.content_length
    if length is not None and length > max_upload_bytes:
        return (f"the upload is too large ({length / 1024**3:.3g} GB): at most {max_upload_bytes / 1024**3:.3g} GB "
                "per study; upload one series")
    return (f"the form is too large: at most {max_files} files, and each text field (such as the note) at most "
            f"{MAX_FORM_FIELD_BYTES // 1024} KiB; the note itself holds at most {MAX_NOTE_CHARS} characters")


def default_predictor_factory(model: str | Path | None = None) -> Callable[[], Any]:
    """A factory building ``liverseg.inference.Predictor`` for ``model`` (a bundle name or path; None: the default)."""

    def build() -> Any:
        from liverseg.inference import Predictor

        return Predictor(model) if model is not None else Predictor()

    return build


def _clean_orphans(data_dir: Path, store: Store) -> None:
    """Remove half-finished uploads (``tmp/``), study folders without a database row, the
    temporary output folders (``.output.partial-*``, ``.output.old-*``) of jobs killed while writing,
    and what killed mask-version saves left (:func:`liverseg.web.corrections.clean_incomplete_versions`)."""
    from liverseg.web.corrections import clean_incomplete_versions

    shutil.rmtree(data_dir / "tmp", ignore_errors=True)
    studies = data_dir / "studies"
    if studies.is_dir():
        for d in studies.iterdir():
            if d.is_dir() and store.study(d.name) is None:
                shutil.rmtree(d, ignore_errors=True)
            elif d.is_dir():
                for leftover in d.iterdir():
                    if leftover.name.startswith((".output.partial-", ".output.old-")):
                        shutil.rmtree(leftover, ignore_errors=True)
    clean_incomplete_versions(data_dir)


def _make_private(data_dir: Path) -> None:
    """The data folder holds password hashes, reports and patients' scans: owner-only (0700 / 0600)."""
    os.chmod(data_dir, 0o700)
    for sub in ("studies", "tmp"):
        (data_dir / sub).mkdir(exist_ok=True)
        os.chmod(data_dir / sub, 0o700)
    for name in ("liverseg.sqlite3", "liverseg.sqlite3-wal", "liverseg.sqlite3-shm", "secret_key",
                 INITIAL_PASSWORD_FILE):
        if (data_dir / name).exists():
            os.chmod(data_dir / name, 0o600)


def create_app(
    *,
    data_dir: str | Path,
    workers: int = 1,
    start_workers: bool = True,
    predictor_factory: Callable[[], Any] | None = None,
    model: str | Path | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    secure_cookies: bool = True,
    login_max_failures: int = 5,
    login_window_s: float = 900.0,
    viewer_cache_size: int = 4,
    job_timeout_s: float | None = DEFAULT_JOB_TIMEOUT_S,
    job_memory_bytes: int | None = DEFAULT_JOB_MEMORY_BYTES,
    database: str | None = None,
    broker: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    **config: Any,
) -> Flask:
    """Build the liverseg web app over the data folder ``data_dir``.

    Args:
        data_dir: SQLite database, secret key and study files live here (created when missing).
        workers: worker threads running jobs.
        start_workers: start the pool now (tests pass False and call ``pool.run_pending()``).
        predictor_factory: returns the Predictor; default builds ``Predictor`` for ``model``.
        model: bundle name or path for the default factory (None: the library's default).
        max_upload_bytes: largest request body (bytes); larger answers 413.
        max_files: most files in one upload; more answers 413.
        secure_cookies: send the session cookie only over HTTPS (browsers treat
            http://127.0.0.1 and http://localhost as secure); False for plain-HTTP LAN use.
        login_max_failures, login_window_s: failed logins allowed per user name in the window.
        viewer_cache_size: studies whose volumes stay in memory for the slice viewer.
        job_timeout_s: a job running longer is stopped and failed with the reason (seconds; None: no limit).
        job_memory_bytes: a job growing the process by more is stopped and failed (bytes; None: no limit).
        database: ``postgresql://user:password@host:port/name`` for the tables (default: SQLite in ``data_dir``).
        broker: ``redis://host:port/db``: jobs go to ``liverseg worker`` processes through RQ instead of
            ``workers`` local threads (``liverseg.web.backends``).
        lease_s: a running job's lease (seconds): after this long without a heartbeat its worker is presumed
            dead and the job requeued.
        **config: further Flask config keys (e.g. ``TESTING=True``).

    >>> app = create_app(data_dir="liverseg-data", start_workers=False)  # doctest: +SKIP
    """
    for name, value in (("workers", workers), ("max_upload_bytes", max_upload_bytes), ("max_files", max_files),
                        ("viewer_cache_size", viewer_cache_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = open_store(data_dir, database=database)
    check_database_of(data_dir, store, record=True)  # before _clean_orphans: never clean against the wrong database
    _clean_orphans(data_dir, store)
    _make_private(data_dir)

    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=_secret_key(data_dir),
        MAX_CONTENT_LENGTH=int(max_upload_bytes),
        MAX_FORM_PARTS=int(max_files) + 16,
        MAX_FORM_MEMORY_SIZE=MAX_FORM_FIELD_BYTES,
        SESSION_COOKIE_NAME="liverseg_session",
        SESSION_COOKIE_SECURE=bool(secure_cookies),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        WTF_CSRF_TIME_LIMIT=12 * 3600,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
        DEBUG=False,
        PROPAGATE_EXCEPTIONS=False,
    )
    app.config.update(config)
    app.debug = False

    factory = shared_factory(predictor_factory or default_predictor_factory(model))
    pool = make_job_backend(store=store, data_dir=data_dir, predictor_factory=factory, workers=int(workers),
                            broker=broker, lease_s=lease_s, timeout_s=job_timeout_s, memory_bytes=job_memory_bytes)

    def load(study_id: str) -> Any:
        return load_study_volumes(input_path(data_dir, study_id), output_dir(data_dir, study_id) / "mask.nii.gz")

    ctx = WebContext(
        data_dir=data_dir,
        store=store,
        pool=pool,
        cache=VolumeCache(size=int(viewer_cache_size), loader=load),
        limiter=LoginLimiter(max_failures=login_max_failures, window_s=login_window_s),
        max_files=int(max_files),
        max_upload_bytes=int(max_upload_bytes),
    )
    app.extensions["liverseg"] = ctx
    if isinstance(pool, WorkerPool):  # jobs in this process: their volumes go straight to the slice viewer
        pool.on_published = lambda study_id, ct, labels: ctx.cache.put(study_id, (ct, labels))

    csrf = CSRFProtect(app)
    from liverseg.web import api, corrections, views

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(corrections.bp)  # mask versions: the viewer's CT, saving corrections
    app.register_blueprint(corrections.api_bp)
    csrf.exempt(api.bp)  # the API authenticates with Bearer tokens, never with cookies
    csrf.exempt(corrections.api_bp)
    from liverseg.web import compare  # follow-up comparisons: pages and /api/comparisons

    app.register_blueprint(compare.bp)
    app.register_blueprint(compare.api_bp)
    csrf.exempt(compare.api_bp)

    @app.after_request
    def _headers(resp):  # type: ignore[no-untyped-def]
        h = resp.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        if request.is_secure:
            h.setdefault("Strict-Transport-Security", "max-age=31536000")
        if not request.path.startswith("/static/"):
            h.setdefault("Cache-Control", "no-store")
        return resp

    def _wants_json() -> bool:
        return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError):  # type: ignore[no-untyped-def]
        msg = "the form was sent without a valid security token (it may have expired); reload the page and try again"
        if _wants_json():
            return jsonify(error=msg), 400
        return render_template("error.html", code=400, message=msg), 400

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):  # type: ignore[no-untyped-def]
        code = exc.code or 500
        messages = {
            413: _too_large_message(max_upload_bytes, max_files),
            404: "not found",
            401: "authentication required",
        }
        msg = messages.get(code) or exc.description or exc.name
        if _wants_json():
            return jsonify(error=msg), code
        return render_template("error.html", code=code, message=msg), code

    @app.errorhandler(Exception)
    def _internal(exc: Exception):  # type: ignore[no-untyped-def]
        log.error("internal error on %s %s (%s)", request.method, request.url_rule, type(exc).__name__,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        msg = "internal error; the server goes on. Try again, and report it if it happens again"
        if _wants_json():
            return jsonify(error=msg), 500
        return render_template("error.html", code=500, message=msg), 500

    if start_workers:
        pool.start()
    else:
        from liverseg.web.jobs import recover_dead_jobs

        requeued, failed = recover_dead_jobs(store, data_dir)
        if requeued or failed:
            log.warning("restart: %d interrupted job(s) requeued, %d failed", requeued, failed)
    return app

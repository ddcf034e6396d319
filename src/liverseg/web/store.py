"""The web app's store: users, API tokens, sessions, studies, jobs and results.

The tables live in a :class:`~liverseg.web.db.Database`: by default one SQLite file
(``<data_dir>/liverseg.sqlite3``, WAL mode, one short-lived connection per operation, so
worker threads and request threads never share a connection), or PostgreSQL
(``--database postgresql://...``; :mod:`liverseg.web.db_postgres`) when workers on other
machines share the database. The SQL is one text for both. The schema is versioned:
:data:`MIGRATIONS` (SQLite) and ``POSTGRES_MIGRATIONS`` (the same tables in PostgreSQL's
types) are append-only lists, and :meth:`Store.migrate` applies those the database has not
seen yet, on every start.

The ``jobs`` table is the queue's truth: a worker claims a queued job with a lease
(:meth:`Store.claim_job`; :mod:`liverseg.web.lease`), so two workers never take the same
job, and a broker (:mod:`liverseg.web.queue_rq`) only carries the news that one is queued.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any, Callable

from liverseg.web.db import Database, SQLiteDatabase

__all__ = ["Store", "User", "Study", "Job", "MIGRATIONS", "JOB_STATES", "DEFAULT_LEASE_S", "hash_token"]

#: How long a worker's claim on a running job lasts unless renewed (seconds): the visibility timeout after
#: which a job whose worker died goes back to the queue. Workers renew it every quarter of it.
DEFAULT_LEASE_S = 60.0

#: A job is in exactly one of these states.
JOB_STATES = ("queued", "running", "done", "failed")

#: Append-only: never edit a released entry, add a new one.
MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        is_admin INTEGER NOT NULL DEFAULT 0,
        session_epoch INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        last_used_at TEXT
    );
    CREATE TABLE studies (
        id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        input_name TEXT NOT NULL,
        input_kind TEXT NOT NULL,
        input_format TEXT,
        n_files INTEGER NOT NULL,
        n_bytes INTEGER NOT NULL
    );
    CREATE INDEX studies_user ON studies(user_id, created_at);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
        stage TEXT NOT NULL DEFAULT '',
        progress REAL NOT NULL DEFAULT 0,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE INDEX jobs_status ON jobs(status, id);
    CREATE INDEX jobs_study ON jobs(study_id, id);
    CREATE TABLE results (
        study_id TEXT PRIMARY KEY REFERENCES studies(id) ON DELETE CASCADE,
        report_json TEXT NOT NULL,
        liver_volume_ml REAL,
        lesion_count INTEGER,
        tumor_volume_ml REAL,
        tumor_burden_pct REAL,
        created_at TEXT NOT NULL
    );
    """,
    # 2: server-side sessions (a signed-out or expired cookie is worthless even if replayed)
    """
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    """,
    # 3: leases (a running job belongs to one worker while it renews its lease; only an expired lease or a
    # dead owner puts it back in the queue) and the queue dispatch of jobs sent to a broker
    """
    ALTER TABLE jobs ADD COLUMN worker TEXT;
    ALTER TABLE jobs ADD COLUMN lease_token TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
    ALTER TABLE jobs ADD COLUMN dispatch_id TEXT;
    ALTER TABLE jobs ADD COLUMN dispatched_at REAL;
    ALTER TABLE results ADD COLUMN job_id INTEGER;
    """,
    # 4: facts about the database itself (its random id: which data folder belongs to it)
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def hash_token(token: str) -> str:
    """SHA-256 hex digest of an API token (tokens are 256-bit random, so no salt is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    name: str
    password_hash: str
    is_admin: bool
    session_epoch: int
    created_at: str


@dataclasses.dataclass(frozen=True)
class Job:
    id: int
    study_id: str
    status: str
    stage: str
    progress: float
    error: str | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    #: the worker holding the lease (``host:boot:pidns:pid:nonce``, :func:`liverseg.web.lease.worker_id`)
    worker: str | None = None
    #: changes at every claim; only its holder may renew the lease, store progress or publish the result
    lease_token: str | None = None
    #: when the lease runs out unless renewed (seconds since the epoch, the database's clock)
    lease_expires_at: float | None = None
    #: the broker's id for this job (RQ job id), None while not handed to a broker
    dispatch_id: str | None = None
    dispatched_at: float | None = None


@dataclasses.dataclass(frozen=True)
class Study:
    """A study with its latest job and, when done, its key numbers."""

    id: str
    user_id: int
    created_at: str
    note: str
    input_name: str
    input_kind: str
    input_format: str | None
    n_files: int
    n_bytes: int
    job: Job | None = None
    liver_volume_ml: float | None = None
    lesion_count: int | None = None
    tumor_volume_ml: float | None = None
    tumor_burden_pct: float | None = None

    @property
    def status(self) -> str:
        return self.job.status if self.job else "queued"


_STUDY_SELECT = """
    SELECT s.*, j.id AS j_id, j.status AS j_status, j.stage AS j_stage, j.progress AS j_progress,
           j.error AS j_error, j.attempts AS j_attempts, j.created_at AS j_created_at,
           j.started_at AS j_started_at, j.finished_at AS j_finished_at,
           r.liver_volume_ml, r.lesion_count, r.tumor_volume_ml, r.tumor_burden_pct
    FROM studies s
    LEFT JOIN jobs j ON j.id = (SELECT max(id) FROM jobs WHERE study_id = s.id)
    LEFT JOIN results r ON r.study_id = s.id
"""


def _study(row: Any) -> Study:
    job = None
    if row["j_id"] is not None:
        job = Job(
            id=row["j_id"], study_id=row["id"], status=row["j_status"], stage=row["j_stage"],
            progress=row["j_progress"], error=row["j_error"], attempts=row["j_attempts"],
            created_at=row["j_created_at"], started_at=row["j_started_at"], finished_at=row["j_finished_at"],
        )
    return Study(
        id=row["id"], user_id=row["user_id"], created_at=row["created_at"], note=row["note"],
        input_name=row["input_name"], input_kind=row["input_kind"], input_format=row["input_format"],
        n_files=row["n_files"], n_bytes=row["n_bytes"], job=job,
        liver_volume_ml=row["liver_volume_ml"], lesion_count=row["lesion_count"],
        tumor_volume_ml=row["tumor_volume_ml"], tumor_burden_pct=row["tumor_burden_pct"],
    )


def _user(row: Any) -> User | None:
    if row is None:
        return None
    return User(
        id=row["id"], name=row["name"], password_hash=row["password_hash"], is_admin=bool(row["is_admin"]),
        session_epoch=row["session_epoch"], created_at=row["created_at"],
    )


_JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(Job))


def _job(row: Any) -> Job | None:
    return None if row is None else Job(**{k: row[k] for k in row.keys() if k in _JOB_FIELDS})


class Store:
    """All persistent state of the web app except the files.

    Args:
        path: a SQLite file (the default backend); its folder is created when missing.
        database: instead of ``path``, a :class:`~liverseg.web.db.Database` (SQLite or
            PostgreSQL, :func:`liverseg.web.db.open_database`).

    The schema is created or migrated on construction.

    >>> store = Store(path=Path(tmp) / "liverseg.sqlite3")  # doctest: +SKIP
    >>> store = Store(database=open_database("postgresql://liverseg@db/liverseg"))  # doctest: +SKIP
    >>> store.add_user(name="ada", password_hash="...", is_admin=True).name  # doctest: +SKIP
    'ada'
    """

    def __init__(self, *, path: str | Path | None = None, database: Database | None = None) -> None:
        if (path is None) == (database is None):
            raise ValueError("give the store either path= (a SQLite file) or database=, not both or neither")
        self.db: Database = database if database is not None else SQLiteDatabase(path=path)  # type: ignore[arg-type]
        #: the SQLite file, or None for another database
        self.path: Path | None = getattr(self.db, "path", None)
        self.migrate()

    # -- plumbing -----------------------------------------------------------------------
    def _connect(self) -> contextlib.AbstractContextManager[Any]:
        return self.db.connect()

    def _tx(self) -> contextlib.AbstractContextManager[Any]:
        return self.db.transaction()

    @property
    def schema_version(self) -> int:
        return self.db.schema_version()

    @property
    def migrations(self) -> list[str]:
        """This store's migrations in its database's dialect."""
        if self.db.dialect == "postgresql":
            from liverseg.web.db_postgres import POSTGRES_MIGRATIONS

            return POSTGRES_MIGRATIONS
        return MIGRATIONS

    def migrate(self) -> int:
        """Apply the migrations this database has not seen; return the schema version."""
        return self.db.migrate(self.migrations)

    def close(self) -> None:
        """Let go of the database's pooled connections (PostgreSQL)."""
        self.db.close()

    def instance_id(self) -> str:
        """This database's random id, made on first use (:func:`liverseg.web.lock.check_database_of`)."""
        with self._tx() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'instance_id'" + self.db.for_update).fetchone()
            if row is not None:
                return str(row[0])
            value = uuid.uuid4().hex
            conn.execute("INSERT INTO meta (key, value) VALUES ('instance_id', ?) ON CONFLICT (key) DO NOTHING",
                         (value,))
            return str(conn.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()[0])

    # -- users and tokens ---------------------------------------------------------------
    def add_user(self, *, name: str, password_hash: str, is_admin: bool = False) -> User:
        with self._tx() as conn:
            return _user(conn.execute(  # type: ignore[return-value]
                "INSERT INTO users (name, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?) RETURNING *",
                (name, password_hash, int(is_admin), _now()),
            ).fetchone())

    def user_by_name(self, name: str) -> User | None:
        with self._connect() as conn:
            return _user(conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone())

    def user_by_id(self, user_id: int) -> User | None:
        with self._connect() as conn:
            return _user(conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone())

    def users(self) -> list[User]:
        with self._connect() as conn:
            return [_user(r) for r in conn.execute("SELECT * FROM users ORDER BY name")]  # type: ignore[misc]

    def count_users(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])

    def set_password(self, user_id: int, password_hash: str) -> None:
        """Change a password; every existing session of that user is ended (epoch bump, rows deleted)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE users SET password_hash = ?, session_epoch = session_epoch + 1 WHERE id = ?",
                (password_hash, user_id),
            )
            conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    # -- sessions -----------------------------------------------------------------------
    def add_session(self, user_id: int, session_id: str, *, lifetime_s: float) -> None:
        """Record a signed-in session (only the SHA-256 of its random id is stored) valid for ``lifetime_s`` s."""
        import time as _time

        with self._tx() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (_time.time(),))
            conn.execute(
                "INSERT INTO sessions (id_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (hash_token(session_id), user_id, _now(), _time.time() + float(lifetime_s)),
            )

    def session_user(self, session_id: str) -> User | None:
        """The user of a live session, or ``None`` (unknown, signed out, expired, or its user deleted)."""
        import time as _time

        with self._connect() as conn:
            row = conn.execute(
                "SELECT u.* FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ? AND s.expires_at > ?",
                (hash_token(session_id), _time.time()),
            ).fetchone()
        return _user(row)

    def delete_session(self, session_id: str) -> None:
        """End one session (sign-out)."""
        with self._tx() as conn:
            conn.execute("DELETE FROM sessions WHERE id_hash = ?", (hash_token(session_id),))

    def count_sessions(self, user_id: int) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT count(*) FROM sessions WHERE user_id = ?", (user_id,)).fetchone()[0])

    def set_admin(self, user_id: int, is_admin: bool) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE users SET is_admin = ? WHERE id = ?", (int(is_admin), user_id))

    def delete_user(self, user_id: int) -> list[str]:
        """Delete a user with their tokens, studies, jobs and results; return the study ids (for their files)."""
        with self._tx() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM studies WHERE user_id = ?", (user_id,))]
            conn.execute("DELETE FROM users WHERE id = ?", (user_id,))
            return ids

    def add_token(self, user_id: int, token: str) -> None:
        """Store the SHA-256 of ``token`` (the token itself is never stored)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO api_tokens (user_id, token_hash, created_at) VALUES (?, ?, ?)",
                (user_id, hash_token(token), _now()),
            )

    def user_by_token(self, token: str) -> User | None:
        digest = hash_token(token)
        with self._connect() as conn:
            row = conn.execute(
                "SELECT u.* FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?", (digest,)
            ).fetchone()
            if row is not None:
                conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE token_hash = ?", (_now(), digest))
            return _user(row)

    def count_tokens(self, user_id: int) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT count(*) FROM api_tokens WHERE user_id = ?", (user_id,)).fetchone()[0])

    def revoke_tokens(self, user_id: int) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM api_tokens WHERE user_id = ?", (user_id,))

    # -- studies and jobs ---------------------------------------------------------------
    def add_study(
        self,
        *,
        study_id: str,
        user_id: int,
        note: str,
        input_name: str,
        input_kind: str,
        input_format: str | None,
        n_files: int,
        n_bytes: int,
    ) -> Study:
        """Insert a study and its first job (queued) in one transaction."""
        now = _now()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO studies (id, user_id, created_at, note, input_name, input_kind, input_format, n_files,"
                " n_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (study_id, user_id, now, note, input_name, input_kind, input_format, n_files, n_bytes),
            )
            conn.execute(
                "INSERT INTO jobs (study_id, status, stage, created_at) VALUES (?, 'queued', 'queued', ?)",
                (study_id, now),
            )
        return self.study(study_id)  # type: ignore[return-value]

    def study(self, study_id: str, *, user_id: int | None = None) -> Study | None:
        """The study, or ``None`` when absent or (with ``user_id``) owned by someone else."""
        sql = _STUDY_SELECT + " WHERE s.id = ?"
        args: list[Any] = [study_id]
        if user_id is not None:
            sql += " AND s.user_id = ?"
            args.append(user_id)
        with self._connect() as conn:
            row = conn.execute(sql, args).fetchone()
        return None if row is None else _study(row)

    def studies(self, *, user_id: int, search: str = "", limit: int = 500) -> list[Study]:
        """The user's studies, newest first; ``search`` matches the note, file name, id or status."""
        sql = _STUDY_SELECT + " WHERE s.user_id = ?"
        args: list[Any] = [user_id]
        if search:
            like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            like_ = f"{self.db.like} ? ESCAPE '\\'"
            sql += (
                f" AND (s.note {like_} OR s.input_name {like_} OR s.id {like_} OR j.status {like_}"
                f" OR s.created_at {like_})"
            )
            args += [like] * 5
        # ties (same second) in upload order: a study's first job id grows with its insertion
        sql += " ORDER BY s.created_at DESC, (SELECT min(id) FROM jobs WHERE study_id = s.id) DESC LIMIT ?"
        args.append(limit)
        with self._connect() as conn:
            return [_study(r) for r in conn.execute(sql, args)]

    def delete_study(self, study_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM studies WHERE id = ?", (study_id,))

    def latest_job(self, study_id: str) -> Job | None:
        with self._connect() as conn:
            return _job(conn.execute("SELECT * FROM jobs WHERE study_id = ? ORDER BY id DESC LIMIT 1", (study_id,)).fetchone())

    def requeue(self, study_id: str) -> Job:
        """A new queued job for the study (the retry button); its old result is dropped."""
        with self._tx() as conn:
            conn.execute("DELETE FROM results WHERE study_id = ?", (study_id,))
            return _job(conn.execute(  # type: ignore[return-value]
                "INSERT INTO jobs (study_id, status, stage, created_at) VALUES (?, 'queued', 'queued', ?) RETURNING *",
                (study_id, _now()),
            ).fetchone())

    def claim_job(
        self, *, worker: str | None = None, lease_s: float = DEFAULT_LEASE_S, job_id: int | None = None
    ) -> Job | None:
        """Take a queued job: status running, attempts + 1, a fresh lease for ``lease_s`` seconds.

        Without ``job_id`` the oldest queued job of the users with the fewest jobs running is taken
        (so a user whose batch is running does not hold back another user's first study; with
        nobody's job running it is the oldest queued job); with ``job_id``, that job only (a broker's
        message names it). ``None`` when there is nothing to take: a job that is running (its
        lease held by a worker), done or failed is never taken, so no job runs twice at once.
        The returned job's ``lease_token`` is needed to renew the lease and publish the result.
        """
        token = uuid.uuid4().hex
        with self._tx() as conn:
            if job_id is None:
                target = conn.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' ORDER BY"
                    " (SELECT count(*) FROM jobs r JOIN studies rs ON rs.id = r.study_id WHERE r.status = 'running'"
                    "  AND rs.user_id = (SELECT user_id FROM studies WHERE studies.id = jobs.study_id)), id"
                    " LIMIT 1" + self.db.skip_locked
                ).fetchone()
            else:
                target = conn.execute(
                    "SELECT id FROM jobs WHERE id = ? AND status = 'queued'" + self.db.skip_locked, (job_id,)
                ).fetchone()
            if target is None:
                return None
            row = conn.execute(
                "UPDATE jobs SET status = 'running', stage = 'starting', progress = 0, attempts = attempts + 1,"
                f" started_at = ?, error = NULL, worker = ?, lease_token = ?, lease_expires_at = {self.db.now} + ?"
                " WHERE id = ? AND status = 'queued' RETURNING *",
                (_now(), worker or "", token, float(lease_s), target[0]),
            ).fetchone()
            return _job(row)

    def heartbeat(self, job_id: int, token: str, *, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Renew a lease for ``lease_s`` more seconds; False when the lease is no longer the caller's."""
        with self._tx() as conn:
            return conn.execute(
                f"UPDATE jobs SET lease_expires_at = {self.db.now} + ? WHERE id = ? AND status = 'running'"
                " AND lease_token = ?",
                (float(lease_s), job_id, token),
            ).rowcount == 1

    def set_progress(self, job_id: int, *, stage: str, progress: float, token: str | None = None) -> None:
        """Store a running job's step and fraction (with ``token``: only while the caller holds its lease)."""
        sql = "UPDATE jobs SET stage = ?, progress = ? WHERE id = ? AND status = 'running'"
        args: list[Any] = [stage, max(0.0, min(1.0, float(progress))), job_id]
        if token is not None:
            sql += " AND lease_token = ?"
            args.append(token)
        with self._tx() as conn:
            conn.execute(sql, args)

    def finish_job(
        self,
        job_id: int,
        *,
        report: dict[str, Any],
        summary: dict[str, Any],
        token: str | None = None,
        publish: Callable[[], None] | None = None,
    ) -> bool:
        """Mark the job done and store the study's result (report JSON and key numbers) atomically.

        With ``token`` it happens only while the caller holds the job's lease, and ``publish``
        (moving the finished files into place) runs inside the same transaction, after that
        check: a worker that lost its lease (it was presumed dead and the job requeued) never
        publishes, and a job's result is published once. An exception in ``publish`` rolls
        the transaction back. Returns False (nothing done) when the lease was lost.
        """
        with self._tx() as conn:
            row = conn.execute(
                "SELECT study_id, status, lease_token FROM jobs WHERE id = ?" + self.db.for_update, (job_id,)
            ).fetchone()
            if row is None or (token is not None and (row["status"] != "running" or row["lease_token"] != token)):
                return False
            if publish is not None:
                publish()
            conn.execute(
                "INSERT INTO results (study_id, report_json, liver_volume_ml, lesion_count, tumor_volume_ml,"
                " tumor_burden_pct, created_at, job_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (study_id) DO UPDATE SET report_json = excluded.report_json,"
                " liver_volume_ml = excluded.liver_volume_ml, lesion_count = excluded.lesion_count,"
                " tumor_volume_ml = excluded.tumor_volume_ml, tumor_burden_pct = excluded.tumor_burden_pct,"
                " created_at = excluded.created_at, job_id = excluded.job_id",
                (
                    row["study_id"], json.dumps(report), summary.get("liver_volume_ml"), summary.get("lesion_count"),
                    summary.get("tumor_volume_ml"), summary.get("tumor_burden_pct"), _now(), job_id,
                ),
            )
            conn.execute(
                "UPDATE jobs SET status = 'done', stage = 'done', progress = 1, finished_at = ?, error = NULL,"
                " lease_token = NULL, lease_expires_at = NULL WHERE id = ?",
                (_now(), job_id),
            )
            return True

    def fail_job(self, job_id: int, *, error: str, token: str | None = None) -> bool:
        """Mark a job failed with its reason (with ``token``: only while the caller holds its lease)."""
        sql = ("UPDATE jobs SET status = 'failed', stage = 'failed', finished_at = ?, error = ?, lease_token = NULL,"
               " lease_expires_at = NULL WHERE id = ?")
        args: list[Any] = [_now(), error, job_id]
        if token is not None:
            sql += " AND status = 'running' AND lease_token = ?"
            args.append(token)
        with self._tx() as conn:
            return conn.execute(sql, args).rowcount == 1

    def running_jobs(self) -> list[Job]:
        """Every job now marked running, with its lease."""
        with self._connect() as conn:
            return [_job(r) for r in conn.execute("SELECT * FROM jobs WHERE status = 'running' ORDER BY id")]  # type: ignore[misc]

    def recover_expired(
        self, *, max_attempts: int = 3, is_dead: Callable[[str], bool] | None = None
    ) -> tuple[list[Job], list[Job]]:
        """Put back in the queue the running jobs whose worker is gone; fail those tried ``max_attempts`` times.

        A worker is gone when its lease ran out (it stopped renewing it: killed, frozen, its
        machine lost) or when ``is_dead(job.worker)`` says so (a process on this machine that
        no longer exists; :func:`liverseg.web.lease.owner_is_dead`). A job whose lease is live
        is never touched, whoever started the server. Returns ``(requeued, failed)`` jobs as
        they were before the change.
        """
        requeued: list[Job] = []
        failed: list[Job] = []
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT *, CASE WHEN lease_expires_at IS NULL OR lease_expires_at <= "
                f"{self.db.now} THEN 1 ELSE 0 END AS expired FROM jobs WHERE status = 'running' ORDER BY id"
            ).fetchall()
        for row in rows:
            job = _job(row)
            assert job is not None
            if not row["expired"] and not (is_dead is not None and job.worker and is_dead(job.worker)):
                continue
            give_up = job.attempts >= max_attempts
            with self._tx() as conn:
                same = f"WHERE id = ? AND status = 'running' AND lease_token {self.db.same} ?"
                if give_up:
                    n = conn.execute(
                        "UPDATE jobs SET status = 'failed', stage = 'failed', finished_at = ?, error = ?,"
                        " lease_token = NULL, lease_expires_at = NULL " + same,
                        (
                            _now(),
                            f"the worker running this job stopped {max_attempts} times (killed, out of memory, or "
                            "its machine lost); the scan may need more memory than the workers have. Press Retry to "
                            "try again",
                            job.id, job.lease_token,
                        ),
                    ).rowcount
                else:
                    n = conn.execute(
                        "UPDATE jobs SET status = 'queued', stage = 'requeued: its worker stopped (crash or restart)',"
                        " progress = 0, lease_token = NULL, lease_expires_at = NULL, dispatch_id = NULL,"
                        " dispatched_at = NULL " + same,
                        (job.id, job.lease_token),
                    ).rowcount
            if n:
                (failed if give_up else requeued).append(job)
        return requeued, failed

    def recover_running(
        self, *, max_attempts: int = 3, is_dead: Callable[[str], bool] | None = None
    ) -> tuple[int, int]:
        """:meth:`recover_expired` as counts ``(requeued, failed)`` (for the log after a restart)."""
        requeued, failed = self.recover_expired(max_attempts=max_attempts, is_dead=is_dead)
        return len(requeued), len(failed)

    # -- dispatch to a broker -----------------------------------------------------------
    def undispatched_jobs(self, *, stale_s: float | None = None, limit: int = 100) -> list[Job]:
        """Queued jobs not yet handed to the broker, oldest first; with ``stale_s`` also those handed
        over more than ``stale_s`` seconds ago (the caller checks whether the broker still has them)."""
        sql = "SELECT * FROM jobs WHERE status = 'queued' AND (dispatch_id IS NULL"
        args: list[Any] = []
        if stale_s is not None:
            sql += f" OR dispatched_at < {self.db.now} - ?"
            args.append(float(stale_s))
        sql += ") ORDER BY id LIMIT ?"
        args.append(int(limit))
        with self._connect() as conn:
            return [_job(r) for r in conn.execute(sql, args)]  # type: ignore[misc]

    def mark_dispatched(self, job_id: int, dispatch_id: str, *, previous: str | None = None) -> bool:
        """Record that a queued job was handed to the broker as ``dispatch_id``.

        Only when its dispatch id is still ``previous`` (None: never dispatched), so two
        dispatchers racing on one job agree on one message; False when another one won.
        """
        with self._tx() as conn:
            return conn.execute(
                f"UPDATE jobs SET dispatch_id = ?, dispatched_at = {self.db.now} WHERE id = ? AND status = 'queued'"
                f" AND dispatch_id {self.db.same} ?",
                (dispatch_id, job_id, previous),
            ).rowcount == 1

    def job(self, job_id: int) -> Job | None:
        with self._connect() as conn:
            return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def result(self, study_id: str) -> dict[str, Any] | None:
        """The stored report JSON of a finished study, or ``None``."""
        with self._connect() as conn:
            row = conn.execute("SELECT report_json FROM results WHERE study_id = ?", (study_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def count_jobs(self, status: str) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT count(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0])

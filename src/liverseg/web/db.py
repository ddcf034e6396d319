"""Where the web app's tables live: a small database interface, SQLite (the default) and PostgreSQL.

:class:`~liverseg.web.store.Store` writes one SQL text for both; a :class:`Database` runs it:

- ``connect()`` gives a connection whose ``execute(sql, params)`` takes ``?`` placeholders
  and returns a cursor whose rows answer ``row["name"]`` and ``row[0]``; every statement
  commits by itself;
- ``transaction()`` gives one inside a write transaction, committed at the end of the block
  and rolled back on an exception;
- the few spots where the dialects differ are properties: :attr:`Database.now` (seconds
  since the epoch on the database's own clock, so workers on machines whose clocks differ
  agree on when a lease runs out), :attr:`~Database.for_update`, :attr:`~Database.skip_locked`,
  :attr:`~Database.like` (case-insensitive) and :attr:`~Database.same` (null-safe equality);
- ``migrate(migrations)`` brings the schema to ``len(migrations)``, recording the version
  (SQLite: ``PRAGMA user_version``; PostgreSQL: the table ``liverseg_schema``), one
  migration per transaction, safe when several processes start at once.

:func:`open_database` picks the backend from a URL: ``postgresql://...`` (or
``postgres://``) is :class:`liverseg.web.db_postgres.PostgresDatabase`, anything else a
SQLite file path.

>>> db = open_database("liverseg-data/liverseg.sqlite3")  # doctest: +SKIP
>>> db = open_database("postgresql://liverseg@db.example.org/liverseg")  # doctest: +SKIP
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["Database", "SQLiteDatabase", "open_database", "is_postgres_url", "redact_url"]


def is_postgres_url(url: str | Path) -> bool:
    """True for ``postgresql://...`` / ``postgres://...`` (also with a ``+driver`` suffix)."""
    text = str(url).lower()
    return text.startswith(("postgresql://", "postgres://", "postgresql+"))


def redact_url(url: str) -> str:
    """A URL fit for a log or a message: its password replaced by ``***``."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


class Database(abc.ABC):
    """One database the store runs its SQL on (see the module's docstring)."""

    #: "sqlite" or "postgresql"
    dialect: str = ""
    #: SQL for now, in seconds since the epoch, on the database's clock
    now: str = ""
    #: appended to a SELECT that reads a row it will update in the same transaction
    for_update: str = ""
    #: appended to the SELECT with which a worker picks a queued job (others skip a row being claimed)
    skip_locked: str = ""
    #: case-insensitive LIKE
    like: str = "LIKE"
    #: null-safe equality (``a IS b`` / ``a IS NOT DISTINCT FROM b``)
    same: str = "IS"

    @abc.abstractmethod
    def connect(self) -> contextlib.AbstractContextManager[Any]:
        """A connection in autocommit mode (every statement commits by itself)."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A connection inside one write transaction (commit at the end, rollback on an exception)."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The number of migrations applied."""

    @abc.abstractmethod
    def migrate(self, migrations: Sequence[str]) -> int:
        """Apply the migrations not yet applied; return the schema version (``len(migrations)``).

        Raises:
            RuntimeError: the database is newer than ``migrations`` (a newer liverseg wrote it).
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """What to name in logs and messages (no password)."""

    def close(self) -> None:
        """Let go of pooled connections (nothing to do for SQLite)."""

    @staticmethod
    def statements(script: str) -> list[str]:
        """A migration script split into its statements (migrations hold no ``;`` inside a literal)."""
        return [part.strip() for part in script.split(";") if part.strip()]

    def _newer(self, version: int, known: int) -> RuntimeError:
        return RuntimeError(
            f"the database {self.describe()} has schema version {version}, newer than this liverseg ({known}); "
            "upgrade liverseg on this machine"
        )


class SQLiteDatabase(Database):
    """One SQLite file in WAL mode; one short-lived connection per operation.

    Write transactions are ``BEGIN IMMEDIATE``: they take the file's write lock at once, so
    a read followed by an update in one transaction sees no other writer in between.

    Args:
        path: the file; its folder is created when missing.
    """

    dialect = "sqlite"
    now = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, *, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")

    def describe(self) -> str:
        return str(self.path)

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def schema_version(self) -> int:
        with self.connect() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self, migrations: Sequence[str]) -> int:
        while True:
            with self.transaction() as conn:  # the write lock first, then the version: one migrator at a time
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version > len(migrations):
                    raise self._newer(version, len(migrations))
                if version == len(migrations):
                    return version
                for statement in self.statements(migrations[version]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")


def open_database(url: str | Path, **options: Any) -> Database:
    """The database at ``url``: ``postgresql://user:password@host:port/name`` or a SQLite file path.

    ``options`` go to the backend (``PostgresDatabase(max_connections=...)``).
    """
    if is_postgres_url(url):
        from liverseg.web.db_postgres import PostgresDatabase

        return PostgresDatabase(url=str(url), **options)
    return SQLiteDatabase(path=url)

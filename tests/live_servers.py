"""Real PostgreSQL and Redis servers for the tests, started in a temporary folder on loopback ports.

Debian's ``postgresql`` and ``redis-server`` packages (``.ci/run`` installs them when
missing); a test that needs one skips with the reason when its binaries are absent.
PostgreSQL refuses to run as root, so as root its cluster belongs to the ``postgres``
user the Debian package creates, and its commands run through ``runuser``.

Import the fixtures into a test module: ``from live_servers import postgres_url, redis_url``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL server binary (``initdb``, ``pg_ctl``): on PATH or in Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def _as_postgres_user() -> list[str]:
    """The command prefix that runs PostgreSQL's tools: nothing, or runuser to ``postgres`` when root."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to own the test cluster (apt-get install postgresql)")
    runuser = shutil.which("runuser")
    if not runuser:
        pytest.skip("running as root without runuser; PostgreSQL refuses to run as root")
    return [runuser, "-u", "postgres", "--"]


class PostgresServer:
    """A throw-away PostgreSQL cluster: ``initdb`` + ``pg_ctl start`` on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        if not initdb or not pg_ctl:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
        self.prefix = _as_postgres_user()
        self.root = Path(tempfile.mkdtemp(prefix="liverseg-pg-"))
        if self.prefix:
            shutil.chown(self.root, user="postgres", group="postgres")
        self.data = self.root / "cluster"
        self.port = free_port()
        self.pg_ctl = pg_ctl
        subprocess.run(self.prefix + [initdb, "-D", str(self.data), "-U", "liverseg", "--auth=trust",
                                      "--encoding=UTF8", "--no-instructions"],
                       check=True, capture_output=True, text=True)
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        subprocess.run(self.prefix + [pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                                      "-w", "-t", "60", "start"], check=True, capture_output=True, text=True)
        self.url = f"postgresql://liverseg@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """A fresh empty database on this server; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://liverseg@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(self.prefix + [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1:``port`` (no persistence)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            pytest.skip("redis-server not found; apt-get install redis-server")
        self.root = Path(tempfile.mkdtemp(prefix="liverseg-redis-"))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--databases", "64"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        t0 = time.monotonic()
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() - t0 > 30:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        self._next_db = 0

    def new_url(self) -> str:
        """A URL of an empty Redis database on this server (one of 64)."""
        import redis

        db = self._next_db % 64
        self._next_db += 1
        redis.Redis(port=self.port, db=db).flushdb()
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture()
def postgres_url(postgres_server) -> str:
    """A fresh database on the session's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture()
def redis_url(redis_server) -> str:
    """An empty database on the session's Redis server."""
    return redis_server.new_url()

"""One server per data folder: an exclusive lock that names the process holding it.

``liverseg serve`` takes :class:`DataDirLock` on ``<data_dir>/server.lock`` before it opens
the store. The lock is an ``flock`` on that file, so the kernel releases it when the holder
dies however it dies (kill -9, power loss on a local disk): a stale lock file never blocks a
restart. The file's content (pid, host, port, start time) is only there to name the holder
in the message a second server prints.

Workers (``liverseg worker``) do not take it: any number of them may share the folder.

>>> with DataDirLock(data_dir="liverseg-data", port=8000):  # doctest: +SKIP
...     serve_forever()
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from liverseg.errors import InputError

__all__ = ["DataDirLock", "ServerConflictError", "LOCK_FILE", "DATABASE_ID_FILE", "check_database_of", "port_in_use_message"]

#: The lock file inside the data folder.
LOCK_FILE = "server.lock"
#: Names the database whose rows describe this data folder's studies.
DATABASE_ID_FILE = "database-id"


class ServerConflictError(InputError):
    """Another process holds what this server needs: its data folder or its port (CLI exit 2)."""


def _describe(holder: dict[str, object]) -> str:
    parts = [f"pid {holder.get('pid', '?')}"]
    if holder.get("host"):
        parts.append(f"on {holder['host']}")
    if holder.get("port"):
        parts.append(f"port {holder['port']}")
    if holder.get("started_at"):
        parts.append(f"started {holder['started_at']}")
    return ", ".join(parts)


class DataDirLock:
    """An exclusive, process-lifetime lock on a data folder.

    Args:
        data_dir: the folder (created when missing).
        port: the port this server will listen on (only written into the lock file, for the message).

    Raises:
        ServerConflictError: on :meth:`acquire`, when another live process holds the lock; the
            message names it (pid, host, port, start time) and says what to do.
    """

    def __init__(self, *, data_dir: str | Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self.port = port
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict[str, object]:
        """What the lock file says about its holder ({} when unreadable)."""
        try:
            return dict(json.loads(self.path.read_text(encoding="utf-8") or "{}"))
        except (OSError, ValueError, TypeError):
            return {}

    def acquire(self) -> "DataDirLock":
        if self._fd is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise ServerConflictError(
                f"another liverseg server is already using the data folder {self.data_dir.resolve()} "
                f"({_describe(self.holder())}); only one server may use a data folder. Stop that one first, "
                "or give this one another --data-dir; to add capacity, start `liverseg worker` processes instead"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "port": self.port,
                "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> "DataDirLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def port_in_use_message(host: str, port: int) -> str:
    """What a server says when ``host:port`` is taken."""
    return (f"the port {port} on {host} is already in use by another program (perhaps another liverseg serve); "
            f"stop it, or choose another port with --port")


def check_database_of(data_dir: str | Path, store: Any, *, record: bool = False) -> None:
    """Refuse a data folder whose studies belong to another database than ``store``'s.

    The server cleans study folders that have no row in its database on start, so a server
    started on a PostgreSQL deployment's data folder without its ``--database`` (or with
    another one) would delete every stored study. The first server on a folder records its
    database's id (:meth:`Store.instance_id`) in ``<data_dir>/database-id`` (``record``);
    afterwards a server or worker with another database stops here.

    Raises:
        ServerConflictError: the folder belongs to another database; the message says which.
    """
    path = Path(data_dir) / DATABASE_ID_FILE
    mine = store.instance_id()
    try:
        recorded = path.read_text(encoding="utf-8").split("\n", 1)
    except FileNotFoundError:
        if record:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{mine}\n{store.db.describe()}\n", encoding="utf-8")
            os.replace(tmp, path)
        return
    if recorded[0].strip() != mine:
        where = recorded[1].strip() if len(recorded) > 1 else "another database"
        raise ServerConflictError(
            f"the data folder {Path(data_dir).resolve()} holds the studies of another database ({where}), not of "
            f"{store.db.describe()}; start with the --database it was used with (a server on the wrong one would "
            f"delete the studies it does not know). If you moved the tables on purpose, delete {path}"
        )

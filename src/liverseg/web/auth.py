"""Accounts: password hashes, API tokens, the failed-login limiter, user management.

Passwords are stored as werkzeug hashes (scrypt); API tokens are 256-bit random strings
of which only the SHA-256 is stored. The CLI (``liverseg users``) and the admin page both
go through these functions.
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import threading
import time
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from liverseg.web.store import Store, User

__all__ = [
    "LoginLimiter",
    "MIN_PASSWORD_LENGTH",
    "check_password",
    "create_user",
    "ensure_admin",
    "INITIAL_PASSWORD_FILE",
    "write_initial_password",
    "hash_password",
    "new_token",
    "random_password",
    "set_password",
    "validate_name",
]

#: Shortest password accepted (characters).
MIN_PASSWORD_LENGTH = 10

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def check_password(user: User | None, password: str) -> bool:
    """True when ``password`` matches; spends the same time when the user does not exist."""
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return False
    return check_password_hash(user.password_hash, password)


_DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(16))


def random_password() -> str:
    """A random 20-character password (about 120 bits)."""
    return secrets.token_urlsafe(15)


def new_token() -> str:
    """A new API token (``lst_`` + 43 URL-safe characters, 256 bits)."""
    return "lst_" + secrets.token_urlsafe(32)


def validate_name(name: str) -> str:
    """The user name, or ValueError saying what a valid one looks like."""
    if not _NAME_RE.match(name or ""):
        raise ValueError(
            f"user name {name!r} is not valid: use 1-64 letters, digits, '.', '_', '-' or '@', starting with a "
            "letter or digit"
        )
    return name


def validate_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def create_user(store: Store, *, name: str, password: str, is_admin: bool = False) -> User:
    """Add a user; ValueError when the name is invalid or taken or the password too short."""
    validate_name(name)
    validate_password(password)
    if store.user_by_name(name) is not None:
        raise ValueError(f"a user named {name!r} already exists")
    return store.add_user(name=name, password_hash=hash_password(password), is_admin=is_admin)


def set_password(store: Store, user: User, password: str) -> None:
    """Change a password (ends the user's open sessions)."""
    validate_password(password)
    store.set_password(user.id, hash_password(password))


#: The first admin's password is written here (mode 0600) inside the data folder, never to stdout or a log.
INITIAL_PASSWORD_FILE = "initial_admin_password"


def ensure_admin(store: Store, *, name: str = "admin") -> str | None:
    """On first start (no users at all) create an admin; return its random password, else ``None``."""
    if store.count_users() > 0:
        return None
    password = random_password()
    create_user(store, name=name, password=password, is_admin=True)
    return password


def write_initial_password(data_dir: str | os.PathLike[str], name: str, password: str) -> Path:
    """Write the first admin's name and password to ``<data_dir>/initial_admin_password`` (0600); return its path.

    Service managers keep stdout in their logs, so the password goes to a private file the
    administrator reads once; it is deleted when that user changes the password.
    """
    path = Path(data_dir) / INITIAL_PASSWORD_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{name}\n{password}\n")
    os.chmod(path, 0o600)
    return path


class LoginLimiter:
    """Back off failed sign-ins per client, so nobody can lock a user out by guessing at their name.

    A client (address) that fails ``max_failures`` times for one user name within
    ``window_s`` must wait before trying that name again; a client failing ``4 x
    max_failures`` times in all (any names) must wait before trying any. Other clients,
    and so the account's owner, sign in as usual. State is in memory (per server process).

    Args:
        max_failures: failures allowed per (client, user name) within ``window_s``.
        window_s: the sliding window (seconds).

    >>> lim = LoginLimiter(max_failures=2, window_s=60)
    >>> lim.failed("ada", "10.0.0.1"); lim.failed("ada", "10.0.0.1")
    >>> lim.retry_after("ada", "10.0.0.1") > 0, lim.retry_after("ada", "10.0.0.2") > 0
    (True, False)
    """

    def __init__(self, *, max_failures: int = 5, window_s: float = 900.0) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1; got {max_failures}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0 seconds; got {window_s}")
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def _keys(self, name: str, address: str) -> tuple[str, str]:
        return f"pair:{address}\0{name.lower()}", f"addr:{address}"

    def _prune(self, key: str, now: float) -> collections.deque[float]:
        q = self._failures[key]
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            self._failures.pop(key, None)
        return q

    def retry_after(self, name: str, address: str) -> float:
        """Seconds until this client may try this name again (0 when allowed now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in self._keys(name, address):
                q = self._prune(key, now)
                # a client gets more room over all names than for one (several users behind one proxy)
                limit = self.max_failures * (4 if key.startswith("addr:") else 1)
                if len(q) >= limit:
                    wait = max(wait, q[0] + self.window_s - now)
        return wait

    def failed(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 100_000:  # bound the memory a flood of addresses can take
                for key in list(self._failures)[:50_000]:
                    self._failures.pop(key, None)
            for key in self._keys(name, address):
                self._failures[key].append(now)
                self._prune(key, now)

    def succeeded(self, name: str, address: str) -> None:
        """Forget this client's failures for this name (a correct password)."""
        with self._lock:
            self._failures.pop(self._keys(name, address)[0], None)

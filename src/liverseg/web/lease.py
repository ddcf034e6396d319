"""Leases: a running job belongs to one worker for as long as that worker renews its claim.

A worker claims a job with :meth:`Store.claim_job <liverseg.web.store.Store.claim_job>`
(a random ``lease_token`` and an expiry ``lease_s`` seconds ahead), and a :class:`Heartbeat`
thread renews it every quarter of ``lease_s`` while the job runs. Whoever recovers jobs
(the server at start and every few seconds, :meth:`Store.recover_expired`) requeues a
running job only when its lease ran out, or when its owner is a process on this machine
that no longer exists (:func:`owner_is_dead`), so a restarted or second server never takes
a job another live process is running. The result is published under the same token
(:meth:`Store.finish_job`): a worker presumed dead that comes back never overwrites the
result of the worker that took its job over.

``lease_s`` is the visibility timeout of the issue's wording: how long a job whose worker
was killed (kill -9, power cut, machine lost) waits before another worker takes it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from types import TracebackType

from liverseg.web.store import DEFAULT_LEASE_S, Job, Store

__all__ = ["Heartbeat", "owner_is_dead", "worker_id"]

log = logging.getLogger(__name__)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()[:8]
    except OSError:
        return "noboot"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "nons"


def worker_id() -> str:
    """This process as a lease owner: ``host:boot:pidns:pid:nonce``.

    Host, boot id and pid namespace let :func:`owner_is_dead` tell, on the same machine and
    in the same container, whether the owner process still exists; the nonce keeps two
    workers in one process apart.
    """
    return f"{socket.gethostname()}:{_boot_id()}:{_pid_namespace()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(worker: str) -> bool:
    """True when ``worker`` (a :func:`worker_id`) was a process on this machine, in this pid
    namespace, since this boot, and no such process exists now. False when it cannot tell
    (another machine, a container, an older id): then only the lease's expiry frees its job."""
    parts = worker.split(":")
    if len(parts) != 5:
        return False
    host, boot, pidns, pid, _ = parts
    if host != socket.gethostname() or boot != _boot_id() or pidns != _pid_namespace():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


class Heartbeat:
    """Renews ``job``'s lease from a daemon thread every ``lease_s / 4`` seconds while in its ``with`` block.

    ``lost`` becomes True when a renewal finds the lease taken away (the job was requeued:
    this worker was presumed dead); the job then stops at its next progress step and
    publishes nothing. A renewal that fails for another reason (the database briefly
    unreachable) is retried at the next beat; the lease stays valid until it expires.

    >>> with Heartbeat(store, job, lease_s=60) as beat:  # doctest: +SKIP
    ...     run(job, stop_if=lambda: beat.lost)
    """

    def __init__(self, store: Store, job: Job, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0 seconds; got {lease_s}")
        if not job.lease_token:
            raise ValueError(f"job {job.id} has no lease token; claim it with Store.claim_job first")
        self.store, self.job, self.lease_s = store, job, float(lease_s)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        """Renew once now; False when the lease is lost."""
        try:
            if not self.store.heartbeat(self.job.id, self.job.lease_token or "", lease_s=self.lease_s):
                if not self.lost:
                    log.warning("job %d: its lease was taken over (presumed dead); it stops and publishes nothing",
                                self.job.id)
                self.lost = True
        except Exception:
            log.warning("job %d: could not renew its lease (will retry)", self.job.id, exc_info=True)
        return not self.lost

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            if not self.beat():
                return

    def __enter__(self) -> "Heartbeat":
        self._thread = threading.Thread(target=self._run, name=f"liverseg-lease-{self.job.id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

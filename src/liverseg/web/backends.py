"""Job backends: who runs the queued jobs of a web app.

Both run the same job function (:func:`liverseg.web.jobs.run_study_job`) under the same
leases; they differ in where it runs:

- ``embedded`` (the default, :class:`liverseg.web.jobs.WorkerPool`): N threads inside
  ``liverseg serve``; nothing else to start.
- ``rq`` (``--broker redis://...``, :class:`liverseg.web.queue_rq.RQJobs`): the server hands
  each queued job to Redis through RQ, and ``liverseg worker`` processes on any machine that
  sees the data folder and the database run them.

The views only call ``wake()`` after queueing a job (a new study, a retry); tests call
``run_pending()`` to run what is queued in their own thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from liverseg.web.store import DEFAULT_LEASE_S, Store

__all__ = ["JobBackend", "make_job_backend"]


class JobBackend(Protocol):
    """What the web app needs from whoever runs its jobs."""

    @property
    def running(self) -> bool: ...

    def start(self) -> Any:
        """Recover the jobs of dead workers, then begin running (or dispatching) queued jobs."""

    def wake(self) -> None:
        """A job was queued: get it going now rather than at the next poll."""

    def stop(self, *, timeout: float | None = 10.0) -> None:
        """Stop taking jobs (a running one is requeued when its lease runs out, or on next start)."""

    def run_pending(self) -> int:
        """Run every queued job in the calling thread; return how many ran (tests, scripts)."""


def make_job_backend(
    *,
    store: Store,
    data_dir: str | Path,
    predictor_factory: Callable[[], Any],
    workers: int = 1,
    broker: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    timeout_s: float | None,
    memory_bytes: int | None,
) -> JobBackend:
    """The embedded pool of ``workers`` threads, or with ``broker`` (``redis://host:port/db``) the RQ dispatcher."""
    if broker:
        from liverseg.web.queue_rq import RQJobs

        return RQJobs(store=store, data_dir=data_dir, broker_url=broker, predictor_factory=predictor_factory,
                      lease_s=lease_s, timeout_s=timeout_s, memory_bytes=memory_bytes)
    from liverseg.web.jobs import WorkerPool

    return WorkerPool(store=store, data_dir=data_dir, predictor_factory=predictor_factory, workers=int(workers),
                      timeout_s=timeout_s, memory_bytes=memory_bytes, lease_s=lease_s)

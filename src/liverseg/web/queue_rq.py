"""The Redis job backend: RQ carries queued jobs to ``liverseg worker`` processes on any machine.

The database stays the truth about every job (queued, running under a lease, done,
failed; :mod:`liverseg.web.lease`); Redis only carries the news that a job is queued:

- the server (:class:`RQJobs`) hands each queued job to RQ as a small message naming the
  job (``execute(job_id)``, JSON-serialised: a worker never unpickles what is in Redis),
  recording the RQ job id in the database so that two dispatchers agree on one message;
- a worker (:func:`run_worker`, an RQ ``SimpleWorker``: the job runs in the worker's own
  process, so the model is loaded once and a kill -9 of the process kills its job) claims
  the job in the database with a lease, runs :func:`liverseg.web.jobs.run_study_job`
  (progress goes to the database, so it reaches the page), and publishes the result under
  its lease; a message for a job that is no longer queued (done, running elsewhere,
  deleted) is dropped, so a message delivered twice never runs a job twice;
- every ``poll_s`` the server requeues the jobs whose worker died (their lease ran out:
  the visibility timeout, ``lease_s``; failed after 3 attempts with the reason) and hands
  them to RQ again, and re-sends a queued job whose message Redis lost (a Redis restart
  without persistence). An exception escaping the job function (the database unreachable
  from that worker) is retried by RQ (``Retry(max=2)``) before the server's next pass.

Why RQ and not Celery: the job is one Python function and the broker is Redis; RQ is a
small, maintained library built for exactly that (plain functions, one Redis, a worker
class that runs the job in-process). Celery's Redis transport redelivers an unacknowledged
task after one fixed ``visibility_timeout`` whether or not its worker is alive, so it must
be set above the longest job (30 min here) and a dead worker's job then waits that long;
with a renewed lease in the database a dead worker's job comes back within ``lease_s``
(60 s) and a live worker's long job is never handed to a second one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from liverseg.errors import InputError, LiversegError
from liverseg.web.db import redact_url
from liverseg.web.jobs import DEFAULT_JOB_MEMORY_BYTES, DEFAULT_JOB_TIMEOUT_S, recover_dead_jobs, run_study_job
from liverseg.web.lease import worker_id
from liverseg.web.store import DEFAULT_LEASE_S, Store

__all__ = ["QUEUE_NAME", "BrokerUnavailableError", "RQJobs", "connect_broker", "execute", "run_worker"]

log = logging.getLogger(__name__)

#: The RQ queue liverseg uses on its Redis database.
QUEUE_NAME = "liverseg"
#: The job function as RQ names it (workers import it).
JOB_FUNCTION = "liverseg.web.queue_rq.execute"
#: RQ's statuses of a message that will still be run.
_LIVE = {"queued", "started", "deferred", "scheduled"}


class BrokerUnavailableError(LiversegError):
    """Redis cannot be reached at the ``--broker`` URL."""


def connect_broker(url: str, *, timeout_s: float = 10.0) -> Any:
    """A Redis connection for ``redis://[:password@]host:port/db`` (or ``rediss://`` for TLS), checked with PING.

    Raises:
        InputError: the URL is not a Redis URL.
        BrokerUnavailableError: nothing answers there within ``timeout_s``.
    """
    import redis

    if not str(url).startswith(("redis://", "rediss://", "unix://")):
        raise InputError(f"--broker must be a Redis URL such as redis://127.0.0.1:6379/0; got {redact_url(str(url))!r}")
    conn = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=max(timeout_s, 30.0),
                                health_check_interval=30)
    try:
        conn.ping()
    except redis.RedisError as exc:
        raise BrokerUnavailableError(
            f"cannot reach the broker {redact_url(str(url))} ({exc}); check --broker and that redis-server runs there"
        ) from None
    return conn


def _queue(conn: Any, name: str = QUEUE_NAME) -> Any:
    from rq import Queue
    from rq.serializers import JSONSerializer

    return Queue(name, connection=conn, serializer=JSONSerializer)


@dataclasses.dataclass
class _WorkerContext:
    """What :func:`execute` needs in a worker process (set by :func:`run_worker` or :meth:`RQJobs.run_pending`)."""

    store: Store
    data_dir: Path
    predictor_factory: Callable[[], Any]
    lease_s: float
    timeout_s: float | None
    memory_bytes: int | None
    worker: str
    ran: int = 0


_CONTEXT: _WorkerContext | None = None


def execute(job_id: int) -> str:
    """The RQ job: claim database job ``job_id`` with a lease and run it; returns its final status.

    A job that is not queued (done, failed, running under another worker's live lease,
    deleted) is left alone: "skipped".
    """
    ctx = _CONTEXT
    if ctx is None:
        raise RuntimeError("liverseg jobs run in `liverseg worker` processes, not a plain `rq worker`")
    job = ctx.store.claim_job(job_id=int(job_id), worker=ctx.worker, lease_s=ctx.lease_s)
    if job is None:
        log.info("job %s is not queued any more (done, running elsewhere or deleted); message dropped", job_id)
        return "skipped"
    ctx.ran += 1
    return run_study_job(job.study_id, store=ctx.store, data_dir=ctx.data_dir, predictor_factory=ctx.predictor_factory,
                         timeout_s=ctx.timeout_s, memory_bytes=ctx.memory_bytes, job=job, lease_s=ctx.lease_s)


def _rq_timeout(timeout_s: float | None) -> int:
    """RQ's hard limit on one job: above liverseg's own (cooperative) limit, so it only catches a stuck step."""
    return -1 if timeout_s is None else int(timeout_s * 1.5 + 120)


class RQJobs:
    """The server side of the Redis backend: dispatches queued jobs to RQ and recovers those of dead workers.

    Args:
        store: the database every worker shares.
        data_dir: the shared data folder.
        broker_url: ``redis://host:port/db``.
        predictor_factory: used only by :meth:`run_pending` (jobs run in the calling thread).
        lease_s: the leases' length: the visibility timeout after which a dead worker's job is requeued.
        timeout_s, memory_bytes: each job's limits (the workers' own settings apply in workers).
        poll_s: how often the janitor requeues dead workers' jobs and re-sends lost messages (seconds).

    Raises:
        BrokerUnavailableError: Redis does not answer (at construction: the server does not start half-configured).
    """

    def __init__(
        self,
        *,
        store: Store,
        data_dir: str | Path,
        broker_url: str,
        predictor_factory: Callable[[], Any],
        lease_s: float = DEFAULT_LEASE_S,
        timeout_s: float | None = DEFAULT_JOB_TIMEOUT_S,
        memory_bytes: int | None = DEFAULT_JOB_MEMORY_BYTES,
        poll_s: float = 2.0,
        queue_name: str = QUEUE_NAME,
    ) -> None:
        if not lease_s > 0 or not poll_s > 0:
            raise ValueError(f"lease_s and poll_s must be > 0 seconds; got {lease_s}, {poll_s}")
        self.store, self.data_dir = store, Path(data_dir)
        self.broker_url, self.queue_name = broker_url, queue_name
        self.predictor_factory = predictor_factory
        self.lease_s, self.timeout_s, self.memory_bytes, self.poll_s = float(lease_s), timeout_s, memory_bytes, poll_s
        self.redis = connect_broker(broker_url)
        self.queue = _queue(self.redis, queue_name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dispatch_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- dispatch -----------------------------------------------------------------------
    def _still_in_broker(self, dispatch_id: str) -> bool:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job as RQJob

        try:
            status = RQJob.fetch(dispatch_id, connection=self.redis, serializer=self.queue.serializer).get_status()
        except NoSuchJobError:
            return False
        return str(getattr(status, "value", status)) in _LIVE

    def dispatch(self) -> int:
        """Hand every queued job without a live RQ message to RQ; return how many were sent."""
        from rq import Retry

        sent = 0
        with self._dispatch_lock:
            for job in self.store.undispatched_jobs(stale_s=self.lease_s):
                if job.dispatch_id and self._still_in_broker(job.dispatch_id):
                    continue
                rq_id = f"liverseg-{job.id}-{uuid.uuid4().hex[:8]}"
                if not self.store.mark_dispatched(job.id, rq_id, previous=job.dispatch_id):
                    continue  # another dispatcher sent it, or it was claimed meanwhile
                self.queue.enqueue(JOB_FUNCTION, job.id, job_id=rq_id, retry=Retry(max=2, interval=[1, 5]),
                                   job_timeout=_rq_timeout(self.timeout_s), result_ttl=3600, failure_ttl=7 * 86400,
                                   description=f"liverseg job {job.id} (study {job.study_id})")
                sent += 1
        if sent:
            log.info("%d job(s) handed to the broker", sent)
        return sent

    def janitor(self) -> tuple[int, int, int]:
        """One pass: requeue dead workers' jobs (fail the thrice-interrupted), then dispatch. Returns the counts."""
        requeued, failed = recover_dead_jobs(self.store, self.data_dir)
        if requeued or failed:
            log.warning("%d job(s) of dead workers requeued, %d failed after repeated interruptions", requeued, failed)
        return requeued, failed, self.dispatch()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.janitor()
            except Exception:
                log.error("job dispatcher: pass failed (will retry in %.0f s)", self.poll_s, exc_info=True)

    # -- the JobBackend interface ---------------------------------------------------------
    def start(self) -> "RQJobs":
        self.janitor()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="liverseg-dispatcher", daemon=True)
        self._thread.start()
        log.info("jobs go to the broker %s (queue %r)", redact_url(self.broker_url), self.queue_name)
        return self

    def wake(self) -> None:
        try:
            self.dispatch()
        except Exception:  # the study is stored and queued; the janitor sends it when Redis is back
            log.error("could not hand a job to the broker now; will retry", exc_info=True)

    def stop(self, *, timeout: float | None = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_pending(self) -> int:
        """Dispatch, then run every message in this thread with an RQ burst worker; return how many jobs ran."""
        global _CONTEXT
        from rq import SimpleWorker

        self.janitor()
        ctx = _WorkerContext(store=self.store, data_dir=self.data_dir, predictor_factory=self.predictor_factory,
                             lease_s=self.lease_s, timeout_s=self.timeout_s, memory_bytes=self.memory_bytes,
                             worker=worker_id())
        previous, _CONTEXT = _CONTEXT, ctx
        try:
            SimpleWorker([self.queue], connection=self.redis, serializer=self.queue.serializer).work(
                burst=True, logging_level="WARNING")
        finally:
            _CONTEXT = previous
        return ctx.ran


def run_worker(
    *,
    broker_url: str,
    store: Store,
    data_dir: str | Path,
    predictor_factory: Callable[[], Any],
    lease_s: float = DEFAULT_LEASE_S,
    timeout_s: float | None = DEFAULT_JOB_TIMEOUT_S,
    memory_bytes: int | None = DEFAULT_JOB_MEMORY_BYTES,
    burst: bool = False,
    name: str | None = None,
    queue_name: str = QUEUE_NAME,
) -> int:
    """Run jobs from the broker until stopped (SIGTERM / Ctrl+C: warm shutdown after the current job).

    The predictor is built first (``predictor_factory()``; wrap it with
    :func:`~liverseg.web.jobs.shared_factory` so the jobs reuse it), so a model that cannot
    be loaded stops the worker before it takes any job.

    Args:
        burst: stop when the queue is empty (tests, batch runs).
        name: the worker's name in RQ (default: RQ's, host and pid based).

    Returns the number of jobs this worker ran.
    """
    global _CONTEXT
    from rq import SimpleWorker

    data_dir = Path(data_dir)
    if not (data_dir / "studies").is_dir():
        raise InputError(f"{data_dir} has no studies/ folder: point --data-dir at the data folder the server uses "
                         "(shared with this machine, e.g. over NFS)")
    conn = connect_broker(broker_url)
    queue = _queue(conn, queue_name)
    # load the model before taking a job: a bad --model stops the worker here with its reason, and the
    # minutes of imports and weights on a busy machine are not spent under a job's lease (an import holds
    # the interpreter, and a heartbeat that cannot run lets the lease lapse)
    t_load = time.monotonic()
    predictor_factory()
    log.info("model ready in %.1f s", time.monotonic() - t_load)
    ctx = _WorkerContext(store=store, data_dir=data_dir, predictor_factory=predictor_factory, lease_s=float(lease_s),
                         timeout_s=timeout_s, memory_bytes=memory_bytes, worker=worker_id())
    _CONTEXT = ctx
    worker = SimpleWorker([queue], connection=conn, serializer=queue.serializer, name=name)
    log.info("worker %s: jobs from %s (queue %r), data in %s, database %s", ctx.worker, redact_url(broker_url),
             queue_name, data_dir, store.db.describe())
    t0 = time.monotonic()
    try:
        worker.work(burst=burst, logging_level="WARNING")
    finally:
        _CONTEXT = None
    log.info("worker %s: stopped after %d job(s) in %.0f s", ctx.worker, ctx.ran, time.monotonic() - t0)
    return ctx.ran

"""Running studies: the job function and a local pool of worker threads.

:func:`run_study_job` is the whole job: it needs only the store, the data folder and a
way to get a predictor, so a real queue (Celery or RQ on Redis, many machines sharing the
data folder and the database) can call it as is. :class:`WorkerPool` is the embedded
default: N threads that claim queued jobs from the store.

Restart safety: every claim is a lease (:mod:`liverseg.web.lease`); :meth:`WorkerPool.start`
first requeues jobs whose worker died (lease expired or its process here gone; failed after
three interrupted attempts), never a job a live process is running; every exception inside
a job marks it failed with its reason, and the worker thread goes on.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from liverseg.errors import InputError, JobCancelledError, LiversegError, is_disk_full
from liverseg.web.lease import Heartbeat, owner_is_dead, worker_id
from liverseg.web.store import DEFAULT_LEASE_S, Job, Store
from liverseg.web.uploads import input_path, output_dir, study_dir, study_options

__all__ = ["DEFAULT_JOB_MEMORY_BYTES", "DEFAULT_JOB_TIMEOUT_S", "job_time_limit", "run_study_job", "summarize_report",
           "analysis_of", "attempt_dir", "discard_attempts", "recover_dead_jobs", "WorkerPool", "shared_factory"]

log = logging.getLogger(__name__)

PredictorFactory = Callable[[], Any]


def analysis_of(report: dict[str, Any]) -> dict[str, Any]:
    """The measurements part of a ``report.json`` (``liverseg.analysis.Analysis.to_dict()``).

    It is looked for at the top level and under ``analysis`` / ``measurements``; an empty
    dict when the report holds none.
    """
    for candidate in (report, report.get("analysis"), report.get("measurements")):
        if isinstance(candidate, dict) and "lesions" in candidate:
            return candidate
    return {}


def summarize_report(report: dict[str, Any]) -> dict[str, Any]:
    """The key numbers of a ``report.json``: liver volume (mL), lesion count, tumor volume (mL), burden (%)."""
    a = analysis_of(report)
    lesions = a.get("lesions")
    count = a.get("tumor_count")
    if count is None and isinstance(lesions, list):
        count = len(lesions)
    return {
        "liver_volume_ml": a.get("liver_volume_ml"),
        "lesion_count": count,
        "tumor_volume_ml": a.get("tumor_volume_ml"),
        "tumor_burden_pct": a.get("tumor_burden_percent"),
    }


#: run_case's step names in plain words for the progress page.
STAGE_WORDS = {
    "read": "reading the scan",
    "load_model": "loading the model",
    "localize": "finding the liver",
    "segment": "segmenting liver and tumors",
    "postprocess": "cleaning up the mask",
    "predicted": "segmentation done",
    "analyze": "measuring the liver and lesions",
    "write": "writing the mask and reports",
    "done": "done",
}


#: Default time limit of one job (seconds); a CT takes a few minutes on two CPU cores.
DEFAULT_JOB_TIMEOUT_S = 1800.0
#: A job's time limit grows with its upload: this many seconds ...
JOB_BASE_S = 40.0
#: ... plus this many per MiB uploaded (a 2 MiB upload: 55 s, stopped within a few seconds of it; a real CT
#: of 100 MiB: about 13 min), up to the pool's ``timeout_s``. A CT takes about 10 s here (30 s with TTA).
JOB_S_PER_MIB = 7.5


def job_time_limit(n_bytes: int, timeout_s: float | None) -> float | None:
    """Seconds a job on an upload of ``n_bytes`` may run: ``JOB_BASE_S + JOB_S_PER_MIB`` per MiB, at most ``timeout_s``.

    A tiny upload gets a short leash, so no file of a few MB can hold a worker for long
    whatever its header says; None: no limit.

    >>> job_time_limit(2 * 2**20, 1800.0)
    55.0
    """
    if timeout_s is None:
        return None
    return min(float(timeout_s), JOB_BASE_S + JOB_S_PER_MIB * max(0, int(n_bytes)) / 2**20)


#: Default memory limit of one job: growth of the process's resident memory while it runs (bytes).
DEFAULT_JOB_MEMORY_BYTES = 6 * 2**30


def _rss_bytes() -> int:
    """The process's resident memory now (bytes; Linux /proc, else the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _seconds(t: float) -> str:
    """``45 s``, ``0.5 s``, ``30 min``: a time limit as people read it."""
    if t >= 120:
        return f"{t / 60:.0f} min"
    return f"{t:.0f} s" if t >= 10 else f"{t:.2g} s"


class _LeaseLost(JobCancelledError):
    """This worker's lease on the job was taken over (it was presumed dead): stop, publish nothing."""


class _Progress:
    """Writes (stage, fraction) to the store at most every ``every_s`` seconds, or when the stage changes.

    It is also the job's watchdog: every call (each sliding window, each step) raises
    :class:`~liverseg.errors.JobCancelledError` when the study was deleted, the job ran past
    ``timeout_s`` seconds, or the process grew by more than ``memory_bytes`` since the job began.
    """

    def __init__(
        self,
        store: Store,
        job_id: int,
        *,
        study_id: str = "",
        every_s: float = 0.5,
        timeout_s: float | None = None,
        memory_bytes: int | None = None,
        token: str | None = None,
        lease: Heartbeat | None = None,
    ) -> None:
        self.store, self.job_id, self.every_s = store, job_id, every_s
        self.token, self.lease = token, lease
        self.study_id = study_id
        self.timeout_s, self.memory_bytes = timeout_s, memory_bytes
        self._t0 = time.monotonic()
        self._rss0 = _rss_bytes() if memory_bytes else 0
        self._last = 0.0
        self._checked = self._t0
        self._stage = ""

    def check(self) -> None:
        """Raise JobCancelledError when the job must stop (deleted study, time or memory limit)."""
        now = time.monotonic()
        if self.lease is not None and self.lease.lost:
            raise _LeaseLost()
        if self.timeout_s is not None and now - self._t0 > self.timeout_s:
            raise JobCancelledError(
                f"the analysis ran past the server's time limit of {_seconds(self.timeout_s)} and was stopped; the scan "
                "may be far larger than an abdominal CT. Crop it, or ask the administrator to raise the limit"
            )
        if self.memory_bytes is not None and _rss_bytes() - self._rss0 > self.memory_bytes:
            raise JobCancelledError(
                f"the analysis needed more than the server's memory limit of {self.memory_bytes / 2**30:.1f} GiB "
                "and was stopped; upload a smaller series, or ask the administrator to raise the limit"
            )
        if self.study_id and now - self._checked >= self.every_s:
            self._checked = now
            if self.store.study(self.study_id) is None:
                raise JobCancelledError("the study was deleted while it was being analysed")

    def __call__(self, stage: str, fraction: float) -> None:
        self.check()
        now = time.monotonic()
        stage = STAGE_WORDS.get(str(stage), str(stage).replace("_", " "))
        if stage != self._stage or now - self._last >= self.every_s or fraction >= 1.0:
            self._stage, self._last = stage, now
            try:
                self.store.set_progress(self.job_id, stage=str(stage), progress=float(fraction), token=self.token)
            except Exception:  # progress is best effort; the job goes on
                log.warning("job %s: could not store progress", self.job_id, exc_info=True)


def _public_reason(reason: str, study: Any, data_dir: Path) -> str:
    """A failure message naming the user's upload instead of the stored file (``scan.nii.gz``) or server paths."""
    folder = str(study_dir(data_dir, study.id))
    reason = reason.replace(folder + "/input/", "").replace(folder, "the study")
    stored = input_path(data_dir, study.id)
    if stored.is_file() and study.input_name:
        reason = reason.replace(stored.name, study.input_name)
    return reason


def _discard(data_dir: Path, study_id: str) -> None:
    """Remove what a job wrote for a study that was deleted while it ran."""
    shutil.rmtree(study_dir(data_dir, study_id), ignore_errors=True)


#: A job writes its outputs into ``studies/<id>/.attempt-<job>-<token>/`` and publishes them as ``output/``.
ATTEMPT_PREFIX = ".attempt-"


def attempt_dir(data_dir: Path, study_id: str, job: Job) -> Path:
    """Where one claim of a job writes its outputs before they are published (private to that claim)."""
    return study_dir(data_dir, study_id) / f"{ATTEMPT_PREFIX}{job.id}-{(job.lease_token or 'nolease')[:12]}"


def discard_attempts(data_dir: Path, job: Job) -> None:
    """Remove what one claim of a job (the one holding ``job.lease_token``) left half-written."""
    folder = study_dir(data_dir, job.study_id)
    name = attempt_dir(data_dir, job.study_id, job).name
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name == name or entry.name.startswith(f".{name}.partial-"):
                shutil.rmtree(entry, ignore_errors=True)


def recover_dead_jobs(store: Store, data_dir: str | Path, *, max_attempts: int = 3) -> tuple[int, int]:
    """Requeue the running jobs whose worker died, fail those interrupted ``max_attempts`` times, and remove
    what their dead claims left half-written. Returns ``(requeued, failed)`` counts."""
    requeued, failed = store.recover_expired(max_attempts=max_attempts, is_dead=owner_is_dead)
    for job in requeued + failed:
        discard_attempts(Path(data_dir), job)
    return len(requeued), len(failed)


def _publish_attempt(attempt: Path, out: Path) -> None:
    """Put a finished attempt folder in place of ``out`` (two renames; an old ``out`` is removed after)."""
    old: Path | None = None
    if out.exists():
        old = out.parent / f".output.old-{os.getpid()}-{time.time_ns()}"
        os.replace(out, old)
    try:
        os.replace(attempt, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_study_job(
    study_id: str,
    *,
    store: Store,
    data_dir: str | Path,
    predictor_factory: PredictorFactory,
    timeout_s: float | None = DEFAULT_JOB_TIMEOUT_S,
    memory_bytes: int | None = DEFAULT_JOB_MEMORY_BYTES,
    job: Job | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    worker: str | None = None,
    on_published: Callable[[str, Any, Any], None] | None = None,
) -> str:
    """Segment and measure one study; store its result or its failure. Returns the final job status.

    The job runs under a lease (:mod:`liverseg.web.lease`): ``job`` is one the caller claimed
    with :meth:`Store.claim_job`; without it the study's latest job is claimed here, and when
    it is not queued (running under another worker's lease, done, failed) nothing runs and
    its status is returned. While it runs a heartbeat renews the lease every ``lease_s / 4``
    seconds. ``liverseg.inference.run_case`` writes every output but report.pdf (``pdf=False``:
    the download route draws it from report.json when it is first asked for) into a folder private to
    this claim, which is renamed to ``<data_dir>/studies/<id>/output`` in the same database
    transaction that stores the report and marks the job done, and only while the lease is
    still this worker's: a half-done job is never served, and a result is published once.
    Any exception marks the job failed with a message for the user
    (:class:`~liverseg.errors.InputError`: the message as is; anything else: an internal
    error with its type); nothing is raised.

    Args:
        timeout_s: the job is stopped (failed, with the reason) after at most this many seconds, fewer for a
            small upload (:func:`job_time_limit`); None: no limit.
        memory_bytes: ... or when the process grows by more than this many bytes; None: no limit.
        job: a job claimed by the caller (its ``lease_token`` set); None: claim the study's latest job here.
        lease_s: the lease's length (seconds): the visibility timeout after which another worker takes the job
            over if this one stops renewing it.
        worker: the lease owner's id when claiming here (default :func:`liverseg.web.lease.worker_id`).
        on_published: called as ``on_published(study_id, ct, labels)`` with the CT as the job read it and
            its final label Volume, once the result is published (never for a failed or lost job): the
            embedded backend hands them to the slice viewer's cache, so the first dashboard after a job
            does not read the scan and the mask again. Its errors are logged, never the job's.

    A study deleted while its job runs stops the job at its next progress step, and
    whatever the job wrote is removed (status ``"missing"``). A worker whose lease was taken
    over stops at its next step and removes what it wrote (status ``"lost"``).
    """
    data_dir = Path(data_dir)
    study = store.study(study_id)
    if job is None:
        latest = store.latest_job(study_id)
        if study is None or latest is None:
            log.warning("study %s: no such study or job (deleted?); skipping", study_id)
            return "missing"
        if latest.status != "queued":
            log.info("study %s: job %d is %s; not run again", study_id, latest.id, latest.status)
            return latest.status
        job = store.claim_job(job_id=latest.id, worker=worker or worker_id(), lease_s=lease_s)
        if job is None:
            log.info("study %s: job %d was taken by another worker", study_id, latest.id)
            return "running"
    if study is None:
        log.warning("study %s: no such study (deleted?); skipping", study_id)
        return "missing"
    if not job.lease_token:
        raise ValueError(f"job {job.id} was not claimed (no lease token); claim it with Store.claim_job")
    with Heartbeat(store, job, lease_s=lease_s) as lease:
        return _run_leased(study, job, lease, store=store, data_dir=data_dir, predictor_factory=predictor_factory,
                           timeout_s=timeout_s, memory_bytes=memory_bytes, on_published=on_published)


def _run_leased(
    study: Any,
    job: Job,
    lease: Heartbeat,
    *,
    store: Store,
    data_dir: Path,
    predictor_factory: PredictorFactory,
    timeout_s: float | None,
    memory_bytes: int | None,
    on_published: Callable[[str, Any, Any], None] | None = None,
) -> str:
    from liverseg.inference import run_case

    study_id, token = study.id, job.lease_token
    attempt = attempt_dir(data_dir, study_id, job)
    t0 = time.monotonic()
    log.info("study %s: job %d started (attempt %d)", study_id, job.id, job.attempts)
    try:
        progress = _Progress(store, job.id, study_id=study_id, timeout_s=job_time_limit(study.n_bytes, timeout_s),
                             memory_bytes=memory_bytes, token=token, lease=lease)
        predictor = predictor_factory()
        progress("read", 0.0)
        volumes: list[Any] = []  # (ct, labels) for on_published
        report = run_case(
            input_path(data_dir, study_id),
            attempt,
            predictor=predictor,
            overwrite=True,
            progress=progress,
            note=study.note or None,
            pixel_size_mm=study_options(data_dir, study_id).get("pixel_size_mm"),
            pdf=False,  # drawn on the first download (corrections.ensure_report_pdf): the study is done sooner
            on_volumes=None if on_published is None else (lambda ct, labels: volumes.extend((ct, labels))),
        )
        if not isinstance(report, dict):
            raise TypeError(f"run_case returned {type(report).__name__}, expected the report dict")
        if store.study(study_id) is None:  # deleted while it ran: run_case recreated its folder
            _discard(data_dir, study_id)
            return "missing"
        out = output_dir(data_dir, study_id)
        if not store.finish_job(job.id, report=report, summary=summarize_report(report), token=token,
                                publish=lambda: _publish_attempt(attempt, out)):
            shutil.rmtree(attempt, ignore_errors=True)
            log.warning("study %s: job %d finished after its lease was taken over; its result was discarded",
                        study_id, job.id)
            return "lost"
        log.info("study %s: job %d done in %.1f s", study_id, job.id, time.monotonic() - t0)
        if on_published is not None and len(volumes) == 2:
            try:
                on_published(study_id, *volumes)
            except Exception:  # the study is done and stored; a viewer cache that refuses it reads the files later
                log.warning("study %s: handing its volumes to the viewer failed", study_id, exc_info=True)
        return "done"
    except _LeaseLost:
        shutil.rmtree(attempt, ignore_errors=True)
        log.warning("study %s: job %d stopped: its lease was taken over", study_id, job.id)
        return "lost"
    except JobCancelledError as exc:
        if store.study(study_id) is None:
            _discard(data_dir, study_id)
            log.info("study %s: job %d stopped, the study was deleted", study_id, job.id)
            return "missing"
        reason = str(exc)
        log.warning("study %s: job %d stopped after %.1f s (limit)", study_id, job.id, time.monotonic() - t0)
    except InputError as exc:
        reason = _public_reason(str(exc), study, data_dir)
    except LiversegError as exc:
        reason = _public_reason(f"the analysis failed: {exc}", study, data_dir)
    except MemoryError:
        reason = "the server ran out of memory on this scan; try again later or upload a smaller series"
    except OSError as exc:
        if not is_disk_full(exc):
            reason = f"internal error ({type(exc).__name__}: {exc}); press Retry, and report it if it happens again"
            log.error("study %s: job %d crashed (%s)", study_id, job.id, type(exc).__name__)
        else:
            reason = "the server's disk is full, so the results could not be written; press Retry later, and tell " \
                     "the server's administrator"
            log.error("study %s: job %d: the disk is full", study_id, job.id)
    except Exception as exc:  # a crashed job is marked failed with its reason, never left running
        reason = f"internal error ({type(exc).__name__}: {exc}); press Retry, and report it if it happens again"
        log.error("study %s: job %d crashed (%s)", study_id, job.id, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
    # the reason may quote file names or metadata: it goes to the store (for the user), not to the log
    log.info("study %s: job %d failed after %.1f s", study_id, job.id, time.monotonic() - t0)
    shutil.rmtree(attempt, ignore_errors=True)
    if store.study(study_id) is None:
        _discard(data_dir, study_id)
        return "missing"
    try:
        if not store.fail_job(job.id, error=reason, token=token):
            log.warning("study %s: job %d failed after its lease was taken over; not recorded", study_id, job.id)
            return "lost"
    except Exception:
        log.error("study %s: could not store the failure of job %d", study_id, job.id, exc_info=True)
    return "failed"


def shared_factory(factory: PredictorFactory) -> PredictorFactory:
    """Wrap ``factory`` so the predictor (model weights) is built once and shared by all workers.

    A failure is not cached: the next job tries again (and fails with the reason).
    """
    lock = threading.Lock()
    holder: list[Any] = []

    @functools.wraps(factory)
    def get() -> Any:
        with lock:
            if not holder:
                holder.append(factory())
            return holder[0]

    return get


class WorkerPool:
    """The embedded job backend: a local pool of ``workers`` threads running queued jobs from ``store``.

    Args:
        store: the queue and the results.
        data_dir: the studies' files.
        predictor_factory: returns the Predictor (called in the worker; wrap with
            :func:`shared_factory` to build it once).
        workers: number of threads (>= 1); each job may itself use several CPU threads.
        poll_s: how often an idle worker looks for work it was not woken for (seconds).
        timeout_s, memory_bytes: each job's limits (see :func:`run_study_job`).
        lease_s: each claim's lease (seconds; see :mod:`liverseg.web.lease`).
        on_published: each done job's volumes (see :func:`run_study_job`); also settable as an attribute.

    Every claim is a lease, so a second process on the same database (a second server by
    mistake, a ``liverseg worker``) never takes a job this pool is running; an idle thread
    requeues the jobs of workers that died (their lease ran out, or their process on this
    machine is gone).
    """

    def __init__(
        self,
        *,
        store: Store,
        data_dir: str | Path,
        predictor_factory: PredictorFactory,
        workers: int = 1,
        poll_s: float = 2.0,
        timeout_s: float | None = DEFAULT_JOB_TIMEOUT_S,
        memory_bytes: int | None = DEFAULT_JOB_MEMORY_BYTES,
        lease_s: float = DEFAULT_LEASE_S,
        on_published: Callable[[str, Any, Any], None] | None = None,
    ) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds or None; got {timeout_s}")
        if memory_bytes is not None and not memory_bytes > 0:
            raise ValueError(f"memory_bytes must be > 0 or None; got {memory_bytes}")
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0 seconds; got {lease_s}")
        self.timeout_s, self.memory_bytes, self.lease_s = timeout_s, memory_bytes, float(lease_s)
        if workers < 1:
            raise ValueError(f"workers must be >= 1; got {workers}")
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0 seconds; got {poll_s}")
        self.store = store
        self.data_dir = Path(data_dir)
        self.predictor_factory = predictor_factory
        self.workers = workers
        self.poll_s = poll_s
        self.worker_id = worker_id()
        self.on_published = on_published
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._recovered_at = 0.0
        self._recover_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def recover(self) -> tuple[int, int]:
        """Requeue jobs whose worker died (lease expired, or a dead process here); fail the thrice-interrupted."""
        with self._recover_lock:
            self._recovered_at = time.monotonic()
            requeued, failed = recover_dead_jobs(self.store, self.data_dir)
        if requeued or failed:
            log.warning("%d interrupted job(s) requeued, %d failed after repeated interruptions", requeued, failed)
            if requeued:
                self.wake()
        return requeued, failed

    def start(self) -> "WorkerPool":
        """Recover jobs a dead process left running, then start the threads."""
        self.recover()
        self._stop.clear()
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"liverseg-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def warm_up(self) -> threading.Thread:
        """Build the predictor and warm it (:func:`liverseg.inference.pipeline.warm_up`) in a background
        thread, so the first study after a start is as fast as the next. A job that arrives meanwhile
        waits for the same predictor (:func:`shared_factory`); a failure is logged, and the first job
        then tries again and fails with the reason. Returns the thread."""

        def run() -> None:
            t0 = time.perf_counter()
            try:
                predictor = self.predictor_factory()
                if callable(getattr(predictor, "warm_up", None)):
                    from liverseg.inference.pipeline import warm_up

                    parts = warm_up(predictor)
                    log.info("worker pool warmed up in %.1f s (%s)", time.perf_counter() - t0,
                             ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
            except Exception as exc:  # the first job reports it to its user
                log.warning("warming up the predictor failed (%s); the first job will try again", exc)

        t = threading.Thread(target=run, name="liverseg-warm-up", daemon=True)
        t.start()
        return t

    def wake(self) -> None:
        """Tell idle workers that a job was queued."""
        with self._wake:
            self._wake.notify_all()

    def stop(self, *, timeout: float | None = 10.0) -> None:
        """Stop taking jobs and wait up to ``timeout`` s for running ones (they are requeued on next start)."""
        self._stop.set()
        self.wake()
        for t in self._threads:
            t.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _run(self, job: Job) -> None:
        run_study_job(job.study_id, store=self.store, data_dir=self.data_dir, predictor_factory=self.predictor_factory,
                      timeout_s=self.timeout_s, memory_bytes=self.memory_bytes, job=job, lease_s=self.lease_s,
                      on_published=self.on_published)

    def _claim(self) -> Job | None:
        return self.store.claim_job(worker=self.worker_id, lease_s=self.lease_s)

    def run_pending(self) -> int:
        """Run queued jobs in the calling thread until none is left; return how many ran (tests, scripts)."""
        n = 0
        while (job := self._claim()) is not None:
            self._run(job)
            n += 1
        return n

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() - self._recovered_at >= self.lease_s / 2:
                    self.recover()
                job = self._claim()
            except Exception:
                log.error("worker: cannot read the job queue", exc_info=True)
                job = None
            if job is None:
                with self._wake:
                    self._wake.wait(self.poll_s)
                continue
            try:
                self._run(job)
            except BaseException:  # run_study_job catches everything; this is the last line of defence
                log.error("worker: job %d escaped its handler", job.id, exc_info=True)
                try:
                    self.store.fail_job(job.id, error="internal error in the worker; press Retry", token=job.lease_token)
                except Exception:
                    pass

"""Jobs through a real Redis (RQ) and a real PostgreSQL: the web app, duplicate and lost messages, dead workers,
and (slow) the fault and load tests of issue 15 with a whole deployment of processes."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from live_servers import free_port, postgres_server, postgres_url, redis_server, redis_url  # noqa: F401
from liverseg.io import write_volume
from liverseg.testing import phantom
from liverseg.web import create_app
from liverseg.web.auth import create_user
from liverseg.web.queue_rq import JOB_FUNCTION

from test_web import PASSWORD, login, upload


@pytest.fixture(scope="module")
def ct_bytes(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("ct")
    ct, _ = phantom(shape=(10, 40, 40), spacing=(4.0, 2.0, 2.0), lesions=((5.0, None),))
    write_volume(ct, d / "ct.nii.gz")
    return (d / "ct.nii.gz").read_bytes()


@pytest.fixture()
def rq_app(tmp_path, fast_bundle, tiny_bundle_2d, redis_url, postgres_url):
    from liverseg.inference import Predictor
    from liverseg.web.jobs import shared_factory

    factory = shared_factory(lambda: Predictor(fast_bundle, model_2d=tiny_bundle_2d, threads=1))
    app = create_app(data_dir=tmp_path / "data", start_workers=False, predictor_factory=factory, TESTING=True,
                     broker=redis_url, database=postgres_url, lease_s=1.0)
    create_user(app.extensions["liverseg"].store, name="ada", password=PASSWORD)
    client = app.test_client()
    login(client)
    yield app, client
    app.extensions["liverseg"].store.close()


def test_a_study_runs_through_redis_and_postgres_and_the_page_shows_it(rq_app, ct_bytes):
    app, c = rq_app
    ctx = app.extensions["liverseg"]
    assert ctx.store.db.dialect == "postgresql"
    sid = upload(c, [(io.BytesIO(ct_bytes), "ct.nii.gz")], note="via redis").get_json()["id"]
    job = ctx.store.latest_job(sid)
    assert job.status == "queued" and job.dispatch_id  # handed to the broker at upload (wake)
    assert ctx.pool.queue.count == 1
    assert ctx.pool.run_pending() == 1
    s = c.get(f"/studies/{sid}/status.json").get_json()
    assert s["status"] == "done", s["error"]
    assert s["progress"] == 1 and "report.json" in s["files"]
    report = json.loads(c.get(f"/studies/{sid}/files/report.json").data)
    assert report == ctx.store.result(sid) and report["run"]["note"] == "via redis"
    assert not [p.name for p in (ctx.data_dir / "studies" / sid).iterdir() if p.name.startswith((".attempt", "..attempt"))]


def test_a_message_delivered_twice_runs_the_job_once(rq_app, ct_bytes):
    app, c = rq_app
    ctx = app.extensions["liverseg"]
    sid = upload(c, [(io.BytesIO(ct_bytes), "ct.nii.gz")]).get_json()["id"]
    job_id = ctx.store.latest_job(sid).id
    extra = ctx.pool.queue.enqueue(JOB_FUNCTION, job_id)  # e.g. RQ retrying an abandoned message
    assert ctx.pool.run_pending() == 1
    assert extra.get_status(refresh=True) == "finished" and extra.return_value() in ("skipped", "done")
    assert ctx.store.latest_job(sid).status == "done" and ctx.store.latest_job(sid).attempts == 1


def test_a_message_lost_by_redis_is_sent_again(rq_app, ct_bytes):
    app, c = rq_app
    ctx = app.extensions["liverseg"]
    sid = upload(c, [(io.BytesIO(ct_bytes), "ct.nii.gz")]).get_json()["id"]
    first = ctx.store.latest_job(sid).dispatch_id
    ctx.pool.redis.flushdb()  # Redis restarted without persistence
    assert ctx.pool.dispatch() == 0  # not stale yet: a message may be in flight
    time.sleep(1.1)  # one lease
    assert ctx.pool.dispatch() == 1 and ctx.store.latest_job(sid).dispatch_id != first
    assert ctx.pool.run_pending() == 1 and ctx.store.latest_job(sid).status == "done"


def test_a_dead_workers_job_comes_back_after_the_visibility_timeout(rq_app, ct_bytes):
    app, c = rq_app
    ctx = app.extensions["liverseg"]
    sid = upload(c, [(io.BytesIO(ct_bytes), "ct.nii.gz")]).get_json()["id"]
    ctx.pool.redis.flushdb()
    lost = ctx.store.claim_job(worker="gpu-box:0:0:1:x", lease_s=1.0)  # a worker on a machine that is then lost
    attempt = ctx.data_dir / "studies" / sid / f".attempt-{lost.id}-{lost.lease_token[:12]}"
    attempt.mkdir()  # what it had half-written
    assert ctx.pool.janitor() == (0, 0, 0)  # its lease is live: nobody else takes the job
    time.sleep(1.1)
    assert ctx.pool.janitor() == (1, 0, 1) and not attempt.exists()
    assert ctx.store.latest_job(sid).status == "queued"
    assert ctx.pool.run_pending() == 1
    job = ctx.store.latest_job(sid)
    assert job.status == "done" and job.attempts == 2


def test_a_worker_refuses_a_data_folder_without_studies_and_a_bad_broker(tmp_path, capsys):
    from liverseg.cli import main

    assert main(["worker", "--data-dir", str(tmp_path), "--broker", "redis://127.0.0.1:1/0"]) == 2
    assert "no liverseg.sqlite3" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--broker", "http://x"]) == 2
    assert "--broker must be a Redis URL" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--broker", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    assert "cannot reach the broker" in capsys.readouterr().err


def test_a_data_folder_of_one_database_is_refused_with_another(tmp_path, postgres_url):
    from liverseg.web.lock import ServerConflictError

    create_app(data_dir=tmp_path / "data", start_workers=False, predictor_factory=lambda: None, TESTING=True,
               database=postgres_url).extensions["liverseg"].store.close()
    (tmp_path / "data" / "studies" / "abc").mkdir()  # a stored study the SQLite default knows nothing of
    with pytest.raises(ServerConflictError, match="holds the studies of another database"):
        create_app(data_dir=tmp_path / "data", start_workers=False, predictor_factory=lambda: None, TESTING=True)
    assert (tmp_path / "data" / "studies" / "abc").is_dir()  # nothing was cleaned away


# --------------------------------------------------------------------------- a whole deployment (slow)


def _wait(cond, timeout_s: float, what: str, step_s: float = 0.1):
    t0 = time.monotonic()
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() - t0 < timeout_s, f"{what} did not happen within {timeout_s} s"
        time.sleep(step_s)


class _Watcher(threading.Thread):
    """Polls every study through the API while the jobs run: a file served is never half-written."""

    def __init__(self, studies: dict) -> None:
        super().__init__(daemon=True)
        self.studies, self.stop, self.errors, self.checks = studies, threading.Event(), [], 0
        self.done_at: dict[str, float] = {}
        self.checked: set[str] = set()
        self.progress_seen: list[tuple[str, float]] = []  # (stage, fraction) of running jobs, as the API showed them

    def run(self) -> None:
        import gzip

        while not self.stop.is_set():
            # every study first seen done in one sweep gets the sweep's time: their order within a sweep is the
            # order the watcher asked in, not the order they finished (CI once failed on two polls 8 ms apart)
            sweep_t = time.monotonic()
            for sid, api in list(self.studies.items()):
                try:
                    s = api.study(sid)
                    if s["status"] == "running" and 0 < s["progress"] < 1:
                        self.progress_seen.append((s["stage"], s["progress"]))
                    if s["status"] == "done" and sid not in self.done_at:
                        self.done_at[sid] = sweep_t
                    if sid in self.checked:
                        continue
                    status, body = api.file(sid, "report.json")
                    if status == 200:
                        self.checks += 1
                        if "analysis" not in json.loads(body):
                            self.errors.append(f"{sid}: report.json without analysis")
                    if s["status"] == "done":
                        status, body = api.file(sid, "mask.nii.gz")
                        if status != 200:
                            self.errors.append(f"{sid}: done but mask.nii.gz answered {status}")
                        else:
                            gzip.decompress(body)  # a truncated gzip raises
                            self.checks += 1
                            self.checked.add(sid)
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    self.errors.append(f"{sid}: {type(exc).__name__}: {exc}")
            self.stop.wait(1.0)


@pytest.fixture(scope="module")
def fast_bundle(tmp_path_factory) -> Path:
    """One tiny stage that calls everything liver: no lesions to measure, so a job takes about 2 s of one core."""
    from tiny_bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("fast") / "liver-only", kind="3d", cascade=False,
                            head_classes=(None, 1))


def _cluster(tmp_path, bundle, redis_url, postgres_url):
    from scaleout_cluster import Cluster

    # long enough that a busy 2-core machine never starves a live worker's heartbeat (every 5 s); a killed worker's
    # job comes back at once anyway, as the server sees on this machine that the process is gone
    return Cluster(root=tmp_path, broker=redis_url, database=postgres_url, model=bundle, port=free_port(),
                   visibility_timeout_s=20.0)


@pytest.mark.slow
def test_fault_a_worker_killed_mid_job_loses_nothing_and_writes_each_result_once(
        tmp_path, fast_bundle, redis_url, postgres_url, ct_bytes):
    """20 studies from 3 users over 2 worker processes; one worker is SIGKILLed while it runs a job and restarted."""
    from liverseg.web.db import open_database
    from liverseg.web.store import Store

    cluster = _cluster(tmp_path, fast_bundle, redis_url, postgres_url)
    store = Store(database=open_database(postgres_url))
    studies: dict = {}
    watcher = _Watcher(studies)
    try:
        cluster.start_server()
        users = [cluster.add_user(f"user{i}") for i in range(3)]
        workers = {"w1": cluster.start_worker("w1"), "w2": cluster.start_worker("w2")}
        for i in range(20):
            api = users[i % 3]
            studies[api.upload("ct.nii.gz", ct_bytes, note=f"study {i}")] = api
        watcher.start()
        pids = {str(p.pid): name for name, p in workers.items()}
        victim_job = _wait(lambda: next((j for j in store.running_jobs()
                                         if j.worker.split(":")[3] in pids and j.progress > 0.05), None),
                           300, "a worker being in the middle of a job", step_s=0.05)
        victim = pids[victim_job.worker.split(":")[3]]
        os.kill(workers[victim].pid, signal.SIGKILL)  # mid-job: no chance to clean up
        workers[victim].wait()
        cluster.start_worker(victim)
        _wait(lambda: all(store.latest_job(sid).status in ("done", "failed") for sid in studies), 600, "all 20 done",
              step_s=0.5)
        _wait(lambda: len(watcher.checked) == 20, 300, "the watcher seeing all 20 done")
    finally:
        watcher.stop.set()
        watcher.join(30)
        cluster.stop()
    assert watcher.errors == [] and watcher.checks >= 20
    assert watcher.progress_seen, "no running job's progress reached the API"  # from the workers, via PostgreSQL
    logs = cluster.worker_logs()
    for sid in studies:
        job = store.latest_job(sid)
        assert job.status == "done", (sid, job.error)
        with store.db.connect() as conn:
            assert conn.execute("SELECT count(*) FROM jobs WHERE study_id = ?", (sid,)).fetchone()[0] == 1
            assert conn.execute("SELECT job_id FROM results WHERE study_id = ?", (sid,)).fetchone()[0] == job.id
        assert logs.count(f"study {sid}: job {job.id} done") == 1, sid  # each result written once
        folder = cluster.data / "studies" / sid
        assert json.loads((folder / "output" / "report.json").read_text()) == store.result(sid)
        assert not [p for p in folder.iterdir() if p.name.startswith((".attempt", "..attempt", ".output."))]
        assert (folder / "input").is_dir()
    killed = store.latest_job(victim_job.study_id)
    assert killed.attempts == 2 and f"study {victim_job.study_id}: job {killed.id} started" in logs
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["rq", "embedded"])
def test_load_parallel_uploads_while_two_workers_run(backend, tmp_path, fast_bundle, redis_url, postgres_url,
                                                      ct_bytes, capsys):
    """3 users upload 3 studies each at once while 2 workers run (RQ processes, or `serve --workers 2` threads).

    Reports studies per hour and the load average; each user's first study is done before the
    last third of the work, so nobody waits for the whole of another's batch.
    """
    from scaleout_cluster import CLI, _env

    cluster = _cluster(tmp_path, fast_bundle, redis_url, postgres_url)
    studies: dict = {}
    owner: dict = {}
    watcher = _Watcher(studies)
    try:
        if backend == "rq":
            cluster.start_server()
            for name in ("w1", "w2"):
                cluster.start_worker(name)
        else:  # the embedded default: SQLite, two worker threads in the server
            import subprocess

            log = open(cluster.logs / "server.log", "ab")
            cluster.server = subprocess.Popen(
                CLI + ["serve", "--data-dir", str(cluster.data), "--port", str(cluster.port), "--workers", "2",
                       "--model", str(fast_bundle)], stdout=log, stderr=subprocess.STDOUT, env=_env())
            cluster.database = None
            _wait(lambda: (cluster.data / "liverseg.sqlite3").exists() and cluster.server.poll() is None, 120,
                  "the server starting")
            time.sleep(3)
        if cluster.database is None:
            def add(name):
                cluster.liverseg("users", "--data-dir", str(cluster.data), "add", name)
                token = cluster.liverseg("users", "token", name, "--data-dir", str(cluster.data)).splitlines()[-1]
                from scaleout_cluster import Api

                return Api(cluster.base, token.strip())
            users = [add(f"user{i}") for i in range(3)]
        else:
            users = [cluster.add_user(f"user{i}") for i in range(3)]
        # one study first, so the workers have loaded the model before the clock starts
        warm = users[0].upload("ct.nii.gz", ct_bytes, note="warm-up")
        _wait(lambda: users[0].study(warm)["status"] == "done", 300, "the warm-up study", step_s=0.3)
        t0 = time.monotonic()
        load0 = os.getloadavg()

        def burst(i, api):
            for k in range(3):
                sid = api.upload("ct.nii.gz", ct_bytes, note=f"user{i} study {k}")
                studies[sid], owner[sid] = api, i

        threads = [threading.Thread(target=burst, args=(i, api)) for i, api in enumerate(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        watcher.start()
        _wait(lambda: len(watcher.done_at) == 9, 600, "all 9 done", step_s=0.2)
        elapsed = max(watcher.done_at.values()) - t0
        load1 = os.getloadavg()
    finally:
        watcher.stop.set()
        watcher.join(30)
        cluster.stop()
    assert watcher.errors == []
    per_hour = 9 / elapsed * 3600
    order = sorted(watcher.done_at.values())
    two_thirds = order[5]
    for i in range(3):
        first = min(t for sid, t in watcher.done_at.items() if owner[sid] == i)
        assert first <= two_thirds, f"user{i}'s first study waited for most of the others'"
    with capsys.disabled():
        print(f"\nload test ({backend}, 2 workers, tiny model, 9 studies from 3 users): {elapsed:.1f} s, "
              f"{per_hour:.0f} studies/hour; load average before {load0[0]:.2f}, after {load1[0]:.2f} "
              f"(1 min), {os.cpu_count()} CPUs")


def test_a_worker_with_a_model_it_cannot_load_stops_before_taking_a_job(tmp_path, redis_url, capsys):
    from liverseg.cli import main

    app = create_app(data_dir=tmp_path / "data", start_workers=False, predictor_factory=lambda: None, TESTING=True,
                     broker=redis_url)
    store = app.extensions["liverseg"].store
    user = store.add_user(name="ada", password_hash="x")
    store.add_study(study_id="s1", user_id=user.id, note="", input_name="a", input_kind="file", input_format="nifti",
                    n_files=1, n_bytes=1)
    app.extensions["liverseg"].pool.dispatch()
    code = main(["worker", "--data-dir", str(tmp_path / "data"), "--broker", redis_url, "--burst",
                 "--model", str(tmp_path / "no-such-bundle")])
    assert code in (1, 2) and "no-such-bundle" in capsys.readouterr().err
    job = store.latest_job("s1")
    assert job.status == "queued" and job.attempts == 0  # nothing was taken

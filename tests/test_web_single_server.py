"""The embedded default is safe: one server per data folder, a clear message for a port in use,
and no job ever run twice at once (leases: only a dead worker's job goes back to the queue)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from liverseg.web.lease import Heartbeat, owner_is_dead, worker_id
from liverseg.web.lock import DataDirLock, ServerConflictError
from liverseg.web.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "liverseg.cli", "serve", "--data-dir", str(data_dir), "--port", str(port), "--no-warm-up"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )


def _wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the server did not listen on {port} within {timeout_s} s")


def _store_with_study(path: Path, study_id: str = "s1") -> Store:
    store = Store(path=path)
    user = store.user_by_name("ada") or store.add_user(name="ada", password_hash="x")
    store.add_study(study_id=study_id, user_id=user.id, note="", input_name="a.nii.gz", input_kind="file",
                    input_format="nifti", n_files=1, n_bytes=1)
    return store


def test_the_lock_names_its_holder_and_is_freed_on_release(tmp_path):
    first = DataDirLock(data_dir=tmp_path, port=8123).acquire()
    with pytest.raises(ServerConflictError, match=rf"already using the data folder .*pid {os.getpid()}.*port 8123"):
        DataDirLock(data_dir=tmp_path).acquire()
    first.release()
    with DataDirLock(data_dir=tmp_path) as again:
        assert again.held


def test_a_second_server_on_the_same_data_folder_stops_with_the_first_ones_pid(tmp_path):
    data = tmp_path / "data"
    p1, p2 = _free_port(), _free_port()
    first = _serve(data, p1)
    try:
        _wait_listening(p1, first)
        second = _serve(data, p2)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, (out, err)
        assert "another liverseg server is already using the data folder" in err and f"pid {first.pid}" in err
        assert f"port {p1}" in err and "serving on" not in out
        assert first.poll() is None  # the first one goes on
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    # the first one stopped: its lock went with it, so a new server starts on that folder
    third = _serve(data, p2)
    try:
        _wait_listening(p2, third)
    finally:
        third.send_signal(signal.SIGINT)
        third.communicate(timeout=60)


def test_a_port_in_use_says_so_and_runs_no_job(tmp_path):
    data = tmp_path / "data"
    store = _store_with_study(data / "liverseg.sqlite3")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _serve(data, port)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert f"the port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert "internal error" not in err and "serving on" not in out
    assert store.latest_job("s1").status == "queued" and store.latest_job("s1").attempts == 0
    assert DataDirLock(data_dir=data).acquire().held  # and the folder's lock was let go


def test_a_job_held_by_a_live_worker_is_never_taken_again_and_a_dead_ones_is(tmp_path):
    from liverseg.web import create_app

    data = tmp_path / "data"
    store = _store_with_study(data / "liverseg.sqlite3")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from liverseg.web.store import Store; from liverseg.web.lease import worker_id; "
         "job = Store(path=sys.argv[1]).claim_job(worker=worker_id(), lease_s=600); print(job.id, flush=True); "
         "time.sleep(600)", str(store.path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip()
        for _ in range(2):  # a second server (or a restart) on the folder: the live worker's job stays its own
            create_app(data_dir=data, start_workers=False, predictor_factory=lambda: None, TESTING=True)
            job = store.latest_job("s1")
            assert job.status == "running" and job.attempts == 1
        assert store.claim_job() is None
    finally:
        holder.kill()
        holder.wait()
    # kill -9 of the worker: its process is gone on this machine, so its job is requeued at once
    create_app(data_dir=data, start_workers=False, predictor_factory=lambda: None, TESTING=True)
    job = store.latest_job("s1")
    assert job.status == "queued" and job.lease_token is None


def test_a_lease_from_another_machine_waits_for_its_expiry(tmp_path):
    store = _store_with_study(tmp_path / "db.sqlite3")
    other = "gpu-box:abcd1234:4026531836:4242:deadbeef"
    assert not owner_is_dead(other)  # another host: only the clock frees its job
    job = store.claim_job(worker=other, lease_s=0.6)
    assert store.recover_expired(is_dead=owner_is_dead) == ([], [])
    time.sleep(0.7)
    requeued, failed = store.recover_expired(is_dead=owner_is_dead)
    assert [j.id for j in requeued] == [job.id] and failed == []
    assert store.latest_job("s1").status == "queued"


def test_a_worker_presumed_dead_publishes_nothing(tmp_path):
    store = _store_with_study(tmp_path / "db.sqlite3")
    slow = store.claim_job(worker=worker_id(), lease_s=0.3)
    time.sleep(0.4)  # it stopped renewing its lease (frozen, cut off): the job goes to another worker
    assert [j.id for j in store.recover_expired()[0]] == [slow.id]
    fresh = store.claim_job(worker=worker_id(), lease_s=30)
    assert fresh.id == slow.id and fresh.lease_token != slow.lease_token and fresh.attempts == 2
    published = []
    assert not store.heartbeat(slow.id, slow.lease_token)
    assert not store.finish_job(slow.id, report={"x": 1}, summary={}, token=slow.lease_token,
                                publish=lambda: published.append("slow"))
    assert not store.fail_job(slow.id, error="late", token=slow.lease_token)
    store.set_progress(slow.id, stage="late", progress=0.9, token=slow.lease_token)
    assert store.latest_job("s1").stage != "late"
    assert store.finish_job(fresh.id, report={"x": 2}, summary={}, token=fresh.lease_token,
                            publish=lambda: published.append("fresh"))
    assert published == ["fresh"] and store.result("s1") == {"x": 2}


def test_a_failing_publish_rolls_back_and_the_heartbeat_notices_a_lost_lease(tmp_path):
    store = _store_with_study(tmp_path / "db.sqlite3")
    job = store.claim_job(worker=worker_id(), lease_s=30)

    def broken():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        store.finish_job(job.id, report={"x": 1}, summary={}, token=job.lease_token, publish=broken)
    assert store.latest_job("s1").status == "running" and store.result("s1") is None
    with Heartbeat(store, job, lease_s=0.2) as beat:
        time.sleep(0.15)
        assert not beat.lost
        store.fail_job(job.id, error="taken away")  # e.g. recovered by a server that thought it dead
        time.sleep(0.2)
        assert beat.lost

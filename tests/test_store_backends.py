"""The same store tests against SQLite (the default) and a real PostgreSQL server."""

from __future__ import annotations

import threading
import time

import pytest

from live_servers import postgres_server, postgres_url  # noqa: F401  (fixtures)
from liverseg.web.db import open_database, redact_url
from liverseg.web.store import MIGRATIONS, Store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(path=tmp_path / "liverseg.sqlite3")
    else:
        s = Store(database=open_database(request.getfixturevalue("postgres_url")))
    yield s
    s.close()


def _study(store: Store, sid: str, user_id: int, **kw) -> None:
    store.add_study(study_id=sid, user_id=user_id, note=kw.get("note", ""), input_name=kw.get("name", "ct.nii.gz"),
                    input_kind="file", input_format="nifti", n_files=1, n_bytes=kw.get("n_bytes", 10))


def test_schema_is_created_with_its_version_and_migrating_again_changes_nothing(store):
    assert store.schema_version == len(MIGRATIONS) == len(store.migrations)
    assert store.migrate() == len(MIGRATIONS)
    assert store.instance_id() == store.instance_id() and len(store.instance_id()) == 32


def test_users_tokens_and_sessions(store):
    ada = store.add_user(name="ada", password_hash="h1", is_admin=True)
    bob = store.add_user(name="bob", password_hash="h2")
    assert store.user_by_name("ada") == ada and store.user_by_id(bob.id).name == "bob"
    assert [u.name for u in store.users()] == ["ada", "bob"] and store.count_users() == 2
    with pytest.raises(Exception):
        store.add_user(name="ada", password_hash="again")
    store.add_token(ada.id, "lst_secret")
    assert store.user_by_token("lst_secret").id == ada.id and store.user_by_token("lst_other") is None
    assert store.count_tokens(ada.id) == 1
    store.add_session(ada.id, "sid-1", lifetime_s=60)
    store.add_session(ada.id, "sid-2", lifetime_s=-1)  # already expired
    assert store.session_user("sid-1").id == ada.id and store.session_user("sid-2") is None
    store.set_password(ada.id, "h3")
    assert store.session_user("sid-1") is None and store.user_by_id(ada.id).session_epoch == 1
    store.set_admin(bob.id, True)
    assert store.user_by_id(bob.id).is_admin
    store.revoke_tokens(ada.id)
    assert store.count_tokens(ada.id) == 0


def test_studies_search_order_and_deletion_cascade(store):
    ada = store.add_user(name="ada", password_hash="h")
    bob = store.add_user(name="bob", password_hash="h")
    for i in range(3):
        _study(store, f"s{i}", ada.id, note=f"Liver METS {i}" if i != 1 else "follow-up")
    _study(store, "b0", bob.id)
    assert [s.id for s in store.studies(user_id=ada.id)] == ["s2", "s1", "s0"]  # newest first, same second too
    assert [s.id for s in store.studies(user_id=ada.id, search="liver mets")] == ["s2", "s0"]  # any case
    assert store.studies(user_id=ada.id, search="100%") == [] and store.studies(user_id=ada.id, search="_") == []
    assert store.study("b0", user_id=ada.id) is None and store.study("b0").user_id == bob.id
    job = store.claim_job()
    store.finish_job(job.id, report={"analysis": {"lesions": []}}, summary={"liver_volume_ml": 1512.25})
    assert store.study(job.study_id).liver_volume_ml == pytest.approx(1512.25)
    assert sorted(store.delete_user(ada.id)) == ["s0", "s1", "s2"]
    assert store.study("s0") is None and store.result(job.study_id) is None and store.latest_job("s0") is None


def test_claims_are_leases_and_only_the_holder_publishes(store):
    ada = store.add_user(name="ada", password_hash="h")
    for sid in ("s1", "s2"):
        _study(store, sid, ada.id)
    first = store.claim_job(worker="w1", lease_s=30)
    assert first.study_id == "s1" and first.status == "running" and first.attempts == 1 and first.worker == "w1"
    assert first.lease_expires_at > time.time() + 20  # the database's clock, in seconds since the epoch
    assert store.claim_job(job_id=first.id) is None  # running: never taken twice
    second = store.claim_job(worker="w2", lease_s=0.0)
    assert second.study_id == "s2" and store.claim_job() is None
    assert store.heartbeat(first.id, first.lease_token, lease_s=30) and not store.heartbeat(first.id, "forged")
    store.set_progress(first.id, stage="segmenting", progress=0.5, token=first.lease_token)
    assert store.latest_job("s1").stage == "segmenting" and store.latest_job("s1").progress == 0.5
    requeued, failed = store.recover_expired()
    assert [j.id for j in requeued] == [second.id] and failed == []
    assert store.latest_job("s2").status == "queued" and "worker stopped" in store.latest_job("s2").stage
    published = []
    assert store.finish_job(first.id, report={"n": 1}, summary={"lesion_count": 2}, token=first.lease_token,
                            publish=lambda: published.append(first.id))
    assert published == [first.id] and store.result("s1") == {"n": 1} and store.study("s1").lesion_count == 2
    assert not store.finish_job(first.id, report={"n": 2}, summary={}, token=first.lease_token)  # done already
    assert store.claim_job(lease_s=0.0).attempts == 2  # the second try dies too
    assert len(store.recover_expired(max_attempts=3)[0]) == 1
    assert store.claim_job(lease_s=0.0).attempts == 3  # and the third
    requeued, failed = store.recover_expired(max_attempts=3)
    assert requeued == [] and [j.study_id for j in failed] == ["s2"]
    job = store.latest_job("s2")
    assert job.status == "failed" and "3 times" in job.error and job.attempts == 3
    retry = store.requeue("s2")
    assert retry.status == "queued" and retry.attempts == 0 and store.latest_job("s2").id == retry.id


def test_a_free_worker_takes_the_first_study_of_a_user_with_nothing_running(store):
    """Queued in upload order: ada's three, then bob's and cy's first. With ada's first running, the next
    claims go to bob and cy (nothing of theirs running), then ada's next; with nobody's job running it is
    the oldest queued job."""
    ada, bob, cy = (store.add_user(name=n, password_hash="h") for n in ("ada", "bob", "cy"))
    for sid, user in (("a1", ada), ("a2", ada), ("a3", ada), ("b1", bob), ("c1", cy), ("b2", bob)):
        _study(store, sid, user.id)
    order = [store.claim_job(worker="w").study_id for _ in range(3)]
    assert order == ["a1", "b1", "c1"]
    store.finish_job(store.latest_job("a1").id, report={}, summary={})  # ada: nothing running any more
    assert store.claim_job(worker="w").study_id == "a2"  # ada has none running, bob and cy one each
    # one running each: the oldest queued first
    assert [store.claim_job(worker="w").study_id for _ in range(2)] == ["a3", "b2"]
    assert store.claim_job(worker="w") is None


def test_a_dead_owner_frees_its_job_before_the_lease_runs_out(store):
    ada = store.add_user(name="ada", password_hash="h")
    _study(store, "s1", ada.id)
    store.claim_job(worker="gone", lease_s=600)
    assert store.recover_expired(is_dead=lambda w: False) == ([], [])
    assert [j.worker for j in store.recover_expired(is_dead=lambda w: w == "gone")[0]] == ["gone"]


def test_many_workers_claim_each_job_once(store):
    ada = store.add_user(name="ada", password_hash="h")
    for i in range(24):
        _study(store, f"s{i:02d}", ada.id)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker():
        while (job := store.claim_job(worker=threading.current_thread().name, lease_s=60)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 24


def test_dispatch_records_one_message_per_job(store):
    ada = store.add_user(name="ada", password_hash="h")
    _study(store, "s1", ada.id)
    job = store.undispatched_jobs()[0]
    assert job.dispatch_id is None
    assert store.mark_dispatched(job.id, "m1") and not store.mark_dispatched(job.id, "m2")  # a racing dispatcher loses
    assert store.undispatched_jobs() == [] and [j.id for j in store.undispatched_jobs(stale_s=0.0)] == [job.id]
    assert store.mark_dispatched(job.id, "m3", previous="m1") and store.job(job.id).dispatch_id == "m3"


def test_a_newer_schema_is_refused_with_a_message(store):
    with store.db.transaction() as conn:
        if store.db.dialect == "sqlite":
            conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
        else:
            conn.execute("UPDATE liverseg_schema SET version = ?", (len(MIGRATIONS) + 1,))
    with pytest.raises(RuntimeError, match="newer than this liverseg.*upgrade liverseg"):
        store.migrate()


def test_both_databases_have_the_same_tables_and_columns(tmp_path, postgres_url):
    lite = Store(path=tmp_path / "x.sqlite3")
    pg = Store(database=open_database(postgres_url))
    with lite.db.connect() as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        lite_cols = {t: sorted(r[1] for r in conn.execute(f"PRAGMA table_info({t})")) for t in tables}
    with pg.db.connect() as conn:
        rows = conn.execute("SELECT table_name, column_name FROM information_schema.columns"
                            " WHERE table_schema = 'public' AND table_name <> 'liverseg_schema'").fetchall()
    pg_cols: dict[str, list[str]] = {}
    for table, column in rows:
        pg_cols.setdefault(table, []).append(column)
    assert lite_cols == {t: sorted(c) for t, c in pg_cols.items()}
    pg.close()


def test_an_unreachable_postgres_says_where_without_the_password():
    from liverseg.web.db_postgres import DatabaseUnavailableError
    from live_servers import free_port

    url = f"postgresql://liverseg:hunter2@127.0.0.1:{free_port()}/liverseg"
    with pytest.raises(DatabaseUnavailableError, match=r"cannot connect to the database .*:\*\*\*@127\.0\.0\.1") as err:
        open_database(url, connect_timeout_s=1.0)
    assert "hunter2" not in str(err.value) and "hunter2" not in redact_url(url)

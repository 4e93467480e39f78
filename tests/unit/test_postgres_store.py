"""The PostgreSQL store (store/postgres.py) on a real cluster of the suite's own: what it
translates, that two stores on one database take turns to write, and `store migrate`
moving a SQLite store's every row, ids kept. (The store's own tests run on both databases:
``store_location`` in tests/conftest.py.)"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.models import JobStatus, transition, utcnow
from orchestrator.results import search
from orchestrator.results.report import Report
from orchestrator.store import NewCommit, Store
from orchestrator.store.postgres import translate
from tests.helpers import write_config


def test_the_words_that_differ_are_translated() -> None:
    assert translate("INSERT OR IGNORE INTO repositories (name, first_seen_at) VALUES (?, ?)") == (
        "INSERT INTO repositories (name, first_seen_at) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    )
    assert translate("INSERT OR REPLACE INTO schedules (repository, expression, last_slot) VALUES (?, ?, ?)").endswith(
        "ON CONFLICT (repository) DO UPDATE SET expression = EXCLUDED.expression, last_slot = EXCLUDED.last_slot"
    )
    assert translate("INSERT INTO jobs (repository) VALUES (?)").endswith("RETURNING id")
    assert "jsonb_array_elements_text((j.branches)::jsonb)" in translate("SELECT 1 FROM json_each(j.branches)")
    assert translate("SELECT 1 FROM t WHERE a NOT IN () AND b IN ()") == "SELECT 1 FROM t WHERE TRUE AND FALSE"


def test_two_stores_on_one_database_claim_each_job_once(postgres) -> None:
    url = postgres.database()
    first, second = Store(url), Store(url)
    first.record_commits("demo", [NewCommit(f"{i:040x}", "", ()) for i in range(40)])
    claimed: list[int] = []

    def worker(store: Store) -> None:
        while (job := store.claim_next()) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (first, second, first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(claimed) == list(range(1, 41))  # each exactly once, across two stores
    assert first.instance_id() == second.instance_id()
    first.close()
    second.close()


def test_store_migrate_moves_every_row_with_its_id(tmp_path: Path, postgres, capsys) -> None:
    config = write_config(tmp_path, {"demo": tmp_path})
    data = yaml.safe_load(config.read_text())
    sqlite = Path(data["state_dir"]) / "orchestrator.db"
    old = Store(sqlite)
    old.record_commits(
        "demo", [NewCommit(f"{i:040x}", f"commit {i}", ("main",)) for i in range(1, 6)], {"main": "5" * 40}
    )
    job = old.claim_next()
    done = old.apply(job, transition(job, JobStatus.FAILED, utcnow(), exit_code=1, message="boom"))
    old.tests.record(done.id, 1, "demo", [("t::a", "failed", 0.1)], [])
    log = tmp_path / "output.log"
    log.write_text("ConnectionResetError: peer\n")
    search.index(old, done, log, Report(None), 1)
    old.pauses.pause("demo", "migration", "cli")
    instance = old.instance_id()
    old.close()
    data["store"] = {"url": postgres.database()}
    config.write_text(yaml.safe_dump(data))
    assert cli.main(["store", "migrate", "-c", str(config)]) == 0
    said = capsys.readouterr().out
    counted = {line.split()[0]: int(line.split()[1]) for line in said.splitlines()[1:]}
    assert counted["jobs"] == 5 and counted["search"] == 2 and counted["test_cases"] == 1  # a log line and the reason
    new = Store(data["store"]["url"])
    assert new.instance_id() == instance  # the containers' labels still name this store
    assert [j.id for j in new.list_jobs()] == [5, 4, 3, 2, 1] and new.get(1).message == "boom"
    assert new.heads("demo") == {"main": "5" * 40} and new.pauses.of("demo").reason == "migration"
    assert search.search(new, "ConnectionResetError")[0]["job"] == 1
    assert new.record_commits("demo", [NewCommit("f" * 40, "", ())]) == [6]  # the counters go on past them
    new.close()
    assert cli.main(["store", "migrate", "-c", str(config)]) == 2  # never into a store that has jobs
    assert "already has jobs" in capsys.readouterr().err


def test_a_store_url_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="store.url: cannot connect to PostgreSQL"):
        Store(f"postgresql://nobody@/nothing?host={tmp_path}&connect_timeout=1")


def test_one_holder_at_a_time_and_a_new_epoch_when_it_changes_hands(store_location) -> None:
    import time

    from orchestrator.errors import NotActive

    alpha, beta = Store(store_location), Store(store_location)
    first = alpha.leases.acquire("alpha", "http://alpha:8888", ttl=0.6)
    assert first is not None and first.holder == "alpha" and first.epoch == 1
    assert beta.leases.acquire("beta", "http://beta:8888", ttl=0.6) is None  # held by alpha: not beta's
    assert alpha.leases.renew("alpha", 1, ttl=0.6) and not beta.leases.renew("beta", 1, ttl=0.6)
    alpha.fence_with("alpha", 1)
    alpha.record_commits("demo", [NewCommit("a" * 40, "", ())])  # the holder writes
    time.sleep(0.8)  # alpha paused past its lease: beta takes it, at the next epoch
    taken = beta.leases.acquire("beta", "http://beta:8888", ttl=5)
    assert taken.holder == "beta" and taken.epoch == 2 and taken.address == "http://beta:8888"
    with pytest.raises(NotActive, match="alpha no longer holds the lease"):
        alpha.record_commits("demo", [NewCommit("b" * 40, "", ())])  # alpha wakes: refused, nothing written
    assert [j.commit for j in beta.list_jobs()] == ["a" * 40]
    assert not alpha.leases.renew("alpha", 1, ttl=5)
    beta.leases.release("beta", 2)
    assert alpha.leases.acquire("alpha", "http://alpha:8888", ttl=5).epoch == 3  # released: taken at once
    alpha.close()
    beta.close()

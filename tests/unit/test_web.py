"""The web face with the real app: badges, metrics, cancel / retry, the instant trigger,
the dashboard pages, the api token, and webhook notifications to a local HTTP server."""

import dataclasses
import time
from pathlib import Path

import pytest

from orchestrator.models import Job, JobStatus, TestCounts
from orchestrator.results import history
from orchestrator.results.notify import Notifier
from orchestrator.results.report import Report
from orchestrator.web.charts import COLOURS
from tests.helpers import GitRepo, Web


@pytest.fixture
def web(tmp_path: Path, repo: GitRepo):
    sha = repo.commit("first <script>alert(1)</script>", {"tests/test_a.py": "def test_a(): pass\n"})
    w = Web(tmp_path, repo)
    w.jobs.poll()
    with w.client() as client:
        yield client, w, repo, sha
    w.close()


def test_badge_follows_the_branch(web) -> None:
    client, w, _, _ = web
    svg = client.get("/badge/demo/main.svg")
    assert svg.headers["content-type"] == "image/svg+xml" and b"queued" in svg.content
    w.finish(JobStatus.FAILED)
    assert b"failing" in client.get("/badge/demo/main.svg").content
    assert b"unknown" in client.get("/badge/demo/nope/x.svg").content
    assert client.get("/badge/other/main.svg").status_code == 404
    assert client.get("/badge/demo/main.png").status_code == 404


def test_metrics_in_prometheus_text(web) -> None:
    client, w, _, _ = web
    text = client.get("/metrics").text
    assert "orchestrator_queue_depth 1.0" in text and "orchestrator_running_jobs 0.0" in text
    assert "orchestrator_job_duration_seconds_bucket" in text and "orchestrator_engine_errors_total 0.0" in text


def test_cancel_queued_then_retry(web) -> None:
    client, w, _, _ = web
    cancelled = client.post("/api/jobs/1/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert client.get("/api/jobs/1/log").content == b"[orchestrator: cancelled before it ran]\n"
    assert client.post("/api/jobs/1/cancel").status_code == 409
    retried = client.post("/api/jobs/1/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    assert client.post("/api/jobs/1/retry").status_code == 409  # only finished jobs
    assert client.post("/api/jobs/999/retry").status_code == 404


def test_cancel_running_is_a_request_for_the_dispatcher(web) -> None:
    client, w, _, _ = web
    job = w.store.claim_next()
    assert client.post(f"/api/jobs/{job.id}/cancel").status_code == 202
    assert w.store.cancel_requested(job.id) and w.store.get(job.id).status is JobStatus.RUNNING


def test_instant_trigger_queues_every_new_commit(web) -> None:
    client, w, repo, _ = web
    made = [repo.commit("a"), repo.commit("b")]
    resp = client.post("/api/repositories/demo/poll")
    assert resp.status_code == 202 and resp.json()["queued"] == 2
    assert [j.commit for j in reversed(w.store.list_jobs())][-2:] == made
    assert client.post("/api/repositories/nope/poll").status_code == 404


def test_dashboard_pages_render_escaped(web) -> None:
    client, w, _, sha = web
    w.finish(JobStatus.FAILED, TestCounts(2, 1, 1, 0, 0))
    page = client.get("/")
    assert page.status_code == 200 and sha[:10] in page.text and "main" in page.text
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;" in page.text
    job = client.get("/jobs/1")
    assert job.status_code == 200 and sha in job.text and "Retry" in job.text
    assert client.get("/jobs/0").status_code == 422 and client.get("/jobs/5").status_code == 404


def test_log_of_a_finished_job_is_the_result_file(web) -> None:
    client, w, _, sha = web
    job = w.finish(JobStatus.PASSED)
    directory = w.results.path(job, "output.log").parent
    directory.mkdir(parents=True)
    (directory / "output.log").write_bytes(b"the saved log\n")
    (directory / "junit.xml").write_bytes(
        b'<testsuite tests="1" failures="1"><testcase classname="t" name="x">'
        b'<failure message="assert 1 == 2">long trace</failure></testcase></testsuite>'
    )
    assert client.get(f"/api/jobs/{job.id}/log").content == b"the saved log\n"
    assert client.get(f"/api/jobs/{job.id}/failures").json() == [
        {
            "test": "t::x",
            "kind": "failure",
            "message": "assert 1 == 2",
            "details": "long trace",
            "tries": 1,
            "history": {"test_id": "t::x", "since": None, "failed_recent": 0, "recent": [], "branch": "main"},
        }
    ]


def junit(**outcomes: str) -> bytes:
    """A report whose cases ``name=outcome`` take 0.1 s each (0.5 s the failing ones)."""
    cases = "".join(
        f'<testcase classname="tests.test_a" name="{n}" time="{0.5 if o == "failed" else 0.1}">'
        + ('<failure message="no">trace</failure>' if o == "failed" else "")
        + "</testcase>"
        for n, o in outcomes.items()
    )
    return f'<testsuites><testsuite tests="{len(outcomes)}">{cases}</testsuite></testsuites>'.encode()


def test_history_says_since_when_a_test_fails_and_draws_its_runs(tmp_path: Path, repo: GitRepo) -> None:
    repo.commit("root")
    w = Web(tmp_path, repo)
    outcomes = ["passed", "failed", "passed", "failed", "failed", "failed"]  # flaky once, then broken
    jobs = []
    for i, outcome in enumerate(outcomes):
        if i:
            repo.commit(f"c{i}")
        w.jobs.poll()
        job = w.finish(JobStatus.FAILED if outcome == "failed" else JobStatus.PASSED)
        assert history.record(w.store, job, Report(junit(test_x=outcome, test_y="passed"))) == 2
        jobs.append(job)
        directory = w.results.path(job, "junit.xml").parent
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "junit.xml").write_bytes(junit(test_x=outcome, test_y="passed"))
    with w.client() as client:
        (failure,) = client.get(f"/api/jobs/{jobs[-1].id}/failures").json()
        record = failure["history"]
        assert record["since"] == {"commit": jobs[3].commit, "commits": 3}
        assert record["failed_recent"] == 3 and record["recent"] == ["passed", "failed", "passed", "failed", "failed"]
        (first,) = client.get(f"/api/jobs/{jobs[1].id}/failures").json()
        assert first["history"]["since"] is None  # a new failure
        runs = client.get("/api/tests/demo/tests.test_a::test_x", params={"branch": "main"}).json()
        assert [r["outcome"] for r in runs] == list(reversed(outcomes)) and runs[0]["seconds"] == 0.5
        page = client.get("/tests/demo/tests.test_a::test_x", params={"branch": "main"}).text
        assert page.count('class="bar"') == len(outcomes) and 'role="img"' in page and "4 failed" in page
    w.close()


def test_api_token_guards_mutations(tmp_path: Path, repo: GitRepo) -> None:
    repo.commit("root")
    token = "s3cret-token-of-enough-length"
    w = Web(tmp_path, repo, dispatcher={"host": "0.0.0.0", "port": 8999, "api_token": token})
    w.jobs.poll()
    with w.client() as client:
        assert client.post("/api/jobs/1/cancel").status_code == 401
        assert client.post("/api/jobs/1/cancel", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/api/jobs/1/cancel", headers={"Authorization": f"Bearer {token}"}).status_code == 202
        assert client.get("/api/jobs").status_code == 200  # reading needs no token
    w.close()


def notifying(w: Web) -> Notifier:
    """As the dispatcher wires it: the store tells it of each change, in its transaction."""
    notifier = Notifier(w.config.notify, w.store)
    w.store.news = notifier.news
    notifier.start()
    return notifier


def test_webhook_on_failures_and_recoveries_with_retries(tmp_path: Path, repo: GitRepo, webhooks) -> None:
    repo.commit("root")
    w = Web(tmp_path, repo, notify={"webhooks": [webhooks.url], "on": "failures", "retries": 2})
    notifier = notifying(w)

    def finished(status: JobStatus) -> Job:
        w.jobs.poll()
        return w.finish(status)

    webhooks.fail_first = 1  # the receiver is down once: retried
    first = finished(JobStatus.FAILED)
    second = repo.commit("fixed")
    finished(JobStatus.PASSED)
    repo.commit("still fine")
    finished(JobStatus.PASSED)  # neither a failure nor a recovery
    deadline = time.monotonic() + 10
    while len(webhooks.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    notifier.close()
    received = sorted(webhooks.received, key=lambda b: b["job"]["id"])  # a retried one arrives after the next
    assert [(b["job"]["status"], b["recovered"]) for b in received] == [("failed", False), ("passed", True)]
    assert received[1]["job"]["commit"] == second  # "still fine" sent nothing
    assert f"job-{first.id}-attempt-1-job.finished" in webhooks.keys
    (delivery,) = notifier.outbox.of_job(first.id)
    assert delivery.document()["state"] == "sent" and delivery.tries == 2 and delivery.last_error == "HTTP 503"
    with w.client() as client:  # what a user sees of it
        (shown,) = client.get(f"/api/jobs/{first.id}/deliveries").json()
        assert (shown["event"], shown["state"], shown["tries"]) == ("job.finished", "sent", 2)
        page = client.get(f"/jobs/{first.id}").text
        assert "Webhook deliveries" in page and "HTTP 503" in page
    w.close()


def test_a_delivery_is_written_with_the_final_status_and_sent_after_a_restart(
    tmp_path: Path, repo: GitRepo, webhooks
) -> None:
    """Nothing sends it before the "restart": the row was written in the status's transaction."""
    repo.commit("root")
    w = Web(tmp_path, repo, notify={"webhooks": [webhooks.url], "on": "all"})
    w.jobs.poll()
    w.store.news = Notifier(w.config.notify, w.store).news  # never started: a crash before sending
    job = w.finish(JobStatus.PASSED)
    later = notifying(w)  # the next start
    later.close()
    assert [b["job"]["id"] for b in webhooks.received] == [job.id]
    assert [d.state for d in later.outbox.of_job(job.id)] == ["sent"]
    w.close()


def test_a_receiver_that_refuses_is_not_retried(tmp_path: Path, repo: GitRepo, webhooks) -> None:
    repo.commit("root")
    w = Web(tmp_path, repo, notify={"webhooks": [webhooks.url.replace("/hook", "/refuse")], "on": "all", "retries": 3})
    notifier = notifying(w)
    w.jobs.poll()
    job = w.finish(JobStatus.PASSED)
    deadline = time.monotonic() + 10
    while notifier.outbox.of_job(job.id)[0].state == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    notifier.close()
    (delivery,) = notifier.outbox.of_job(job.id)
    assert (delivery.state, delivery.tries, delivery.last_error) == ("failed", 1, "HTTP 400")
    w.close()


def test_a_named_culprit_is_a_webhook_event_of_its_own(tmp_path: Path, repo: GitRepo, webhooks) -> None:
    repo.commit("root")
    w = Web(tmp_path, repo, notify={"webhooks": [webhooks.url], "on": "all"})
    w.jobs.poll()
    job = w.finish(JobStatus.FAILED)
    notifier = notifying(w)
    w.store.apply(job, dataclasses.replace(job, culprit={"id": 1, "good": "a" * 40, "bad": job.commit, "range": 5}))
    notifier.close()
    (body,) = webhooks.received
    assert body["event"] == "culprit_found" and body["job"]["commit"] == job.commit and body["bisection"]["range"] == 5
    w.close()


def test_skipped_and_culprit_on_the_dashboard_and_the_badge(web) -> None:
    client, w, _, sha = web
    job = w.store.find(sha)
    w.store.move(job, JobStatus.SKIPPED, message="covered by 0123456789ab")
    assert b"skipped" in client.get("/badge/demo/main.svg").content
    page = client.get("/").text
    assert "s-skipped" in page and "covered by 0123456789ab" in page


def test_webhook_never_blocks_on_a_dead_receiver(tmp_path: Path, repo: GitRepo) -> None:
    repo.commit("root")
    w = Web(tmp_path, repo, notify={"webhooks": ["http://127.0.0.1:9/dead"], "on": "all", "retries": 0, "timeout": 1})
    w.jobs.poll()
    notifier = notifying(w)
    began = time.monotonic()
    job = w.finish(JobStatus.PASSED)
    assert time.monotonic() - began < 0.5
    notifier.close(timeout=5)
    (delivery,) = notifier.outbox.of_job(job.id)
    assert delivery.state == "failed" and delivery.last_error == "ConnectionRefusedError"
    w.close()


def test_a_repository_that_cannot_be_polled_is_degraded_health(web) -> None:
    client, w, repo, _ = web
    w.metrics.watch_repositories(w.jobs.observer.health, lambda: dict(w.jobs.observer.failures))
    mirror = w.jobs.observer.mirrors["demo"]
    mirror.remote_heads = mirror.branches = lambda: 1 / 0  # whatever goes wrong in one repository
    resp = client.post("/api/repositories/demo/poll")
    assert resp.status_code == 503 and "ZeroDivisionError" in resp.json()["detail"]
    health = client.get("/healthz").json()
    assert health["status"] == "degraded" and not health["repositories"]["demo"]["ok"]
    assert 'orchestrator_repository_up{repository="demo"} 0.0' in client.get("/metrics").text
    assert 'orchestrator_repository_poll_errors_total{repository="demo"} 1.0' in client.get("/metrics").text
    assert "cannot be polled since" in client.get("/").text


def test_a_raw_token_without_bearer_is_refused(tmp_path: Path, repo: GitRepo) -> None:
    repo.commit("root")
    token = "s3cret-token-of-enough-length"
    w = Web(tmp_path, repo, dispatcher={"host": "127.0.0.1", "port": 8999, "api_token": token})
    w.jobs.poll()
    with w.client() as client:
        assert client.post("/api/jobs/1/cancel", headers={"Authorization": token}).status_code == 401
        assert client.post("/api/jobs/1/cancel", headers={"Authorization": f"bearer {token}"}).status_code == 401
        assert client.post("/api/jobs/1/cancel", headers={"Authorization": f"Bearer {token}"}).status_code == 202
    w.close()


def test_host_header_must_be_an_allowed_one(tmp_path: Path, repo: GitRepo) -> None:
    """A page of evil.example whose name resolves to 127.0.0.1 (DNS rebinding) is refused;
    beyond loopback, dispatcher.allowed_hosts says which names the API answers to."""
    repo.commit("root")
    w = Web(tmp_path, repo)
    with w.client(host="evil.example") as client:
        assert client.get("/api/jobs").status_code == 400
    with w.client(host="localhost") as client:
        assert client.get("/api/jobs").status_code == 200
    w.close()
    token = "s3cret-token-of-enough-length"
    (tmp_path / "2").mkdir()
    w = Web(
        tmp_path / "2",
        repo,
        dispatcher={"host": "0.0.0.0", "port": 8999, "api_token": token, "allowed_hosts": ["ci.example.org"]},
    )
    with w.client(host="ci.example.org") as client:
        assert client.get("/healthz").status_code == 200
    with w.client(host="127.0.0.1") as client:
        assert client.get("/healthz").status_code == 400
    w.close()


def test_long_subjects_and_branch_names_are_clipped_with_the_full_text_in_a_tooltip(
    tmp_path: Path, repo: GitRepo
) -> None:
    subject = "s" * 900
    repo.commit(subject)
    repo.git("branch", "b" * 200)
    w = Web(tmp_path, repo)
    w.jobs.poll()
    with w.client() as client:
        page = client.get("/").text
        assert f'class="clip" title="{subject}"' in page and f'title="{"b" * 200}"' in page
        assert 'h2 class="clip"' in client.get("/jobs/1").text
    w.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/x-www-form-urlencoded"},  # what an HTML form sends
        {"Content-Type": "text/plain"},  # enctype=text/plain
        {"Content-Type": "multipart/form-data; boundary=x"},
        {},  # fetch(url, {method: "POST", mode: "no-cors"})
        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"},
        {"X-Orchestrator": "1", "Origin": "http://evil.example"},
        {"X-Orchestrator": "1", "Origin": "null"},
    ],
)
def test_changes_refuse_what_another_site_can_make_a_browser_send(web, headers) -> None:
    _, w, _, _ = web
    with w.client(headers=headers) as client:
        for path in ("/api/jobs/1/cancel", "/api/jobs/1/retry", "/api/repositories/demo/poll", "/api/poll"):
            resp = client.post(path, content=b"")
            assert resp.status_code == 403 and "change" in resp.json()["detail"], path
    assert w.store.get(1).status.value == "queued"


def test_changes_are_allowed_from_this_site(web) -> None:
    _, w, _, _ = web
    same = {
        "X-Orchestrator": "1",
        "Origin": f"http://127.0.0.1:{w.config.dispatcher.port}",
        "Sec-Fetch-Site": "same-origin",
    }
    with w.client(headers=same) as client:
        assert client.post("/api/jobs/1/cancel").status_code == 202
    with w.client(headers={"Content-Type": "application/json"}) as client:
        assert client.post("/api/jobs/1/retry", content=b"{}").status_code == 202


def test_only_the_observer_records_progress(web) -> None:
    client, w, repo, _ = web
    new = repo.commit("rewrite history")
    body = {"repository": "demo", "commits": [{"sha": new}], "heads": {"main": "0" * 40}}
    refused = client.post("/api/commits", json=body)
    assert refused.status_code == 403 and "observer" in refused.json()["detail"]
    assert client.post("/api/commits", json=body, headers={"X-Observer-Key": "guess"}).status_code == 403
    assert w.store.heads("demo") != {"main": "0" * 40}
    assert client.post("/api/commits", json=body, headers={"X-Observer-Key": w.observer_key()}).status_code == 201
    assert w.store.heads("demo") == {"main": "0" * 40}
    key = w.config.state_dir / "observer.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    manual = client.post("/api/commits", json={"repository": "demo", "commits": [{"sha": new}]})
    assert manual.status_code == 201  # queueing a known commit by hand needs no key


def test_a_change_that_lost_a_race_is_a_conflict(web) -> None:
    """A cancel made from a copy of the job that another process claimed meanwhile: the
    compare-and-swap refuses it as a conflict (409 in the API, exit 2 on the command line)."""
    from orchestrator.errors import Conflict, InvalidTransition
    from orchestrator.web.app import _STATUS

    client, w, _, _ = web
    stale = w.store.get(1)
    w.store.claim_next()
    with pytest.raises(InvalidTransition) as info:
        w.store.request_cancel(stale)
    assert isinstance(info.value, Conflict) and info.value.exit_code == 2
    assert next(code for kind, code in _STATUS if isinstance(info.value, kind)) == 409
    assert client.post("/api/jobs/1/retry").status_code == 409  # running: only finished jobs can be retried


def test_a_test_that_passed_on_re_run_is_flaky_and_ranked(tmp_path: Path, repo: GitRepo) -> None:
    """The report keeps every run; the job passes with ``flaky``; the page ranks by flip rate."""
    from orchestrator.results.report import Report

    report = (
        b'<testsuites><testsuite name="pytest" tests="2" failures="1">'
        b'<testcase classname="tests.test_a" name="test_x"><failure message="no"/></testcase>'
        b'<testcase classname="tests.test_a" name="test_y"/></testsuite>'
        b'<testsuite name="orchestrator-rerun-1" tests="1"><testcase classname="tests.test_a" name="test_x"/>'
        b"</testsuite></testsuites>"
    )
    assert Report(report).flaky(reruns=1) == ["tests.test_a::test_x"]
    assert Report(report).counts(reruns=1) == TestCounts(total=2, passed=2, failed=0, errors=0, skipped=0)
    repo.commit("root")
    w = Web(tmp_path, repo)
    w.jobs.poll()
    job = w.store.claim_next()
    done = w.store.apply(job, dataclasses.replace(job, status=JobStatus.PASSED, flaky=("tests.test_a::test_x",)))
    history.record(w.store, done, Report(report), reruns=1)
    repo.commit("steady")
    w.jobs.poll()
    w.finish(JobStatus.PASSED)
    history.record(w.store, w.store.get(2), Report(junit(test_x="passed", test_y="passed")))
    with w.client() as client:
        assert client.get(f"/api/jobs/{done.id}").json()["flaky"] == ["tests.test_a::test_x"]
        (ranked,) = client.get("/api/flaky").json()
        assert (ranked["test_id"], ranked["flaky_runs"], ranked["runs"]) == ("tests.test_a::test_x", 1, 2)
        assert "tests.test_a::test_x" in client.get("/flaky").text
    w.close()


def test_trends_in_pictures_on_the_repository_and_front_pages(tmp_path: Path, repo: GitRepo) -> None:
    repo.commit("root")
    w = Web(tmp_path, repo)
    for i, outcome in enumerate(["passed", "failed", "passed"]):
        if i:
            repo.commit(f"c{i}")
        w.jobs.poll()
        job = w.finish(JobStatus.FAILED if outcome == "failed" else JobStatus.PASSED)
        history.record(w.store, job, Report(junit(test_x=outcome, test_y="passed", test_z="passed")))
    with w.client() as client:
        page = client.get("/repos/demo/main").text
        durations = page.split('id="durations"')[1].split("</div>")[0]
        assert durations.count('class="bar"') == 3 and "coloured by status" in durations
        rate = page.split('id="pass-rate"')[1].split("</div>")[0]
        # one day, today: its passed share (2 of 3) in green under its failed share in red
        assert rate.count('class="bar"') == 2 and "2 of 3 passed (67 %)" in page
        green = rate.split(f'fill="{COLOURS["passed"]}"')[0].rsplit('height="', 1)[1].split('"')[0]
        red = rate.split(f'fill="{COLOURS["failed"]}"')[0].rsplit('height="', 1)[1].split('"')[0]
        assert float(green) == pytest.approx(2 * float(red), rel=0.01)
        assert ">100%</text>" in rate and ">0%</text>" in rate  # a labelled value axis
        slowest = page.split('id="slowest"')[1]
        assert slowest.count("<tr>") == 4 and slowest.count('class="spark"') == 3  # a header and 3 tests
        assert client.get("/repos/demo").status_code == 200
        trends = client.get("/api/repositories/demo/trends", params={"branch": "main"}).json()
        assert [r["status"] for r in trends["runs"]] == ["passed", "failed", "passed"]
        front = client.get("/").text
        assert "The last hour" in front and front.count('class="bar"') == 2 * 61
        assert len(client.get("/api/load").json()) == 61
    w.close()


def test_failures_have_their_record_without_a_mirror(tmp_path: Path, repo: GitRepo) -> None:
    """A dispatcher whose observer runs elsewhere has no mirror: the record follows the branch's jobs."""
    repo.commit("root")
    w = Web(tmp_path, repo)
    w.jobs.poll()
    job = w.finish(JobStatus.FAILED)
    history.record(w.store, job, Report(junit(test_x="failed")))
    directory = w.results.path(job, "junit.xml").parent
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "junit.xml").write_bytes(junit(test_x="failed"))
    import shutil

    shutil.rmtree(w.config.state_dir / "mirrors")
    with w.client() as client:
        (failure,) = client.get(f"/api/jobs/{job.id}/failures").json()
        assert failure["history"]["since"] is None
    w.close()


def test_a_split_suite_shows_its_shards_and_each_shard_log(web) -> None:
    """The front page's row expands to the shards; the job page lists them; each shard's
    log is served by its number, and a number the job does not have is refused, saying so."""
    client, w, _, sha = web
    shards = (
        {"index": 1, "status": "passed", "duration_s": 2.5, "attempts": 1, "message": None},
        {"index": 2, "status": "failed", "duration_s": 3.0, "attempts": 2, "message": None},
    )
    job = w.finish(JobStatus.FAILED, shards=shards)
    directory = w.results.path(job, "output.log").parent
    directory.mkdir(parents=True)
    (directory / "output.2.log").write_bytes(b"shard two's log\n")
    page = client.get("/").text
    assert '<details class="shards"><summary>2 shards</summary>' in page and "2 tries" in page
    assert 'id="shards"' in client.get(f"/jobs/{job.id}").text
    assert client.get(f"/api/jobs/{job.id}/log?shard=2").content == b"shard two's log\n"
    assert client.get(f"/api/jobs/{job.id}").json()["shards"][1]["status"] == "failed"
    refused = client.get(f"/api/jobs/{job.id}/log?shard=3")
    assert refused.status_code == 422 and "has no shard 3 (it has 2)" in refused.text
    assert client.get(f"/api/jobs/{job.id}/log?shard=0").status_code == 422


def test_the_merge_queue_page_lists_requests_and_cancels_one(tmp_path: Path, repo: GitRepo) -> None:
    """A request through the API, shown on /merges with its Cancel button (the branch's
    name, HTML of a push, shown as text), cancelled through the API the button calls."""
    repo.commit("root", {"tests/test_a.py": "def test_a(): pass\n"})
    repo.git("checkout", "-q", "-b", "x<b>bold</b>")
    head = repo.commit("work", {"b.txt": "b"})
    repo.git("checkout", "-q", "main")
    w = Web(tmp_path, repo, repository={"merge_queue": {"target": "main"}})
    try:
        with w.client() as client:
            asked = client.post("/api/merges", json={"branch": "x<b>bold</b>", "repository": "demo"})
            assert asked.status_code == 201 and asked.json()["changed"] and asked.json()["merge"]["sha"] == head
            assert client.post("/api/merges", json={"branch": "nope"}).status_code == 404
            assert client.post("/api/merges", json={"branch": "x<b>bold</b>", "into": "dev"}).status_code == 422
            page = client.get("/merges").text
            assert "x&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
            assert 'class="cancel-merge"' in page and "queued" in page
            cancelled = client.post("/api/merges/cancel", json={"branch": "x<b>bold</b>", "repository": "demo"})
            assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
            listed = client.get("/api/merges", params={"repository": "demo"}).json()
            assert [(m["state"], m["message"]) for m in listed] == [("cancelled", "cancelled by request")]
            assert 'class="cancel-merge"' not in client.get("/merges/demo").text
    finally:
        w.close()


def _failed_with_report(w: Web) -> Job:
    job = w.finish(JobStatus.FAILED, TestCounts(3, 2, 1, 0, 0))
    report = junit(test_x="failed", test_y="passed", test_z="passed")
    history.record(w.store, job, Report(report))
    directory = w.results.path(job, "junit.xml").parent
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "junit.xml").write_bytes(report)
    (directory / "output.log").write_bytes(b"collected 3 items\n<b>bold</b>\nAssertionError: x\n")
    return job


def test_the_job_page_renders_its_failures_and_their_record_without_scripts(web) -> None:
    client, w, _, _ = web
    job = _failed_with_report(w)
    page = client.get(f"/jobs/{job.id}").text
    failing = page.split('id="failures"')[1].split("<h2>Log</h2>")[0]
    assert "tests.test_a::test_x" in failing and "first run of it on main" in failing  # rendered here, not by a script
    assert "also failed in 0" not in page and 'id="retry-failed"' in page and 'class="quarantine"' in page
    assert f'href="/jobs/{job.id}/log"' in page  # without scripts the log is a link
    log = client.get(f"/jobs/{job.id}/log").text
    assert 'id="L3"' in log and "AssertionError: x" in log and "&lt;b&gt;bold&lt;/b&gt;" in log


def test_record_words_say_what_a_person_wants_to_know() -> None:
    from orchestrator.web.pages import record_words

    base = {"branch": "main", "since": None}
    assert record_words({**base, "recent": [], "failed_recent": 0}) == "first run of it on main"
    assert (
        record_words({**base, "recent": ["passed"], "failed_recent": 0})
        == "first failure on main (passed its last 1 run)"
    )
    assert (
        record_words({**base, "recent": ["failed", "passed"], "failed_recent": 1})
        == "failed 1 of its last 2 runs on main"
    )
    since = {**base, "since": {"commit": "a" * 40, "commits": 3}, "recent": ["failed"], "failed_recent": 1}
    assert record_words(since) == "failing on main since aaaaaaaaaa (3 commits)"


def test_pause_quarantine_and_search_through_the_api(web) -> None:
    client, w, _, sha = web
    paused = client.post("/api/repositories/demo/pause", json={"reason": "outage"})
    assert paused.status_code == 200 and paused.json()["by"] == "api"
    health = client.get("/healthz").json()
    assert health["paused"]["demo"]["reason"] == "outage"
    assert 'class="paused"' in client.get("/").text and "outage" in client.get("/").text
    assert client.post("/api/repositories/nope/pause", json={}).status_code == 404
    assert client.post("/api/repositories/demo/resume").status_code == 200
    assert client.post("/api/repositories/demo/resume").status_code == 409  # not paused
    job = _failed_with_report(w)
    unknown = client.post("/api/quarantine", json={"repository": "demo", "test": "tests.nope::x", "reason": "r"})
    assert unknown.status_code == 404 and "no test" in unknown.json()["detail"]
    assert client.post("/api/quarantine", json={"repository": "demo", "test": "x"}).status_code == 422  # no reason
    added = client.post("/api/quarantine", json={"test": "tests.test_a::test_x", "reason": "flaky", "by": "dashboard"})
    assert added.status_code == 201 and added.json()["by"] == "dashboard"
    assert [e["test"] for e in client.get("/api/quarantine").json()] == ["tests.test_a::test_x"]
    assert "quarantined" in client.get("/flaky").text
    assert client.post("/api/quarantine/remove", json={"test": "tests.test_a::test_x"}).status_code == 200
    assert client.post("/api/quarantine/remove", json={"test": "tests.test_a::test_x"}).status_code == 404
    from orchestrator.results import search

    search.index(w.store, job, w.results.path(job, "output.log"), Report(None), 1)
    hits = client.get("/api/search", params={"q": "AssertionError"}).json()
    assert hits[0]["job"] == job.id and hits[0]["line"] == 3 and hits[0]["link"] == f"/jobs/{job.id}/log#L3"
    bad = client.get("/api/search", params={"q": "AssertionError: x"})
    assert bad.status_code == 422 and "search query" in bad.json()["detail"]
    page = client.get("/search", params={"q": "AssertionError: x"})
    assert page.status_code == 422 and "search query" in page.text
    found = client.get("/search", params={"q": "AssertionError"}).text
    assert f'href="/jobs/{job.id}/log#L3"' in found and "<mark>" in found
    retried = client.post(f"/api/jobs/{job.id}/retry?only=failed")
    assert retried.status_code == 202 and retried.json()["rerun"]["tests"] == ["tests.test_a::test_x"]
    assert client.post("/api/jobs/1/retry?only=everything").status_code == 422
    assert sha

"""The HTTP API with the real app and a real store (no engine needed)."""

import json
import random
from pathlib import Path

import pytest

from orchestrator.models import MAX_SUBJECT
from tests.helpers import GitRepo, Web


@pytest.fixture
def api(tmp_path: Path, repo: GitRepo):
    sha = repo.commit("root", {"tests/test_a.py": "def test_a(): pass\n"})
    web = Web(tmp_path, repo)
    web.jobs.poll()
    web.woken.clear()
    with web.client() as client:
        yield client, repo, sha, web.woken, web
    web.close()


def test_jobs_and_filters(api) -> None:
    client, _, sha, _, _ = api
    jobs = client.get("/api/jobs").json()
    assert [j["commit"] for j in jobs] == [sha] and jobs[0]["status"] == "queued"
    assert client.get("/api/jobs", params={"status": "passed"}).json() == []
    assert client.get("/api/jobs", params={"branch": "main"}).json()[0]["commit"] == sha
    assert client.get(f"/api/jobs/{jobs[0]['id']}").json()["commit"] == sha
    assert client.get("/healthz").json()["queued"] == 1


def test_submit_known_commit_wakes_dispatcher(api) -> None:
    client, repo, _, woken, _ = api
    new = repo.commit("second")
    resp = client.post("/api/commits", json={"repository": "demo", "commits": [{"sha": new, "branches": ["main"]}]})
    assert resp.status_code == 201 and resp.json()["created"] == [2] and woken == [1]
    assert client.get("/api/jobs/2").json()["trigger"] == "manual"  # a user's, not the observer's (no heads)
    again = client.post("/api/commits", json={"repository": "demo", "commits": [{"sha": new}]})
    assert again.json()["created"] == [] and again.json()["jobs"] == [2]


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("post", "/api/commits", b"{", 422),
        ("post", "/api/commits", json.dumps({"repository": "demo"}), 422),
        ("post", "/api/commits", json.dumps({"repository": "demo", "commits": [{"sha": "XYZ"}]}), 422),
        ("post", "/api/commits", json.dumps({"repository": "demo", "commits": [{"sha": "a" * 40, "extra": 1}]}), 422),
        ("post", "/api/commits", json.dumps({"repository": "nope", "commits": []}), 404),
        ("post", "/api/commits", json.dumps({"repository": "demo", "commits": [{"sha": "a" * 40}]}), 404),
        (
            "post",
            "/api/commits",
            json.dumps({"repository": "demo", "commits": [{"sha": "a" * 40, "branches": ["x\ny"]}]}),
            422,
        ),
        ("post", "/api/commits", json.dumps([1, 2, 3]), 422),
        ("get", "/api/jobs/../../etc/passwd", None, 404),
        ("get", "/api/jobs/abc", None, 422),
        ("get", "/api/jobs/-1", None, 422),
        ("get", "/api/jobs/99999999999999999999999", None, 422),
        ("get", "/api/jobs?limit=100000", None, 422),
        ("get", "/api/jobs?status=exploded", None, 422),
        ("get", "/api/repositories/..%2F..%2Fetc/heads", None, 404),
    ],
)
def test_bad_requests_are_4xx_with_a_reason(api, method, path, body, status) -> None:
    client = api[0]
    resp = client.request(method.upper(), path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status
    assert resp.json()["detail"]


def test_submit_by_revision_and_find_by_prefix(api) -> None:
    client, repo, sha, woken, _ = api
    new = repo.commit("second")
    resp = client.post("/api/jobs", json={"rev": "main"})
    assert resp.status_code == 201 and resp.json()["created"] is True and resp.json()["job"]["commit"] == new
    assert woken == [1]
    assert client.get("/api/jobs/find", params={"commit": sha[:8]}).json()["commit"] == sha
    assert client.get("/api/jobs/find", params={"commit": "ffffffff"}).status_code == 404
    assert client.get("/api/jobs/find", params={"commit": "../x"}).status_code == 422
    assert client.post("/api/jobs", json={"rev": "no-such-branch"}).status_code == 404
    assert client.post("/api/jobs", json={"rev": "main", "repository": "nope"}).status_code == 404


def test_oversized_body_is_413(api) -> None:
    client = api[0]
    resp = client.post(
        "/api/commits", content=b"[" + b"0," * (5 * 1024 * 1024) + b"0]", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413


def test_random_bodies_never_500(api) -> None:
    client = api[0]
    rng = random.Random(7)
    atoms = [None, True, 0, -1, 2**70, 1.5, "", "demo", "a" * 40, "x" * 300, "\u0000", [], {}]

    def value(depth: int = 0):
        kind = rng.random()
        if depth < 3 and kind < 0.25:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if depth < 3 and kind < 0.5:
            keys = ["repository", "commits", "heads", "sha", "branches", "subject", "zzz"]
            return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 4))}
        return rng.choice(atoms)

    for _ in range(300):
        resp = client.post("/api/commits", json=value())
        assert resp.status_code < 500, resp.text


def test_a_long_subject_is_cut_not_refused(api) -> None:
    client, repo, _, _, web = api
    new = repo.commit("y" * 3000)
    resp = client.post(
        "/api/commits",
        json={"repository": "demo", "commits": [{"sha": new, "subject": "y" * 3000}], "heads": {"main": new}},
        headers={"X-Observer-Key": web.observer_key()},
    )
    assert resp.status_code == 201
    job = client.get(f"/api/jobs/{resp.json()['jobs'][0]}").json()
    assert len(job["subject"]) == MAX_SUBJECT and job["subject"].endswith("…")


@pytest.mark.parametrize(
    "body",
    [
        b'{"repository": "\\ud800", "commits": []}',
        b'{"repository": "demo", "commits": [{"sha": "\\udfff"}]}',
        b'{"repository": "demo", "commits": [{"sha": "' + b"a" * 40 + b'", "branches": ["\\ud83d"]}]}',
        b'{"rev": "\\ud800"}',
        b'{"repository": "\xff\xfe"}',
    ],
)
def test_unpaired_surrogates_and_bad_bytes_are_a_422(api, body) -> None:
    client = api[0]
    path = "/api/jobs" if b'"rev"' in body else "/api/commits"
    resp = client.post(path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code in (400, 404, 422), resp.text
    assert resp.json()["detail"]

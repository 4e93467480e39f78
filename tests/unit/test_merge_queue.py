"""The merge queue's decisions (merge_queue.py) on real Git repositories and a real store,
with the candidates' jobs ended by hand instead of by containers (tests/integration has
the real runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import NotifyConfig, load_config
from orchestrator.dispatch.merge_queue import MergeQueue
from orchestrator.errors import MergeRefused, RepositoryError
from orchestrator.models import JobStatus, utcnow
from orchestrator.observe.mirror import Mirrors
from orchestrator.results.notify import Notifier
from orchestrator.store import Store
from tests.helpers import GitRepo, write_config


@pytest.fixture
def bed(tmp_path: Path):
    repo = GitRepo(tmp_path / "upstream")
    repo.git("config", "receive.denyCurrentBranch", "updateInstead")
    root = repo.commit("root", {"a.txt": "a\n"})
    config = load_config(write_config(tmp_path, {"demo": repo.path}, repository={"merge_queue": {"depth": 2}}))
    store = Store(config.db_path)
    mirrors = Mirrors(config.state_dir, config.repositories)
    mirrors["demo"].fetch()
    queue = MergeQueue(store, config.repositories, mirrors, store.record_commits)
    yield repo, root, store, mirrors, queue
    store.close()


def work(repo: GitRepo, name: str, files: dict[str, str], base: str = "main") -> str:
    repo.git("checkout", "-q", "-b", name, base)
    sha = repo.commit(name, files)
    repo.git("checkout", "-q", "main")
    return sha


def end(store: Store, sha: str, status: JobStatus) -> None:
    (job,) = store.of_commit("demo", sha)
    running = store.claim(job)
    store.move(running, status, finished_at=utcnow())


def step(queue: MergeQueue, mirrors: Mirrors) -> dict[str, object]:
    mirrors["demo"].fetch()
    queue.advance(force=True)
    return {m.branch: m for m in queue.store.merges.recent("demo")}


def test_depth_speculation_and_a_failure_in_the_middle(bed) -> None:
    """Three requests, depth 2: two candidates at once, the second on the first; the second
    fails first, which waits (it may be the first's fault); then the first fails, so the
    second is made again on main and the third joins. The second is asked again at a new
    head: it goes to the back, and the third's candidate, made on it and not started, is
    cancelled (no slot spent). Two that passed merge in one step, head first."""
    repo, root, store, mirrors, queue = bed
    receiver = "http://127.0.0.1:9/hook"  # nothing sends here: the deliveries stay in the outbox
    store.merges.news = Notifier(NotifyConfig(webhooks=[receiver]), store).merge_news
    shas = {name: work(repo, name, {f"{name}.txt": name}) for name in ("one", "two", "three")}
    for name, sha in shas.items():
        queue.request("demo", name, sha)
    state = step(queue, mirrors)
    assert [state[n].state for n in ("one", "two", "three")] == ["testing", "testing", "queued"]
    assert state["one"].base == root and state["two"].base == state["one"].candidate
    stale = state["two"].candidate
    end(store, stale, JobStatus.FAILED)  # behind the head: maybe one's fault, so it waits
    state = step(queue, mirrors)
    assert state["two"].state == "testing" and state["two"].candidate == stale
    end(store, state["one"].candidate, JobStatus.FAILED)
    state = step(queue, mirrors)
    assert state["one"].state == "rejected" and "failed" in state["one"].message
    assert state["two"].state == "testing" and state["two"].base == root and state["two"].candidate != stale
    assert state["three"].base == state["two"].candidate
    assert repo.head("main") == root  # nothing pushed yet
    queue.request("demo", "two", repo.head("two"))  # asked again at the same head: nothing changes
    three_before = state["three"].candidate
    repo.git("checkout", "-q", "two")
    repo.commit("more of two", {"two.txt": "two, more"})
    repo.git("checkout", "-q", "main")
    queue.request("demo", "two", repo.head("two"))  # a new head: two goes to the back
    state = step(queue, mirrors)
    assert state["three"].base == root and state["two"].base == state["three"].candidate
    assert store.of_commit("demo", three_before)[0].status is JobStatus.CANCELLED  # stale, never started
    end(store, state["two"].candidate, JobStatus.PASSED)  # behind the head: waits
    state = step(queue, mirrors)
    assert state["two"].state == "testing" and repo.head("main") == root
    end(store, state["three"].candidate, JobStatus.PASSED)
    state = step(queue, mirrors)  # the head merges, and the one behind it, passed already, follows at once
    assert state["three"].state == state["two"].state == "merged"
    assert repo.head("main") == state["two"].candidate
    assert repo.git("rev-list", "--first-parent", "main").split() == [
        state["two"].candidate,
        state["three"].candidate,
        root,
    ]
    assert not queue.busy()
    told = [(d.event, d.body["merge"]["branch"], d.key) for d in store.outbox.due(url=receiver)]
    assert told == [
        ("merge.rejected", "one", f"merge-{state['one'].id}-{shas['one'][:12]}-rejected"),
        ("merge.merged", "three", f"merge-{state['three'].id}-{shas['three'][:12]}-merged"),
        ("merge.merged", "two", f"merge-{state['two'].id}-{state['two'].sha[:12]}-merged"),
    ]


def test_a_request_asked_again_moves_to_the_back_and_drops_its_candidate(bed) -> None:
    repo, root, store, mirrors, queue = bed
    first = work(repo, "alice", {"x.txt": "1"})
    work(repo, "bob", {"y.txt": "1"})
    queue.request("demo", "alice", first)
    queue.request("demo", "bob", repo.head("bob"))
    state = step(queue, mirrors)
    old = state["alice"].candidate
    again, changed = queue.request("demo", "alice", first)
    assert not changed and again.candidate == old
    repo.git("checkout", "-q", "alice")
    newer = repo.commit("more", {"x.txt": "2"})
    repo.git("checkout", "-q", "main")
    moved, changed = queue.request("demo", "alice", newer)
    assert changed and moved.state == "queued" and moved.candidate is None and moved.sha == newer
    assert [m.branch for m in store.merges.open_requests("demo")] == ["bob", "alice"]
    state = step(queue, mirrors)
    assert state["bob"].base == root and state["alice"].base == state["bob"].candidate


def test_a_move_is_refused_when_the_request_changed_meanwhile(bed) -> None:
    repo, _root, store, mirrors, queue = bed
    sha = work(repo, "alice", {"x.txt": "1"})
    merge, _ = queue.request("demo", "alice", sha)
    assert store.merges.move(merge, "cancelled", message="by hand") is not None
    assert store.merges.move(merge, "testing", candidate="0" * 40) is None  # read before the cancel
    assert store.merges.get(merge.id).state == "cancelled"


def test_the_strategies_make_their_candidates_in_the_mirror(bed) -> None:
    """merge: a merge commit by the queue's identity; rebase: each commit replayed on the
    target, its author and message kept; fast-forward: the branch itself, refused when it
    does not contain the target; a conflict or nothing to merge refused, naming why."""
    repo, root, _store, mirrors, _queue = bed
    feature = work(repo, "feature", {"f.txt": "f"})
    repo.git("checkout", "-q", "feature")
    second = repo.commit("feature, part two", {"g.txt": "g"})
    repo.git("checkout", "-q", "main")
    moved = repo.commit("main moved on", {"m.txt": "m"})
    clash = work(repo, "clash", {"m.txt": "other"}, base=root)
    mirror = mirrors["demo"]
    mirror.fetch()
    identity = ("Queue", "queue@example.invalid")
    merged = mirror.candidate(moved, second, "merge", "Merge branch 'feature' into main", identity)
    assert mirror._run("log", "-1", "--format=%P|%an|%cn|%s", merged).strip() == (
        f"{moved} {second}|Queue|Queue|Merge branch 'feature' into main"
    )
    rebased = mirror.candidate(moved, second, "rebase", "unused", identity)
    lines = mirror._run("log", "--format=%s|%an|%cn", f"{moved}..{rebased}").splitlines()
    assert lines == ["feature, part two|Dev|Queue", "feature|Dev|Queue"]
    assert mirror._run("rev-list", "--parents", "-n1", f"{rebased}~1").split()[1:] == [moved]
    with pytest.raises(MergeRefused, match="cannot be fast-forwarded"):
        mirror.candidate(moved, second, "fast-forward", "unused", identity)
    assert mirror.candidate(root, second, "fast-forward", "unused", identity) == second
    for strategy in ("merge", "rebase"):
        with pytest.raises(MergeRefused, match="conflicts with the target in m.txt"):
            mirror.candidate(moved, clash, strategy, "unused", identity)
    with pytest.raises(MergeRefused, match="nothing to merge"):
        mirror.candidate(moved, root, "merge", "unused", identity)
    assert feature != second


def test_a_request_whose_commit_is_gone_is_rejected_and_the_queue_goes_on(bed) -> None:
    repo, root, _store, mirrors, queue = bed
    queue.request("demo", "vanished", "f" * 40)  # as a branch force-pushed away would leave it
    queue.request("demo", "alice", work(repo, "alice", {"x.txt": "1"}))
    state = step(queue, mirrors)
    assert state["vanished"].state == "rejected"
    assert state["vanished"].message == "its commit ffffffffffff is no longer in the repository"
    assert state["alice"].state == "testing" and state["alice"].base == root


def test_a_request_git_cannot_make_a_candidate_of_is_rejected_not_retried_forever(bed, monkeypatch) -> None:
    """Its commits are data git refuses to build on (a malformed author written with
    plumbing, say): the request is rejected with git's reason and the next one goes on."""
    repo, root, _store, mirrors, queue = bed
    queue.request("demo", "odd", work(repo, "odd", {"o.txt": "1"}))
    queue.request("demo", "alice", work(repo, "alice", {"x.txt": "1"}))
    made = mirrors["demo"].candidate

    def refuse_odd(base: str, head: str, *args: object) -> str:
        if head == repo.head("odd"):
            raise RepositoryError("git commit-tree failed in demo: fatal: malformed ident")
        return made(base, head, *args)

    monkeypatch.setattr(mirrors["demo"], "candidate", refuse_odd)
    state = step(queue, mirrors)
    assert state["odd"].state == "rejected" and "malformed ident" in state["odd"].message
    assert state["alice"].state == "testing" and state["alice"].base == root

"""The observer against real Git repositories and a real store."""

import subprocess
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.models import MAX_SUBJECT
from orchestrator.store import Store
from tests import fakes
from tests.helpers import GitRepo, write_config


@pytest.fixture
def world(tmp_path: Path, repo: GitRepo):
    repo.commit("root", {"tests/test_a.py": "def test_a(): pass\n"})
    config = load_config(write_config(tmp_path, {"demo": repo.path}))
    store = Store(config.db_path)
    yield repo, store, fakes.observer(config, store)
    store.close()


def queued(store: Store) -> list[tuple[str, tuple[str, ...]]]:
    return [(j.commit, j.branches) for j in reversed(store.list_jobs(limit=1000))]


def test_first_sight_tests_only_the_heads(world) -> None:
    repo, store, observer = world
    repo.commit("second")
    third = repo.commit("third")
    repo.checkout("other", create=True)
    other = repo.commit("other work")
    assert observer.poll_once() == 2
    assert sorted(queued(store)) == sorted([(third, ("main",)), (other, ("other",))])
    assert observer.poll_once() == 0  # nothing new: nothing queued again


def test_every_new_commit_oldest_first(world) -> None:
    repo, store, observer = world
    observer.poll_once()
    shas = [repo.commit(f"c{i}") for i in range(4)]
    assert observer.poll_once() == 4
    assert [sha for sha, _ in queued(store)[1:]] == shas
    assert store.get(2).subject == "c0"


def test_restart_neither_retests_nor_skips(world, tmp_path: Path) -> None:
    repo, store, observer = world
    observer.poll_once()
    new = repo.commit("while down")
    config = load_config(tmp_path / "config.yaml")
    fresh = fakes.observer(config, Store(config.db_path))  # a new process, same state
    assert fresh.poll_once() == 1
    assert queued(store)[-1][0] == new
    assert fresh.poll_once() == 0


def test_shared_commits_list_every_branch(world) -> None:
    repo, store, observer = world
    observer.poll_once()
    repo.checkout("a", create=True)
    shared = repo.commit("shared")
    repo.checkout("b", create=True)
    only_b = repo.commit("only on b")
    observer.poll_once()
    jobs = dict(queued(store))
    assert jobs[shared] == ("a", "b") and jobs[only_b] == ("b",)


def test_branch_at_known_commit_adds_its_name(world) -> None:
    repo, store, observer = world
    observer.poll_once()
    head = repo.head()
    repo.git("branch", "release")
    assert observer.poll_once() == 1  # the commit gains a branch, no new job
    assert dict(queued(store))[head] == ("main", "release")
    assert len(store.list_jobs()) == 1


def test_merge_queues_the_merged_commits_and_the_merge(world) -> None:
    repo, store, observer = world
    observer.poll_once()
    repo.checkout("feature", create=True)
    feat = repo.commit("feature work")
    observer.poll_once()
    repo.checkout("main")
    main_work = repo.commit("main work")
    repo.git("merge", "-q", "--no-ff", "-m", "merge feature", "feature")
    merge = repo.head()
    observer.poll_once()
    jobs = dict(queued(store))
    assert len(jobs) == 4  # root, feature work, main work, merge: each once
    assert jobs[feat] == ("feature",)  # tested when first seen; main merged it later
    assert [s for s, _ in queued(store)][-2:] == [main_work, merge]
    assert jobs[merge] == ("main",)


def test_force_push_tests_the_rewritten_commits(world) -> None:
    repo, store, observer = world
    base = repo.head()
    repo.commit("to be rewritten")
    observer.poll_once()
    repo.git("reset", "-q", "--hard", base)
    rewritten = [repo.commit("rewritten 1"), repo.commit("rewritten 2")]
    observer.poll_once()
    assert [s for s, _ in queued(store)][-2:] == rewritten


def test_deleted_branch_is_dropped(world) -> None:
    repo, store, observer = world
    repo.checkout("gone", create=True)
    repo.commit("on gone")
    observer.poll_once()
    repo.checkout("main")
    repo.git("branch", "-D", "gone")
    observer.poll_once()
    assert set(store.heads("demo")) == {"main"}


def test_untracked_branches_are_ignored(tmp_path: Path, repo: GitRepo) -> None:
    repo.commit("root")
    repo.checkout("wip/x", create=True)
    repo.commit("wip")
    path = write_config(tmp_path, {"demo": repo.path})
    path.write_text(path.read_text().replace(f"url: {repo.path}", f"url: {repo.path}\n  branches: [main, 'release/*']"))
    config = load_config(path)
    store = Store(config.db_path)
    fakes.observer(config, store).poll_once()
    assert [j.branches for j in store.list_jobs()] == [("main",)]


def test_hostile_branch_names_are_only_data(world, tmp_path: Path) -> None:
    repo, store, observer = world
    observer.poll_once()
    names = ["x;touch${IFS}pwned", "ünïcødé/ветка", "$(touch${IFS}pwned)", "a" * 200, "we'ird\"quote|&>"]
    for name in names:
        repo.git("branch", name)
    repo.checkout(names[0])
    sha = repo.commit("hostile")
    observer.poll_once()
    assert dict(queued(store))[sha] == (names[0],)
    assert set(store.heads("demo")) == {"main", *names}
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_unreachable_repository_backs_off_and_catches_up(world, tmp_path: Path, caplog) -> None:
    repo, store, observer = world
    observer.poll_once()
    moved = repo.path.with_name("moved")
    repo.path.rename(moved)
    assert observer.poll_once() == 0
    assert "retrying in" in caplog.text
    moved.rename(repo.path)
    made = [repo.commit("while unreachable 1"), repo.commit("while unreachable 2")]
    observer._retry_at.clear()  # skip the wait of the back-off
    assert observer.poll_once() == 2
    assert [s for s, _ in queued(store)][-2:] == made


LINE_BREAKS = "\u2028, \x0c, \x85, \x1c and \r"  # what str.splitlines() takes for line ends


@pytest.fixture
def two(tmp_path: Path):
    """Two repositories, "bad" and "good", each with a root commit, watched together."""
    bad, good = GitRepo(tmp_path / "bad"), GitRepo(tmp_path / "good")
    bad.commit("root")
    good.commit("root")
    config = load_config(write_config(tmp_path, {"bad": bad.path, "good": good.path}))
    store = Store(config.db_path)
    yield bad, good, store, fakes.observer(config, store)
    store.close()


def test_a_hostile_commit_never_stops_the_watcher(two) -> None:
    """Line-break characters in a subject and a branch name, and a branch name that is not
    UTF-8: the commits are queued, the bad branch skipped, the other repository polled."""
    bad, good, store, observer = two
    assert observer.poll_once() == 2
    subject = f"breaks: {LINE_BREAKS} end"
    weird = bad.commit(subject)
    bad.git("branch", "feature\u2028two")
    subprocess.run([b"git", b"update-ref", b"refs/heads/not-utf8-\xff\xfe", weird.encode()], cwd=bad.path, check=True)
    later = good.commit("after")
    assert observer.poll_once() == 2
    assert store.find(weird, "bad").subject == subject
    assert "feature\u2028two" in store.heads("bad") and len(store.heads("bad")) == 2  # main and feature
    assert store.find(later, "good").branches == ("main",)
    assert observer.health()["bad"].ok and observer.poll_once() == 0


def test_an_unexpected_error_in_one_repository_is_its_state_not_the_end(two, caplog) -> None:
    _, _, _, observer = two
    observer.mirrors["bad"].branches = lambda: 1 / 0  # a bug, or a library error nobody expected
    assert observer.poll_once() == 1  # the good one
    state = observer.health()["bad"]
    assert not state.ok and "ZeroDivisionError" in state.error and observer.failures["bad"] == 1
    assert "bad: " in caplog.text


def test_a_subject_is_cut_where_it_is_read(world) -> None:
    repo, store, observer = world
    observer.poll_once()
    sha = repo.commit("x" * 5000 + "\n\nbody")
    observer.poll_once()
    assert store.find(sha).subject == "x" * (MAX_SUBJECT - 1) + "…"


def test_nothing_is_fetched_while_the_heads_stay_where_they_were_delivered(world, monkeypatch) -> None:
    """The cheap check: the repository's heads are asked first (no objects); only a moved
    head, a new or a deleted branch makes it fetch. Many repositories are polled side by side."""
    from orchestrator.observe.mirror import Mirror

    repo, store, observer = world
    fetched: list[str] = []
    fetch = Mirror.fetch
    monkeypatch.setattr(Mirror, "fetch", lambda self: (fetched.append(self.path.name), fetch(self))[1])
    assert observer.poll_once() == 1 and len(fetched) == 1
    assert observer.poll_once() == 0 and observer.poll_once() == 0 and len(fetched) == 1
    new = repo.commit("moved")
    assert observer.poll_once() == 1 and len(fetched) == 2 and queued(store)[-1][0] == new
    repo.checkout("side", create=True)
    assert observer.poll_once() == 1 and len(fetched) == 3  # a new branch at a known commit gets its job
    repo.git("branch", "-D", "main")
    assert observer.poll_once() == 0 and len(fetched) == 4  # a deleted branch is a change too
    assert store.heads("demo") == {"side": new}


def test_many_repositories_are_polled_side_by_side(tmp_path: Path) -> None:
    repos = {}
    for i in range(12):
        r = GitRepo(tmp_path / f"r{i}")
        r.commit("root", {"tests/test_a.py": "def test_a(): pass\n"})
        repos[f"r{i}"] = r
    config = load_config(write_config(tmp_path, {name: r.path for name, r in repos.items()}))
    store = Store(config.db_path)
    try:
        observer = fakes.observer(config, store)
        assert observer.poll_once() == 12
        shas = {name: r.commit("next") for name, r in list(repos.items())[::3]}
        assert observer.poll_once() == 4
        assert {(j.repository, j.commit) for j in store.list_jobs(limit=100) if j.subject == "next"} == set(
            shas.items()
        )
    finally:
        store.close()


def test_a_repository_on_this_machine_is_looked_at_with_stat_alone_until_it_moves(world, monkeypatch) -> None:
    """The watching loop reads a local repository's refs with stat: no git at all while
    nothing moves; a push is seen at the next look; a poll that failed is tried again after
    its back-off though the refs did not move."""
    from orchestrator.observe.mirror import Mirror

    repo, store, observer = world
    asked: list[str] = []
    remote_heads, fetch = Mirror.remote_heads, Mirror.fetch
    monkeypatch.setattr(Mirror, "remote_heads", lambda self: (asked.append("ls-remote"), remote_heads(self))[1])
    monkeypatch.setattr(Mirror, "fetch", lambda self: (asked.append("fetch"), fetch(self))[1])
    assert observer.watch_once() == 1 and asked == ["fetch"]
    assert observer.watch_once() == 0 and observer.watch_once() == 0 and asked == ["fetch"]  # stat only
    new = repo.commit("pushed")
    assert observer.watch_once() == 1 and queued(store)[-1][0] == new
    assert asked == ["fetch", "ls-remote", "fetch"]

    def broken(self):
        raise OSError("disk on fire")

    repo.commit("while broken")
    monkeypatch.setattr(Mirror, "fetch", broken)
    assert observer.watch_once() == 0  # failed: backing off
    monkeypatch.setattr(Mirror, "fetch", fetch)
    observer._retry_at.clear()  # the back-off is over
    assert observer.watch_once() == 1  # looked at again though its refs did not move since

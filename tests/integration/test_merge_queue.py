"""The merge queue on real Git repositories (pushed to for real) and the real engine: the
target only ever moves to a candidate whose job passed."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from orchestrator.faults import CRASH_AT
from tests.helpers import PASSING

SLOW = "import time\n\ndef test_slow():\n    time.sleep({seconds})\n"


def queue_repo(orch, **queue) -> str:
    """The upstream takes pushes to its checked-out main (its work tree follows) and logs
    every move of its refs; main holds one passing test. Its root commit."""
    orch.repo.git("config", "receive.denyCurrentBranch", "updateInstead")
    orch.repo.git("config", "core.logAllRefUpdates", "always")
    root = orch.repo.commit("root", PASSING)
    orch.configure(runner={"parallelism": 2}, repository={"merge_queue": {"target": "main", **queue}})
    return root


def branch(orch, name: str, files: dict[str, str], base: str = "main") -> str:
    orch.repo.git("checkout", "-q", "-b", name, base)
    sha = orch.repo.commit(f"work on {name}", files)
    orch.repo.git("checkout", "-q", "main")
    return sha


def merges(orch) -> dict[str, dict]:
    listed = orch.cli("merges", "--json")
    assert listed.returncode == 0, listed.stderr
    return {m["branch"]: m for m in json.loads(listed.stdout)}


def in_mirror(orch, *args: str) -> str:
    """Git in the orchestrator's mirror, where the candidates are made."""
    mirror = orch.config.state_dir / "mirrors" / orch.name
    return subprocess.run(
        ["git", "--git-dir", str(mirror), *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def main_moves(orch) -> list[str]:
    """Every commit main of the upstream was at, oldest first (its reflog)."""
    return list(reversed(orch.repo.git("reflog", "show", "--format=%H", "refs/heads/main").split()))


def test_passing_requests_merge_a_failing_one_and_a_conflict_are_rejected(orch) -> None:
    """Three requests, depth 2: alice's passes and is merged (a merge commit of main and
    her branch, pushed); bob's, tested at once on top of alice's candidate, fails and is
    rejected; carol's conflicts with alice's and is rejected untested. main only ever
    moved to commits whose jobs passed, and the merged candidate was tested once."""
    root = queue_repo(orch, depth=2)
    alice = branch(orch, "alice", {"shared.txt": "alice\n", "tests/test_alice.py": "def test_a():\n    pass\n"})
    bob = branch(orch, "bob", {"tests/test_bob.py": "def test_b():\n    assert False, 'bob broke it'\n"})
    branch(orch, "carol", {"shared.txt": "carol\n"})
    for name in ("alice", "bob", "carol"):
        asked = orch.cli("merge", name)
        assert asked.returncode == 0 and "queued: merge request" in asked.stdout, asked.stderr
    again = orch.cli("merge", "alice")
    assert again.returncode == 0 and "already queued" in again.stdout
    run = orch.cli("run", "--once", timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]  # bob's candidate failed
    found = merges(orch)
    assert found["alice"]["state"] == "merged", found
    assert found["bob"]["state"] == "rejected" and "failed" in found["bob"]["message"], found["bob"]
    assert found["bob"]["message"].endswith("failing: tests.test_bob::test_b"), found["bob"]
    assert found["carol"]["state"] == "rejected", found["carol"]
    assert found["carol"]["message"] == "conflicts with main in shared.txt" and found["carol"]["job_id"] is None
    merged = found["alice"]["candidate"]
    assert orch.repo.head("main") == merged
    assert orch.repo.git("rev-list", "--parents", "-n1", merged).split()[1:] == [root, alice]
    assert orch.repo.git("log", "-1", "--format=%s|%cn", merged) == "Merge branch 'alice' into main|orchestrator"
    # bob was tested on top of alice's candidate, and never reached main
    bob_candidate = found["bob"]["candidate"]
    assert found["bob"]["base"] == merged and bob_candidate not in main_moves(orch)
    assert in_mirror(orch, "rev-list", "--parents", "-n1", bob_candidate).split()[1:] == [merged, bob]
    assert orch.result(bob_candidate)["status"] == "failed"
    for sha in main_moves(orch):  # never a red main
        assert sha in (root, merged) and orch.result(sha)["status"] == "passed"
    # the observer then sees main at the candidate: tested once, not again
    assert orch.cli("run", "--once", timeout=120).returncode == 0
    status = json.loads(orch.cli("status", "--json").stdout)
    assert [j["commit"] for j in status].count(merged) == 1


def test_a_target_moved_by_a_direct_push_makes_the_candidate_again(orch) -> None:
    """A push straight to main while alice's candidate is tested: the push of the stale
    candidate is never made; alice is tested again on where main is now, then merged on it."""
    queue_repo(orch, depth=2)
    alice = branch(orch, "alice", {"tests/test_alice.py": SLOW.format(seconds=6)})
    assert orch.cli("merge", "alice").returncode == 0
    proc = orch.start("run", "--once")
    first = orch.wait_for(lambda: (m := merges(orch).get("alice")) and m["state"] == "testing" and m, timeout=120)
    direct = orch.repo.commit("a fix pushed straight to main", {"fix.txt": "fixed\n"})
    stderr = orch.ended(proc, timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    done = merges(orch)["alice"]
    assert done["state"] == "merged" and done["candidate"] != first["candidate"], done
    assert orch.repo.head("main") == done["candidate"]
    assert orch.repo.git("rev-list", "--parents", "-n1", done["candidate"]).split()[1:] == [direct, alice]
    assert first["candidate"] not in main_moves(orch)


@pytest.mark.parametrize("point", ["merge-before-push", "merge-after-push"])
def test_killed_around_the_push_the_request_is_merged_once(orch, point: str) -> None:
    """A request made by pushing a ``merge/*`` branch; the dispatcher killed -9 just
    before, or just after, moving main to its candidate. The next start asks the
    repository where main is: the request is merged, once, and main moved once."""
    root = queue_repo(orch, strategy="fast-forward")
    feature = branch(orch, "merge/feature", {"tests/test_feature.py": "def test_f():\n    pass\n"})
    killed = orch.cli("run", "--once", timeout=300, env={CRASH_AT: point})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert merges(orch)["merge/feature"]["state"] == "merging"
    assert orch.repo.head("main") == (root if point == "merge-before-push" else feature)
    again = orch.cli("run", "--once", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    done = merges(orch)["merge/feature"]
    assert done["state"] == "merged" and done["candidate"] == feature  # a fast-forward: the branch itself
    assert orch.repo.head("main") == feature
    assert main_moves(orch) == [root, feature]
    assert orch.result(feature)["status"] == "passed"


def test_a_request_asked_again_after_a_push_goes_to_the_back_at_its_new_head(orch) -> None:
    """With the rebase strategy: alice asked for, then pushed again and asked again, goes
    behind bob at her new head; bob cancelled; alice's two commits land on main replayed,
    their author kept, the queue's identity their committer."""
    root = queue_repo(orch, strategy="rebase")
    branch(orch, "alice", {"a.txt": "1\n"})
    branch(orch, "bob", {"b.txt": "1\n"})
    assert orch.cli("merge", "alice").returncode == 0
    assert orch.cli("merge", "bob").returncode == 0
    orch.repo.git("checkout", "-q", "alice")
    newer = orch.repo.commit("more of alice", {"a.txt": "2\n"})
    orch.repo.git("checkout", "-q", "main")
    asked = orch.cli("merge", "alice")
    assert asked.returncode == 0 and "queued" in asked.stdout and newer[:12] in asked.stdout
    listed = json.loads(orch.cli("merges", "--json").stdout)
    assert [m["branch"] for m in listed] == ["bob", "alice"]  # alice went to the back
    assert listed[1]["sha"] == newer and "back to the end of the queue" in listed[1]["message"]
    refused = orch.cli("merge", "nobody")
    assert refused.returncode != 0 and "no branch 'nobody' to merge" in refused.stderr
    wrong = orch.cli("merge", "alice", "--into", "release")
    assert wrong.returncode == 2 and "merges into main, not 'release'" in wrong.stderr
    cancelled = orch.cli("merge", "bob", "--cancel")
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert json.loads(orch.cli("merges", "--json").stdout)[0]["branch"] == "alice"
    started = time.monotonic()
    assert orch.cli("run", "--once", timeout=300).returncode == 0
    assert merges(orch)["alice"]["state"] == "merged" and time.monotonic() - started < 300
    history = orch.repo.git("log", "--format=%P|%s|%an|%cn", "main").splitlines()
    assert [line.split("|", 1)[1] for line in history] == [
        "more of alice|Dev|orchestrator",
        "work on alice|Dev|orchestrator",
        "root|Dev|Dev",
    ]
    assert all(len(line.split("|")[0].split()) <= 1 for line in history)  # linear: no merge commit
    assert orch.repo.git("rev-parse", "main~2") == root

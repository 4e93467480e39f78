"""What a user may type: every command, its arguments and their defaults (the client's
variables, protocol.SERVER and protocol.TOKEN, among them), each value checked as it is read
(a Python that is not offered, a date that is not one: a usage error naming it)."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

from orchestrator import pythons
from runner_image import orchestrator_protocol as protocol


def _python_name(value: str) -> str:
    try:
        return pythons.named(value)
    except pythons.NotOffered as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description="Test every new commit in its own container.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _processes(sub)
    _job_commands(sub)
    _operator_commands(sub)
    return parser


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str, remote: bool = False
) -> argparse.ArgumentParser:
    """A command's parser, with -c and (``remote``: it may act through a dispatcher's API)
    --server and --token."""
    p = sub.add_parser(name, help=help_, description=help_)
    if name == "quarantine":  # its actions take the options (a default here would undo theirs)
        return p
    written = " to write" if name == "init" else ""
    p.add_argument("-c", "--config", default="config.yaml", help=f"config file{written} (default ./config.yaml)")
    if remote:
        p.add_argument(
            "--server",
            metavar="URL",
            default=os.environ.get(protocol.SERVER),
            help=f"a dispatcher's address (default: ${protocol.SERVER}, dispatcher.url, else this machine's "
            "state_dir); no local config is needed then",
        )
        p.add_argument(
            "--token",
            default=os.environ.get(protocol.TOKEN),
            help=f"the dispatcher's api token (default: ${protocol.TOKEN}, else the local config's api_token)",
        )
    return p


def _processes(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that run a process, or prepare one."""
    p = _command(sub, "init", "write a commented config.yaml for a repository (default: the one here)")
    p.add_argument("source", nargs="?", default=".", metavar="PATH-OR-URL", help="a repository's folder or URL")
    p = _command(sub, "run", "observe, dispatch and serve the API in one process")
    p.add_argument("--once", action="store_true", help="test what is new and queued, print a summary, exit")
    q = _command(sub, "dispatcher", "run the dispatcher and its HTTP API only")
    for serving in (p, q):
        serving.add_argument("--name", help="this dispatcher's name among those sharing store.url (dispatcher.name)")
        serving.add_argument("--port", type=int, help="its API's port (dispatcher.port)")
    p = _command(sub, "observer", "watch the repositories and post new commits to a dispatcher")
    p.add_argument("--dispatcher-server", default="localhost:8888", metavar="HOST:PORT")
    p = _command(sub, "image", "build the runner images, or prune environment images")
    p.add_argument("action", choices=["build", "prune"])
    p.add_argument(
        "--python",
        action="append",
        default=[],
        type=_python_name,
        metavar="VERSION",
        help="build: the runner image of this Python, once per --python, instead of those the repositories use",
    )
    p.add_argument(
        "--refresh-base",
        action="store_true",
        help="build: build the local Debian bases again (a testing release's moves on; its base is pinned until then)",
    )
    p.add_argument(
        "--keep",
        type=int,
        default=1,
        metavar="N",
        help="prune: environment images kept per repository, newest first (default 1)",
    )
    p.add_argument("--repo", help="prune: only this repository's environment images (default: every repository's)")
    p = _command(sub, "store", "the store: `store migrate` copies the SQLite file into store.url's PostgreSQL")
    p.add_argument("action", choices=["migrate"])


def _job_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that read or act on jobs, here or through a dispatcher's API."""
    p = _command(sub, "status", "recent jobs as a table", remote=True)
    p.add_argument("--repo")
    p.add_argument("--json", action="store_true", help="print a JSON array of job objects")
    p.add_argument("--limit", type=int, default=30)
    p = _command(sub, "logs", "a commit's container log", remote=True)
    p.add_argument("sha", metavar="SHA")
    p.add_argument("--repo")
    p.add_argument("-f", "--follow", action="store_true", help="follow a running container live")
    p.add_argument("--shard", type=int, metavar="K", help="one shard's log, of a suite split across containers")
    p.add_argument(
        "--python",
        metavar="V",
        help="the commit's variant on this Python (default: the first failing)",
    )
    p = _command(sub, "submit", "queue a commit by hand", remote=True)
    p.add_argument("rev", metavar="REV")
    p.add_argument("--repo")
    p = _command(sub, "bisections", "recent bisections: the range, where each is, the culprit it named", remote=True)
    p.add_argument("--repo")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = _command(sub, "merge", "ask for a branch to be merged by the merge queue, tested merged first", remote=True)
    p.add_argument("branch", metavar="BRANCH")
    p.add_argument("--into", metavar="TARGET", help="the target (it must be the merge queue's own)")
    p.add_argument("--repo")
    p.add_argument("--cancel", action="store_true", help="take the branch's open request out of the queue")
    p = _command(sub, "merges", "the merge queue: open requests in order, then the ended ones", remote=True)
    p.add_argument("--repo")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = _command(sub, "poll", "fetch now and queue every new commit (what the post-receive hook runs)", remote=True)
    p.add_argument("--repo", help="only this repository")
    for name, help_ in (
        ("retry", "test a finished commit again, as a new attempt"),
        ("cancel", "cancel a queued or running job"),
    ):
        p = _command(sub, name, help_, remote=True)
        p.add_argument("sha", metavar="SHA")
        p.add_argument("--repo")
        p.add_argument("--python", metavar="V", help="only the commit's variant on this Python")
        if name == "retry":
            p.add_argument("--failed", action="store_true", help="re-run only the tests that failed")


def _operator_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """An operator's controls: pause, quarantine, search."""
    p = _command(
        sub, "pause", "start nothing of a repository until it is resumed (still observed and queued)", remote=True
    )
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--reason", default="", help="what the dashboard and /healthz say")
    p = _command(sub, "resume", "let a paused repository's queued jobs start", remote=True)
    p.add_argument("repo", metavar="REPO")
    p = _command(sub, "quarantine", "tests whose failures do not fail their jobs (still run and recorded)", remote=True)
    action = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = _command(action, "add", "quarantine a test", remote=True)
    q.add_argument("repo", metavar="REPO")
    q.add_argument("test", metavar="TEST_ID", help="as the test history names it: module.Class::test_name")
    q.add_argument("--reason", required=True)
    q.add_argument("--until", type=_date, metavar="DATE", help="when it ends (default: quarantine.days from now)")
    q = _command(action, "remove", "end a test's quarantine", remote=True)
    q.add_argument("repo", metavar="REPO")
    q.add_argument("test", metavar="TEST_ID")
    q = _command(action, "list", "the tests in quarantine now", remote=True)
    q.add_argument("--repo")
    q.add_argument("--json", action="store_true", help="print a JSON array")
    p = _command(sub, "search", "search every job's log, failing tests and reasons", remote=True)
    p.add_argument("query", metavar="TEXT", help='words, "a phrase", OR, NOT, prefix* (SQLite FTS5\'s syntax)')
    p.add_argument("--repo")
    p.add_argument("--since", type=_date, metavar="DATE", help="only jobs finished since (YYYY-MM-DD or ISO time)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print a JSON array of hits")


def _date(value: str) -> datetime:
    """A date or a time, as a user types it (no zone: UTC)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a date (YYYY-MM-DD) or ISO time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

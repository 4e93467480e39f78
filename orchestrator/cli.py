"""The ``orchestrator`` command. Errors end here as one line and an exit status:
0 success, 1 a tested commit failed / errored / timed out, 2 bad usage or configuration,
3 the operation itself failed.

Commands that act on jobs go through ``jobs.py``: on the local state_dir, or, with
``--server URL`` (or ``dispatcher.url`` in the config), through the HTTP API of a
dispatcher on another machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator import pythons
from orchestrator.config import Config, client_settings, load_config
from orchestrator.errors import OrchestratorError, RepositoryError, UsageError

if TYPE_CHECKING:  # the commands import what they use when they run: start-up stays short
    from orchestrator.backends.base import Backend
    from orchestrator.jobs import JobRef, Jobs

log = logging.getLogger("orchestrator")

SERVER_VARIABLE, TOKEN_VARIABLE = "ORCHESTRATOR_SERVER", "ORCHESTRATOR_TOKEN"
ONCE_ENGINE_PATIENCE = 120.0  # seconds `run --once` waits for an engine that went away


def _python_name(value: str) -> str:
    try:
        return pythons.named(value)
    except pythons.NotOffered as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description="Test every new commit in its own container.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_: str, remote: bool = False, within: argparse._SubParsersAction | None = None
    ) -> argparse.ArgumentParser:
        p = (within or sub).add_parser(name, help=help_, description=help_)
        if name == "quarantine":  # its actions take the options (a default here would undo theirs)
            return p
        p.add_argument("-c", "--config", default="config.yaml", help="config file (default ./config.yaml)")
        if remote:
            p.add_argument(
                "--server",
                metavar="URL",
                default=os.environ.get(SERVER_VARIABLE),
                help=f"a dispatcher's address (default: ${SERVER_VARIABLE}, dispatcher.url, else this machine's "
                "state_dir); no local config is needed then",
            )
            p.add_argument(
                "--token",
                default=os.environ.get(TOKEN_VARIABLE),
                help=f"the dispatcher's api token (default: ${TOKEN_VARIABLE}, else the local config's api_token)",
            )
        return p

    p = command("run", "observe, dispatch and serve the API in one process")
    p.add_argument("--once", action="store_true", help="test what is new and queued, print a summary, exit")
    q = command("dispatcher", "run the dispatcher and its HTTP API only")
    for serving in (p, q):
        serving.add_argument("--name", help="this dispatcher's name among those sharing store.url (dispatcher.name)")
        serving.add_argument("--port", type=int, help="its API's port (dispatcher.port)")
    p = command("observer", "watch the repositories and post new commits to a dispatcher")
    p.add_argument("--dispatcher-server", default="localhost:8888", metavar="HOST:PORT")
    p = command("image", "build the runner images, or prune environment images")
    p.add_argument("action", choices=["build", "prune"])
    p.add_argument(
        "--python",
        action="append",
        default=[],
        type=_python_name,
        metavar="VERSION",
        help="build: also the runner image of this Python (default: the ones the repositories use)",
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
    p = command("store", "the store: `store migrate` copies the SQLite file into store.url's PostgreSQL")
    p.add_argument("action", choices=["migrate"])
    p = command("status", "recent jobs as a table", remote=True)
    p.add_argument("--repo")
    p.add_argument("--json", action="store_true", help="print a JSON array of job objects")
    p.add_argument("--limit", type=int, default=30)
    p = command("logs", "a commit's container log", remote=True)
    p.add_argument("sha", metavar="SHA")
    p.add_argument("--repo")
    p.add_argument("-f", "--follow", action="store_true", help="follow a running container live")
    p.add_argument("--shard", type=int, metavar="K", help="one shard's log, of a suite split across containers")
    p.add_argument(
        "--python",
        metavar="V",
        help="the commit's variant on this Python (default: the first failing)",
    )
    p = command("submit", "queue a commit by hand", remote=True)
    p.add_argument("rev", metavar="REV")
    p.add_argument("--repo")
    p = command("bisections", "recent bisections: the range, where each is, the culprit it named", remote=True)
    p.add_argument("--repo")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = command("merge", "ask for a branch to be merged by the merge queue, tested merged first", remote=True)
    p.add_argument("branch", metavar="BRANCH")
    p.add_argument("--into", metavar="TARGET", help="the target (it must be the merge queue's own)")
    p.add_argument("--repo")
    p.add_argument("--cancel", action="store_true", help="take the branch's open request out of the queue")
    p = command("merges", "the merge queue: open requests in order, then the ended ones", remote=True)
    p.add_argument("--repo")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = command("poll", "fetch now and queue every new commit (what the post-receive hook runs)", remote=True)
    p.add_argument("--repo", help="only this repository")
    for name, help_ in (
        ("retry", "test a finished commit again, as a new attempt"),
        ("cancel", "cancel a queued or running job"),
    ):
        p = command(name, help_, remote=True)
        p.add_argument("sha", metavar="SHA")
        p.add_argument("--repo")
        p.add_argument("--python", metavar="V", help="only the commit's variant on this Python")
        if name == "retry":
            p.add_argument("--failed", action="store_true", help="re-run only the tests that failed")
    p = command("pause", "start nothing of a repository until it is resumed (still observed and queued)", remote=True)
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--reason", default="", help="what the dashboard and /healthz say")
    p = command("resume", "let a paused repository's queued jobs start", remote=True)
    p.add_argument("repo", metavar="REPO")
    p = command("quarantine", "tests whose failures do not fail their jobs (still run and recorded)", remote=True)
    action = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = command("add", "quarantine a test", remote=True, within=action)
    q.add_argument("repo", metavar="REPO")
    q.add_argument("test", metavar="TEST_ID", help="as the test history names it: module.Class::test_name")
    q.add_argument("--reason", required=True)
    q.add_argument("--until", type=_date, metavar="DATE", help="when it ends (default: quarantine.days from now)")
    q = command("remove", "end a test's quarantine", remote=True, within=action)
    q.add_argument("repo", metavar="REPO")
    q.add_argument("test", metavar="TEST_ID")
    q = command("list", "the tests in quarantine now", remote=True, within=action)
    q.add_argument("--repo")
    q.add_argument("--json", action="store_true", help="print a JSON array")
    p = command("search", "search every job's log, failing tests and reasons", remote=True)
    p.add_argument("query", metavar="TEXT", help='words, "a phrase", OR, NOT, prefix* (SQLite FTS5\'s syntax)')
    p.add_argument("--repo")
    p.add_argument("--since", type=_date, metavar="DATE", help="only jobs finished since (YYYY-MM-DD or ISO time)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print a JSON array of hits")
    return parser


def _date(value: str) -> datetime:
    """A date or a time, as a user types it (no zone: UTC)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a date (YYYY-MM-DD) or ISO time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    try:
        remote = _remote(args)
        if remote is not None:  # a dispatcher elsewhere: nothing of a local config is needed
            args.remote = remote
            return COMMANDS[args.command](None, args)
        config = load_config(args.config)
        return COMMANDS[args.command](config, args)
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


# -- long-running commands ----------------------------------------------------------------


def cmd_run(config: Config, args: argparse.Namespace) -> int:

    from orchestrator.console import print_jobs
    from orchestrator.jobs import JobRef
    from orchestrator.live_view import live_view
    from orchestrator.service import Services, stop_on_signals

    stop = stop_on_signals()
    with Services(config, args.name, args.port) as services:
        dispatcher, observer = services.dispatcher, services.observer
        if args.once:
            if services.leadership is not None and not _wait_active(services, stop):
                return 130
            dispatcher.step()  # recovers first, so an earlier process's jobs are collected
            observer.poll_once()  # new commits are queued durably even if the engine is away
            if dispatcher.engine_error is not None:
                raise dispatcher.engine_error
            dispatcher.run(stop, until_idle=True, give_up_after=ONCE_ENGINE_PATIENCE)
            if stop.is_set():
                return 130
            documents = [services.jobs.show(JobRef(id=i)) for i in sorted(dispatcher.touched)]
            print_jobs(documents)
            unfetched = {name: s.error for name, s in observer.health().items() if not s.ok}
            if unfetched:  # what it could not see, it could not test: not a success
                raise RepositoryError("; ".join(f"{name}: {error}" for name, error in unfetched.items()))
            unfinished = [d for d in documents if d["status"] in ("queued", "running")]
            for d in unfinished:  # never a success while a job it took is not final
                log.error(
                    "job %s (%s) is still %s: it was not finished by this run", d["id"], d["commit"][:12], d["status"]
                )
            return 1 if unfinished or any(d["status"] in ("failed", "error", "timed_out") for d in documents) else 0
        services.serve_api()
        with live_view(services.store):  # in a terminal; piped, plain log lines
            services.run(stop)
    return 0


def _wait_active(services, stop) -> bool:
    """`run --once` on a shared store: it takes the lease (waiting for an active one to let
    it go), and gives it up when it ends."""
    import threading

    leadership = services.leadership
    threading.Thread(target=leadership.run, args=(stop,), name="lease", daemon=True).start()
    while not leadership.active.wait(0.2):
        if stop.is_set():
            return False
    return True


def cmd_dispatcher(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.service import Services, stop_on_signals

    stop = stop_on_signals()
    with Services(config, args.name, args.port) as services:
        services.serve_api()
        services.run(stop, observe=False)
    return 0


def cmd_observer(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.client import DispatcherClient
    from orchestrator.mirror import Mirrors
    from orchestrator.observer import Observer
    from orchestrator.service import stop_on_signals
    from orchestrator.web.guard import observer_key

    stop = stop_on_signals()
    token = config.dispatcher.api_token
    client = DispatcherClient(args.dispatcher_server, token, None if token else observer_key(config.state_dir))
    log.info("observing %d repositories for %s", len(config.repositories), client.base)
    Observer(config.repositories, config.poll_interval, Mirrors(config.state_dir, config.repositories), client).run(
        stop
    )
    return 0


def cmd_image(config: Config, args: argparse.Namespace) -> int:
    from rich.console import Console

    from orchestrator.backends import connect
    from orchestrator.backends.engine import Engine
    from orchestrator.backends.images import build

    console = Console(stderr=True, highlight=False)
    started = time.monotonic()
    engine = Engine(config.runner.docker_host)
    backend = connect(config.runner, engine)
    try:
        if args.action == "prune":
            from orchestrator.environment.build import prune

            if args.repo is not None:
                config.named_repository(args.repo)  # a repository of this config, or a usage error
            removed = prune(engine, args.repo, keep=max(0, args.keep))
            print("\n".join(removed) or "nothing to prune")
            return 0
        listed = [repo.pythons_for(None) if repo.python != pythons.AUTO else () for repo in config.repositories]
        auto = [
            name for repo in config.repositories if repo.python == pythons.AUTO for name in pythons.allowed_by(">0")
        ]
        versions = [pythons.DEFAULT, *(name for names in listed for name in names), *auto, *args.python]
        built = build(
            config, engine, lambda line: console.print(line, markup=False), versions, refresh_base=args.refresh_base
        )
        published = [backend.publish(info) for info in built]
    finally:
        backend.close()
    for info, where in zip(built, published, strict=True):
        console.print(
            f"[bold green]Built {info.tag}[/] ({info.id[7:19]})" + (f", pushed as {where}" if where else ""),
            soft_wrap=True,
        )  # a digest is copied, not read: never cut
    console.print(f"in {time.monotonic() - started:.1f} s")
    return 0


def cmd_store(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.store.migrate import migrate

    if config.store.url is None:
        raise UsageError("store migrate copies into store.url: set it to a postgresql:// URL in config.yaml")
    counts = migrate(config.db_path, config.store.url)
    print(f"moved into PostgreSQL from {config.db_path}:")
    for table, count in counts.items():
        print(f"  {table:<15} {count:>9,} rows")
    return 0


# -- operations on jobs ---------------------------------------------------------------------


def _remote(args: argparse.Namespace) -> Jobs | None:
    """The jobs of a dispatcher on another machine, for a command that can reach one: at
    ``--server`` (or $ORCHESTRATOR_SERVER), else at the local config's ``dispatcher.url``;
    None: this machine's state_dir. Of a local config only ``dispatcher.url`` and
    ``api_token`` are read then: its repositories are the dispatcher's machine's."""
    if not hasattr(args, "server"):
        return None
    settings = client_settings(args.config) if args.server is None or args.token is None else None
    server = args.server or (settings.url if settings else None)
    if not server:
        return None
    from orchestrator.client import DispatcherClient, RemoteJobs

    return RemoteJobs(DispatcherClient(server, args.token or (settings.api_token if settings else None)))


def _jobs(config: Config | None, args: argparse.Namespace, create: bool = False) -> Jobs:
    """The jobs of the dispatcher ``_remote`` found, else of this machine's state_dir
    (which only ``submit``, ``poll`` and ``merge`` may create)."""
    if getattr(args, "remote", None) is not None:
        return args.remote
    assert config is not None
    from orchestrator.service import local_jobs
    from orchestrator.store import Store

    if not create and config.store.url is None and not config.db_path.exists():
        raise UsageError(f"no state in {config.state_dir} yet: run `orchestrator run` first")
    if create:
        from orchestrator.workspace import prepare_directories

        prepare_directories(config)
    return local_jobs(config, Store(config.store_location), lambda: _backend(config))


def _backend(config: Config) -> Backend:
    """The engine's backend, loaded only when a command needs it (a running job's live log)."""
    from orchestrator.backends import connect
    from orchestrator.backends.engine import Engine

    return connect(config.runner, Engine(config.runner.docker_host))


def _ref(args: argparse.Namespace) -> JobRef:
    from orchestrator.jobs import JobRef

    return JobRef(commit=args.sha, repository=args.repo, python=getattr(args, "python", None))


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.console import print_jobs

    documents = _jobs(config, args).list_jobs(repository=args.repo, limit=max(1, args.limit))
    if args.json:
        print(json.dumps(documents, indent=2, ensure_ascii=False))
    else:
        print_jobs(documents)
    return 0


def cmd_logs(config: Config, args: argparse.Namespace) -> int:
    jobs = _jobs(config, args)
    document, stream = jobs.open_log(_ref(args), follow=args.follow, shard=args.shard)
    if stream is None and document["shards"] and args.shard is None and document["status"] == "running":
        print(
            f"orchestrator: job {document['id']} runs split across {len(document['shards'])} containers: "
            "`--shard K` follows one; their logs together are written when they end",
            file=sys.stderr,
        )
    if stream is None and args.follow and document["status"] in ("queued", "running"):
        # following a job that has no container yet (queued, or its image still being
        # built or pushed) waits for it, as ``tail -f`` waits for a file's lines
        print(f"orchestrator: job {document['id']} is {document['status']}: waiting for its container", file=sys.stderr)
        while stream is None and document["status"] in ("queued", "running"):
            time.sleep(0.5)
            document, stream = jobs.open_log(_ref(args), follow=True, shard=args.shard)
    if stream is None:
        print(
            f"orchestrator: job {document['id']} ({document['commit'][:12]}) is {document['status']}: no log yet",
            file=sys.stderr,
        )
        return 0
    out = sys.stdout.buffer
    if not sys.stdout.isatty():  # a file or a pipe gets the log exactly as it was written
        for chunk in stream:
            out.write(chunk)
            out.flush()
        return 0
    from orchestrator.console import TerminalFilter

    safe = TerminalFilter()  # a terminal gets its colours, never its window title or clipboard
    for chunk in stream:
        out.write(safe.feed(chunk))
        out.flush()
    out.write(safe.close())
    return 0


def _listing(documents: list[dict], as_json: bool, line: Callable[[dict], str], none: str) -> int:
    """A list command's answer: the documents as a JSON array, or a line each (``none``
    when there is nothing)."""
    if as_json:
        print(json.dumps(documents, indent=2, ensure_ascii=False))
    else:
        print("\n".join(line(d) for d in documents) if documents else none)
    return 0


def _bisection_line(b: dict) -> str:
    outcome = f"culprit {b['culprit'][:12]}" if b["culprit"] else (b["reason"] or "in progress")
    return (
        f"{b['repository']}/{b['branch']}  {b['good'][:12]}..{b['bad'][:12]}  {b['range']} commits  "
        f"{b['phase']}  {b['jobs']} jobs  {outcome}"
    )


def cmd_bisections(config: Config, args: argparse.Namespace) -> int:
    return _listing(_jobs(config, args).bisections(args.repo), args.json, _bisection_line, "no bisection yet")


def cmd_merge(config: Config, args: argparse.Namespace) -> int:
    jobs = _jobs(config, args, create=True)
    if args.cancel:
        done = jobs.cancel_merge(args.branch, args.repo)
        print(f"merge request {done['id']} of {done['branch']}: cancelled")
        return 0
    merge, changed = jobs.merge(args.branch, args.into, args.repo)
    said = "queued" if changed else "already queued"
    print(f"{said}: merge request {merge['id']} of {merge['branch']} at {merge['sha'][:12]} into {merge['target']}")
    return 0


def _merge_line(m: dict) -> str:
    candidate = f"candidate {m['candidate'][:12]} (job {m['job_id']})" if m["candidate"] else "no candidate yet"
    why = f"  {m['message']}" if m["message"] else ""
    return (
        f"{m['id']:>4}  {m['repository']}  {m['branch']} -> {m['target']}  {m['state']:<9}  {candidate}  "
        f"waited {m['waited_s']:.0f} s{why}"
    )


def cmd_merges(config: Config, args: argparse.Namespace) -> int:
    return _listing(_jobs(config, args).merges(args.repo), args.json, _merge_line, "no merge request yet")


def cmd_submit(config: Config, args: argparse.Namespace) -> int:
    document, created = _jobs(config, args, create=True).submit(args.rev, args.repo)
    print(
        f"{'queued' if created else 'already known'}: job {document['id']} {document['commit']} ({document['status']})"
    )
    return 0


def cmd_poll(config: Config, args: argparse.Namespace) -> int:
    queued = _jobs(config, args, create=True).poll(args.repo)
    print(f"queued {queued} new commit{'s' if queued != 1 else ''}")
    return 0


def _variant(document: dict) -> str:
    return f" on Python {document['python']}" if document.get("python") else ""


def cmd_retry(config: Config, args: argparse.Namespace) -> int:
    for document in _jobs(config, args).retry(_ref(args), failed=args.failed):
        what = f"its {len(document['rerun']['tests'])} failed tests" if document.get("rerun") else "again"
        print(
            f"queued job {document['id']} {document['commit']}{_variant(document)} {what}"
            f" (attempt {document['attempts'] + 1})"
        )
    return 0


def cmd_pause(config: Config, args: argparse.Namespace) -> int:
    done = _jobs(config, args).pause(args.repo, args.reason)
    print(f"{done['repository']}: paused since {done['since']} ({done['reason']}); running jobs finish")
    return 0


def cmd_resume(config: Config, args: argparse.Namespace) -> int:
    done = _jobs(config, args).resume(args.repo)
    print(f"{done['repository']}: resumed")
    return 0


def _quarantine_line(e: dict) -> str:
    return f"{e['repository']}  {e['test']}  until {e['until']}  by {e['by']}: {e['reason']}"


def cmd_quarantine(config: Config, args: argparse.Namespace) -> int:
    jobs = _jobs(config, args)
    if args.action == "list":
        return _listing(jobs.quarantined(args.repo), args.json, _quarantine_line, "no test is quarantined")
    if args.action == "remove":
        done = jobs.quarantine_remove(args.repo, args.test)
        print(f"{done['repository']}: {done['test']} is no longer quarantined")
        return 0
    entry = jobs.quarantine_add(args.repo, args.test, args.reason, args.until)
    print(f"quarantined: {_quarantine_line(entry)}")
    return 0


def _hit_lines(hit: dict) -> str:
    """A hit, its line marked among its neighbours; what came from the log printed as text."""
    from orchestrator.console import printable

    where = f"job {hit['job']} {hit['commit'][:12]} {printable(hit['repository'])}"
    if hit["kind"] != "log":
        return f"{where} ({hit['kind']}): {printable(hit['text'])}\n"
    near = [f"  {n['line']:>6}  {printable(n['text'])}" for n in hit["before"]]
    near.append(f"> {hit['line']:>6}  {printable(hit['text'])}")
    near += [f"  {n['line']:>6}  {printable(n['text'])}" for n in hit["after"]]
    return f"{where} line {hit['line']}  {hit['link']}\n" + "\n".join(near) + "\n"


def cmd_search(config: Config, args: argparse.Namespace) -> int:
    hits = _jobs(config, args).search(args.query, args.repo, args.since, max(1, args.limit))
    return _listing(hits, args.json, _hit_lines, "no match")


def cmd_cancel(config: Config, args: argparse.Namespace) -> int:
    for document in _jobs(config, args).cancel(_ref(args)):
        done = (
            "cancelled"
            if document["status"] == "cancelled"
            else "cancel requested (the dispatcher stops its container)"
        )
        print(f"job {document['id']} {document['commit']}{_variant(document)}: {done}")
    return 0


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "run": cmd_run,
    "dispatcher": cmd_dispatcher,
    "observer": cmd_observer,
    "image": cmd_image,
    "store": cmd_store,
    "status": cmd_status,
    "logs": cmd_logs,
    "submit": cmd_submit,
    "poll": cmd_poll,
    "bisections": cmd_bisections,
    "merge": cmd_merge,
    "merges": cmd_merges,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "quarantine": cmd_quarantine,
    "search": cmd_search,
}

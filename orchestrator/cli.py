"""The ``orchestrator`` command. Errors end here as one line and an exit status:
0 success, 1 a tested commit failed / errored / timed out, 2 bad usage or configuration,
3 the operation itself failed."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from orchestrator.config import Config, load_config
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.models import Job, JobStatus

log = logging.getLogger("orchestrator")

ONCE_ENGINE_PATIENCE = 120.0  # seconds `run --once` waits for an engine that went away


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description="Test every new commit in its own container.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("-c", "--config", default="config.yaml", help="config file (default ./config.yaml)")
        return p

    p = command("run", "observe, dispatch and serve the API in one process")
    p.add_argument("--once", action="store_true", help="test what is new and queued, print a summary, exit")
    command("dispatcher", "run the dispatcher and its HTTP API only")
    p = command("observer", "watch the repositories and post new commits to a dispatcher")
    p.add_argument("--dispatcher-server", default="localhost:8888", metavar="HOST:PORT")
    p = command("image", "manage the runner image")
    p.add_argument("action", choices=["build"])
    p = command("status", "recent jobs as a table")
    p.add_argument("--repo")
    p.add_argument("--json", action="store_true", help="print a JSON array of job objects")
    p.add_argument("--limit", type=int, default=30)
    p = command("logs", "a commit's container log")
    p.add_argument("sha", metavar="SHA")
    p.add_argument("--repo")
    p.add_argument("-f", "--follow", action="store_true", help="follow a running container live")
    p = command("submit", "queue a commit by hand")
    p.add_argument("rev", metavar="REV")
    p.add_argument("--repo")
    p = command("poll", "fetch now and queue every new commit (what the post-receive hook runs)")
    p.add_argument("--repo", help="only this repository")
    for name, help_ in (("retry", "test a finished commit again, as a new attempt"),
                        ("cancel", "cancel a queued or running job")):
        p = command(name, help_)
        p.add_argument("sha", metavar="SHA")
        p.add_argument("--repo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    try:
        config = load_config(args.config)
        return COMMANDS[args.command](config, args)
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


# -- long-running commands ----------------------------------------------------------------


def _stop_on_signals() -> threading.Event:
    """First SIGINT/SIGTERM: stop taking work and leave running containers to be
    re-attached next time. Second: exit at once (state is always consistent on disk)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(130)
        log.info("stopping (%s); running containers are re-attached on the next start",
                 signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _services(config: Config):
    from orchestrator.backends.docker import DockerBackend
    from orchestrator.dispatcher import Dispatcher
    from orchestrator.store import Store

    store = Store(config.db_path)
    return store, Dispatcher(config, store, DockerBackend(config.runner.docker_host))


def _serve_api(config: Config, dispatcher) -> object:
    import uvicorn

    from orchestrator.api import create_app

    app = create_app(dispatcher)
    server = uvicorn.Server(uvicorn.Config(app, host=config.dispatcher.host, port=config.dispatcher.port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise OrchestratorError(f"cannot serve the API on {config.dispatcher.host}:{config.dispatcher.port}")
    log.info("API on http://%s:%s", config.dispatcher.host, config.dispatcher.port)
    return server


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.observer import Observer

    store, dispatcher = _services(config)
    observer = Observer(config, dispatcher)
    if args.once:
        stop = _stop_on_signals()
        dispatcher.step()  # reconciles first, so an earlier process's jobs are collected
        observer.poll_once()  # new commits are queued durably even if the engine is away
        if dispatcher.engine_error is not None:
            dispatcher.shutdown()
            raise dispatcher.engine_error
        dispatcher.run(stop, until_idle=True, give_up_after=ONCE_ENGINE_PATIENCE)
        if stop.is_set():
            return 130
        jobs = [store.get(i) for i in sorted(dispatcher.touched)]
        jobs = [j for j in jobs if j is not None]
        _print_table(jobs)
        return 1 if any(j.status.bad for j in jobs) else 0
    stop = _stop_on_signals()
    server = _serve_api(config, dispatcher)
    threading.Thread(target=observer.run, args=(stop,), name="observer", daemon=True).start()
    try:
        dispatcher.run(stop)
    finally:
        server.should_exit = True
    return 0


def cmd_dispatcher(config: Config, args: argparse.Namespace) -> int:
    _, dispatcher = _services(config)
    stop = _stop_on_signals()
    server = _serve_api(config, dispatcher)
    try:
        dispatcher.run(stop)
    finally:
        server.should_exit = True
    return 0


def cmd_observer(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.client import DispatcherClient
    from orchestrator.observer import Observer

    stop = _stop_on_signals()
    client = DispatcherClient(args.dispatcher_server, config.dispatcher.api_token)
    log.info("observing %d repositories for %s", len(config.repositories), client.base)
    Observer(config, client).run(stop)
    return 0


def cmd_image(config: Config, args: argparse.Namespace) -> int:
    from rich.console import Console

    from orchestrator.image import build

    console = Console(stderr=True, highlight=False)
    started = time.monotonic()
    info = build(config, lambda line: console.print(line, markup=False))
    console.print(f"[bold green]Built {info.tag}[/] ({info.id[7:19]}) in {time.monotonic() - started:.1f} s")
    return 0


# -- inspection -----------------------------------------------------------------------------


def _store(config: Config):
    from orchestrator.store import Store

    if not config.db_path.exists():
        raise UsageError(f"no state in {config.state_dir} yet: run `orchestrator run` first")
    return Store(config.db_path)


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.results import result_document

    if args.repo and config.repository(args.repo) is None:
        raise UsageError(f"unknown repository {args.repo!r}")
    store = _store(config)
    jobs = store.list_jobs(repository=args.repo, limit=max(1, args.limit))
    if args.json:
        print(json.dumps([result_document(j, store.attempt_history(j.id)) for j in jobs], indent=2, ensure_ascii=False))
    else:
        _print_table(jobs)
    return 0


_STYLE = {"passed": "green", "failed": "red", "error": "magenta", "timed_out": "yellow",
          "running": "cyan", "queued": "dim", "cancelled": "dim"}


def _print_table(jobs: list[Job]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("commit", "repository", "branch", "status", "tests", "duration", "attempts", "subject", "message"):
        table.add_column(column, no_wrap=column not in ("subject", "message", "branch"))
    for job in jobs:
        t = job.tests
        tests = f"{t.passed}/{t.total}" + (f" ({t.failed} failed)" if t.failed else "") if t else "-"
        duration = f"{job.duration_s:.1f}s" if job.duration_s is not None else "-"
        table.add_row(job.commit[:10], job.repository, ", ".join(job.branches),
                      f"[{_STYLE[job.status.value]}]{job.status.value}[/]", tests, duration, str(job.attempts),
                      job.subject, job.message or "")
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    console.print(table)


def cmd_logs(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.backends.docker import DockerBackend
    from orchestrator.results import ResultFiles

    job = _store(config).find(args.sha, args.repo)
    out = sys.stdout.buffer
    if job.status is JobStatus.RUNNING and job.container_id:
        for chunk in DockerBackend(config.runner.docker_host).logs(job.container_id, follow=args.follow):
            out.write(chunk)
            out.flush()
        return 0
    path = ResultFiles(config.results_dir).directory(job.repository, job.commit) / "output.log"
    if job.status is JobStatus.QUEUED or not path.is_file():
        print(f"orchestrator: job {job.id} ({job.commit[:12]}) is {job.status.value}: no log yet", file=sys.stderr)
        return 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 16):
            out.write(block)
    return 0


def cmd_submit(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.observer import mirror_for
    from orchestrator.store import NewCommit

    if args.repo:
        repo = config.repository(args.repo)
        if repo is None:
            raise UsageError(f"unknown repository {args.repo!r}")
    elif len(config.repositories) == 1:
        repo = config.repositories[0]
    else:
        raise UsageError("several repositories are configured: name one with --repo")
    mirror = mirror_for(config, repo)
    mirror.fetch()
    sha = mirror.resolve(args.rev)
    branches = tuple(b for b in mirror.branches_containing(sha) if repo.tracks(b))
    subject = mirror.subjects([sha]).get(sha, "")
    store = _writable_store(config)
    created = store.record_commits(repo.name, [NewCommit(sha, subject, branches)])
    job = store.find(sha, repo.name)
    print(f"{'queued' if created else 'already known'}: job {job.id} {sha} ({job.status.value})")
    return 0


def cmd_poll(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.observer import Observer

    if args.repo and config.repository(args.repo) is None:
        raise UsageError(f"unknown repository {args.repo!r}")
    observer = Observer(config, _writable_store(config))
    names = [args.repo] if args.repo else [r.name for r in config.repositories]
    queued = sum(observer.poll_repository(name) for name in names)
    print(f"queued {queued} new commit{'s' if queued != 1 else ''}")
    return 0


def cmd_retry(config: Config, args: argparse.Namespace) -> int:
    store = _store(config)
    job = store.find(args.sha, args.repo)
    if not job.status.final:
        raise UsageError(f"job {job.id} ({job.commit[:12]}) is {job.status.value}: only finished jobs can be retried")
    store.move(job, JobStatus.QUEUED, message=f"retry asked after attempt {job.attempts}")
    print(f"queued job {job.id} {job.commit} again (attempt {job.attempts + 1})")
    return 0


def cmd_cancel(config: Config, args: argparse.Namespace) -> int:
    store = _store(config)
    job = store.find(args.sha, args.repo)
    if job.status.final:
        raise UsageError(f"job {job.id} ({job.commit[:12]}) is already {job.status.value}")
    cancelled = store.request_cancel(job)
    if cancelled.status is JobStatus.CANCELLED:  # it never ran: its files say so
        from orchestrator.results import ResultFiles

        ResultFiles(config.results_dir).write_without_run(cancelled, store.attempt_history(job.id))
    done = "cancelled" if job.status is JobStatus.QUEUED else "cancel requested (the dispatcher stops its container)"
    print(f"job {job.id} {job.commit}: {done}")
    return 0


def _writable_store(config: Config):
    from orchestrator.store import Store

    return Store(config.db_path)


COMMANDS = {
    "run": cmd_run, "dispatcher": cmd_dispatcher, "observer": cmd_observer, "image": cmd_image,
    "status": cmd_status, "logs": cmd_logs, "submit": cmd_submit, "poll": cmd_poll,
    "retry": cmd_retry, "cancel": cmd_cancel,
}

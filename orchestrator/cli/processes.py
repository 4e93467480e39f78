"""The commands that run a process or prepare one: ``run`` (a dispatcher with its observer
and API, or ``--once``), ``dispatcher``, ``observer``, ``image`` (the runner images) and
``store migrate``. Each imports what it uses when it runs: a command starts quickly."""

from __future__ import annotations

import argparse
import logging
import time

from orchestrator import pythons
from orchestrator.config import Config
from orchestrator.errors import RepositoryError, UsageError

log = logging.getLogger("orchestrator")

ONCE_ENGINE_PATIENCE = 120.0  # seconds `run --once` waits for an engine that went away


def cmd_run(config: Config, args: argparse.Namespace) -> int:

    from orchestrator.cli.console import print_jobs
    from orchestrator.cli.live_view import live_view
    from orchestrator.control.port import JobRef
    from orchestrator.service import Services, stop_on_signals

    stop = stop_on_signals()
    with Services(config, args.name, args.port) as services:
        dispatcher, observer = services.dispatcher, services.observer
        if args.once:
            if services.leadership is not None and not services.leadership.hold(stop):  # the lease, for the run
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


def cmd_dispatcher(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.service import Services, stop_on_signals

    stop = stop_on_signals()
    with Services(config, args.name, args.port) as services:
        services.serve_api()
        services.run(stop, observe=False)
    return 0


def cmd_observer(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.control.client import DispatcherClient
    from orchestrator.observe.mirror import Mirrors
    from orchestrator.observe.observer import Observer
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
    from orchestrator.backends.runner_images import build

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
        versions = args.python or used_pythons(config)
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


def used_pythons(config: Config) -> list[str]:
    """The runner images a config's jobs may run in: the default Python's, and each one a
    repository lists (every offered CPython for ``auto``)."""
    used = [pythons.DEFAULT]
    for repo in config.repositories:
        used += pythons.allowed_by(">0") if repo.python == pythons.AUTO else repo.pythons_for(None)
    return list(dict.fromkeys(used))


def cmd_store(config: Config, args: argparse.Namespace) -> int:  # noqa: ARG001 (the commands' signature)
    from orchestrator.store.migrate import migrate

    if config.store.url is None:
        raise UsageError("store migrate copies into store.url: set it to a postgresql:// URL in config.yaml")
    counts = migrate(config.db_path, config.store.url)
    print(f"moved into PostgreSQL from {config.db_path}:")
    for table, count in counts.items():
        print(f"  {table:<15} {count:>9,} rows")
    return 0

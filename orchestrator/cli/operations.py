"""The commands that act on jobs, a request each, and how each prints its answer: on this
machine's state_dir, or, with ``--server URL`` (or ``dispatcher.url`` in the config), through
the HTTP API of a dispatcher on another machine (``remote``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.config import Config, client_settings
from orchestrator.errors import UsageError

if TYPE_CHECKING:  # the commands import what they use when they run: start-up stays short
    from orchestrator.backends.base import Backend
    from orchestrator.control.port import JobRef, Jobs


def remote(args: argparse.Namespace) -> Jobs | None:
    """The jobs of a dispatcher on another machine, for a command that can reach one: at
    ``--server`` (or the variable protocol.SERVER), else at the local config's ``dispatcher.url``;
    None: this machine's state_dir. Of a local config only ``dispatcher.url`` and
    ``api_token`` are read then: its repositories are the dispatcher's machine's."""
    if not hasattr(args, "server"):
        return None
    settings = client_settings(args.config) if args.server is None or args.token is None else None
    server = args.server or (settings.url if settings else None)
    if not server:
        return None
    from orchestrator.control.client import DispatcherClient, RemoteJobs

    return RemoteJobs(DispatcherClient(server, args.token or (settings.api_token if settings else None)))


def _jobs(config: Config | None, args: argparse.Namespace, create: bool = False) -> Jobs:
    """The jobs of the dispatcher ``remote`` found, else of this machine's state_dir
    (which only ``submit``, ``poll`` and ``merge`` may create)."""
    remote: Jobs | None = getattr(args, "remote", None)
    if remote is not None:
        return remote
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
    from orchestrator.control.port import JobRef

    return JobRef(commit=args.sha, repository=args.repo, python=getattr(args, "python", None))


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from orchestrator.cli.console import print_jobs

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
    from orchestrator.cli.console import TerminalFilter

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
    from orchestrator.cli.console import printable

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

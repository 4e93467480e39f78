"""The ``orchestrator`` command. Errors end here as one line and an exit status:
0 success, 1 a tested commit failed / errored / timed out, 2 bad usage or configuration,
3 the operation itself failed.

What a user may type is parser.py; the commands that run a process (``run``,
``dispatcher``, ``observer``) or prepare one (``image``, ``store``) are processes.py; those
that act on jobs, here or through a dispatcher's HTTP API, are operations.py; ``init``, which
writes a config for a repository, is init.py.

May import: every package (it is the top floor; tests/unit/test_architecture.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.cli import operations, processes
from orchestrator.cli.parser import parser
from orchestrator.config import load_config
from orchestrator.errors import OrchestratorError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    try:
        if args.command == "init":  # writes the config: none to load yet
            from orchestrator.cli.init import cmd_init

            return cmd_init(args)
        remote = operations.remote(args)
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


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "run": processes.cmd_run,
    "dispatcher": processes.cmd_dispatcher,
    "observer": processes.cmd_observer,
    "image": processes.cmd_image,
    "store": processes.cmd_store,
    "status": operations.cmd_status,
    "logs": operations.cmd_logs,
    "submit": operations.cmd_submit,
    "poll": operations.cmd_poll,
    "bisections": operations.cmd_bisections,
    "merge": operations.cmd_merge,
    "merges": operations.cmd_merges,
    "retry": operations.cmd_retry,
    "cancel": operations.cmd_cancel,
    "pause": operations.cmd_pause,
    "resume": operations.cmd_resume,
    "quarantine": operations.cmd_quarantine,
    "search": operations.cmd_search,
}

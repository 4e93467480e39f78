"""The long-running processes put together: the store, the engine backend, the
dispatcher, the user operations and the HTTP server, opened in that order and closed in
the reverse one, and the signals that stop them."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from orchestrator.backends import connect
from orchestrator.backends.engine import Engine
from orchestrator.config import Config
from orchestrator.dispatcher import Dispatcher
from orchestrator.environment.build import Environments, Settings
from orchestrator.errors import OrchestratorError
from orchestrator.jobs import LocalJobs
from orchestrator.store import Store
from orchestrator.workspace import prepare_directories

log = logging.getLogger("orchestrator")


class Services:
    """One dispatcher's process: ``with Services(config) as services: ...``."""

    def __init__(self, config: Config):
        self.config = config
        prepare_directories(config)
        self.store = Store(config.db_path)
        self.engine = Engine(config.runner.docker_host)
        self.backend = connect(config.runner, self.engine)
        environments = Environments(config.state_dir, self.engine,
                                    Settings.of(config, self.store.instance_id()), self.backend.publish)
        self.dispatcher = Dispatcher(config, self.store, self.backend, environments)
        self.jobs = LocalJobs(config, self.store, lambda: self.backend, wake=self.dispatcher.wake)
        observer = self.jobs.observer
        self.dispatcher.metrics.watch_repositories(observer.health, lambda: dict(observer.failures))
        self._server = None

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self.dispatcher.shutdown()
        self.backend.close()
        self.store.close()

    def serve_api(self) -> None:
        """Serve the HTTP API on ``dispatcher.host:port`` from a thread of its own (the web
        side is loaded only here: `run --once` starts without it)."""
        import uvicorn

        from orchestrator.web.app import create_app

        host, port = self.config.dispatcher.host, self.config.dispatcher.port
        app = create_app(self.jobs, self.dispatcher.metrics, self.config)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, name="api", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise OrchestratorError(f"cannot serve the API on {host}:{port}")
        self._server = server
        log.info("API on http://%s:%s", host, port)


def stop_on_signals() -> threading.Event:
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

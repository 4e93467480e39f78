"""Webhook notifications of final job statuses, sent from a background thread with a
timeout and retries, so a slow or dead receiver never holds up the dispatcher."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import requests

from orchestrator.backoff import Backoff
from orchestrator.config import NotifyConfig
from orchestrator.models import Job, JobStatus
from orchestrator.results import result_document

log = logging.getLogger("orchestrator.notify")


class Notifier:
    def __init__(self, config: NotifyConfig):
        self._config = config
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None
        self._session = requests.Session()

    def job_finished(self, job: Job, previous: JobStatus | None) -> None:
        """Queue a notification if the config asks for this one: every final status, or
        only failures and recoveries (a pass after a bad status on the branch)."""
        if not self._config.webhooks or job.status is JobStatus.CANCELLED:
            return
        recovered = job.status is JobStatus.PASSED and previous is not None and previous.bad
        if self._config.on == "failures" and not (job.status.bad or recovered):
            return
        self._enqueue({"event": "job.finished", "recovered": recovered, "job": result_document(job)})

    def culprit_found(self, job: Job, bisection: dict[str, Any]) -> None:
        """A bisection named ``job`` the first failing commit of its range: sent whatever
        ``notify.on`` says (it is news of a failure)."""
        if self._config.webhooks:
            self._enqueue({"event": "culprit_found", "job": result_document(job), "bisection": bisection})

    def _enqueue(self, body: dict[str, Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_all, name="notify", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            log.warning("notification queue full; dropped the notice of job %s", body["job"]["id"])

    def _send_all(self) -> None:
        while (body := self._queue.get()) is not None:
            for url in self._config.webhooks:
                self._send(url, body)

    def _send(self, url: str, body: dict[str, Any]) -> None:
        backoff = Backoff(0.5, 30.0)
        for attempt in range(1, self._config.retries + 2):
            try:
                resp = self._session.post(url, json=body, timeout=self._config.timeout)
                if resp.status_code < 500:
                    if resp.status_code >= 400:
                        log.warning("webhook %s refused job %s: HTTP %s", url, body["job"]["id"], resp.status_code)
                    return
                problem = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                problem = type(exc).__name__
            if attempt <= self._config.retries:
                time.sleep(backoff.next())
        log.warning("webhook %s: giving up on job %s after %s attempts (%s)", url, body["job"]["id"], attempt, problem)

    def close(self, timeout: float = 10) -> None:
        """Send what is queued, within ``timeout``."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

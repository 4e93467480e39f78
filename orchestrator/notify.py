"""Webhook notifications: which state changes are news (``record``, called by the store
inside the transaction of the change, so the delivery is written with it: outbox.py),
and a background thread that sends what is due, with a timeout and retries, so a slow or
dead receiver never holds up the dispatcher and a crash loses nothing.

Events: ``job.finished`` for every final status or only failures and recoveries
(``notify.on``; never for cancelled or skipped jobs), and ``culprit_found`` when a
bisection names a commit. Each request carries ``Idempotency-Key`` (job, attempt, event):
delivery is at least once, and a repeat has the same key.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import requests

from orchestrator import outbox
from orchestrator.backoff import Backoff
from orchestrator.config import NotifyConfig
from orchestrator.models import Job, JobStatus
from orchestrator.outbox import Delivery, Outbox
from orchestrator.results import result_document
from orchestrator.store import Store

log = logging.getLogger("orchestrator.notify")

POLL = 0.5   # seconds between looks at the outbox when nothing wakes the sender


class Notifier:
    def __init__(self, config: NotifyConfig, store: Store):
        self._config = config
        self._store = store
        self.outbox = Outbox(store)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        self._retry = Backoff(0.5, 30.0)   # before a delivery's next try: 0.5 s, 1 s, 2 s ... at most 30 s

    # -- what is news: in the transaction of the change ---------------------------------

    def record(self, db: sqlite3.Connection, old: Job, new: Job) -> None:
        if not self._config.webhooks:
            return
        events = []
        if new.status.final and not old.status.final and new.status not in (JobStatus.CANCELLED, JobStatus.SKIPPED):
            previous = self._store.previous_verdict(new)
            recovered = new.status is JobStatus.PASSED and previous is not None and previous.bad
            if self._config.on == "all" or new.status.bad or recovered:
                events.append(("job.finished", {"event": "job.finished", "recovered": recovered,
                                                "job": result_document(new)}))
        if new.culprit is not None and old.culprit is None:
            events.append(("culprit_found", {"event": "culprit_found", "job": result_document(new),
                                             "bisection": new.culprit}))
        for event, body in events:
            for url in self._config.webhooks:
                outbox.add(db, new.id, new.attempts, event, url, body)
        if events:
            self._wake.set()

    # -- sending ------------------------------------------------------------------------

    def start(self) -> None:
        """Send what is due, now and as it comes (what a crash left pending included)."""
        if self._config.webhooks and self._thread is None:
            self._thread = threading.Thread(target=self._send_all, name="notify", daemon=True)
            self._thread.start()

    def _send_all(self) -> None:
        while not self._stop.is_set():
            due = self.outbox.due()
            for delivery in due:
                if self._stop.is_set():
                    return
                self._send(delivery)
            if not due:
                self._wake.wait(POLL)
                self._wake.clear()

    def _send(self, delivery: Delivery) -> None:
        try:
            resp = self._session.post(delivery.url, json=delivery.body, timeout=self._config.timeout,
                                      headers={"Idempotency-Key": delivery.key})
            if resp.status_code < 400:
                self.outbox.sent(delivery)
                return
            problem = f"HTTP {resp.status_code}"
            if resp.status_code < 500:   # refused: trying again would be refused again
                log.warning("webhook %s refused %s: %s", delivery.url, delivery.key, problem)
                self.outbox.failed_try(delivery, problem, None)
                return
        except requests.RequestException as exc:
            problem = type(exc).__name__
        if delivery.tries < self._config.retries:
            self.outbox.failed_try(delivery, problem, self._retry.after(delivery.tries + 1))
        else:
            log.warning("webhook %s: giving up on %s after %s tries (%s)", delivery.url, delivery.key,
                        delivery.tries + 1, problem)
            self.outbox.failed_try(delivery, problem, None)

    def close(self, timeout: float = 10) -> None:
        """Send what is due within ``timeout``; what is left stays in the outbox for the next start."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.outbox.due(1):
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self._config.timeout + 1)
        self._thread = None

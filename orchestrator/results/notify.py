"""Webhook notifications: which state changes are news (``news``, asked by the store inside
the transaction of the change, so the delivery is written with it: store/outbox.py),
and senders in the background, one per receiver, so a slow or dead receiver never holds
up the dispatcher, nor another receiver, and a crash loses nothing.

Events: ``job.finished`` for every final status or only failures and recoveries
(``notify.on``; never for cancelled or skipped jobs; a variant's names its ``python``),
``commit.finished`` once every variant of a commit on several Pythons has ended (with
``notify.on: failures``, only when the commit's status is bad), ``culprit_found``
when a bisection names a commit, and ``merge.merged`` and ``merge.rejected`` when the merge
queue ends a request (whatever ``notify.on`` says: they are not a job's verdict). Each
request carries ``Idempotency-Key`` (job, attempt, event; a merge request's id, head and
state): delivery is at least once, and a repeat has the same key.
How each delivery is formatted and carried, bounded, is channels.py's.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable

from orchestrator.backoff import Backoff
from orchestrator.config import NotifyConfig
from orchestrator.models import Job, JobStatus, iso
from orchestrator.results.channels import JSON, Channel, post
from orchestrator.results.files import commit_document, result_document
from orchestrator.store import News, Store
from orchestrator.store.merges import MERGED, REJECTED, Merge
from orchestrator.store.outbox import Delivery
from orchestrator.store.quarantine import Entry

log = logging.getLogger("orchestrator.results.notify")

POLL = 0.5  # seconds between looks at the outbox when nothing wakes a sender


class Notifier:
    """Which changes are news, and their delivery through ``channel`` (channels.py: the
    format of a body, and the HTTP POST that carries it)."""

    def __init__(self, config: NotifyConfig, store: Store, channel: Channel = JSON):
        self.channel = channel
        self._config = config
        self._store = store
        self.outbox = store.outbox
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retry = Backoff(0.5, 30.0)  # before a delivery's next try: 0.5 s, 1 s, 2 s ... at most 30 s

    # -- what is news: in the transaction of the change ---------------------------------

    def news(self, old: Job, new: Job) -> list[News]:
        """The deliveries a change makes (the store writes them with the change)."""
        if not self._config.webhooks:
            return []
        events = []
        if new.status.final and not old.status.final and new.status not in (JobStatus.CANCELLED, JobStatus.SKIPPED):
            previous = self._store.previous_verdict(new)
            recovered = new.status is JobStatus.PASSED and previous is not None and previous.bad
            if self._config.on == "all" or new.status.bad or recovered:
                events.append(
                    ("job.finished", {"event": "job.finished", "recovered": recovered, "job": result_document(new)})
                )
        if new.python and new.status.final and not old.status.final:
            jobs = self._store.of_commit(new.repository, new.commit)
            summary = commit_document(jobs)
            if all(j.status.final for j in jobs) and (self._config.on == "all" or JobStatus(summary["status"]).bad):
                events.append(("commit.finished", {"event": "commit.finished", "commit": summary}))
        if new.culprit is not None and old.culprit is None:
            events.append(
                ("culprit_found", {"event": "culprit_found", "job": result_document(new), "bisection": new.culprit})
            )
        if events:
            self._wake.set()
            self._wake.clear()
        return [News(new.id, new.attempts, event, url, body) for event, body in events for url in self._config.webhooks]

    def merge_news(self, old: Merge, new: Merge) -> list[News]:
        """A merge request merged or rejected (the store writes it with the change)."""
        if not self._config.webhooks or new.state not in (MERGED, REJECTED) or old.state == new.state:
            return []
        event = f"merge.{new.state}"
        body = {"event": event, "merge": new.document()}
        self._wake.set()
        self._wake.clear()
        key = f"merge-{new.id}-{new.sha[:12]}-{new.state}"
        return [News(new.job_id or 0, 0, event, url, body, key) for url in self._config.webhooks]

    def quarantine_news(self, entry: Entry, job_id: int, attempt: int) -> list[News]:
        """A test quarantined automatically (the store writes it with the entry)."""
        if not self._config.webhooks:
            return []
        body = {"event": "test.quarantined", "quarantine": entry.document(), "job": job_id}
        self._wake.set()
        self._wake.clear()
        key = f"quarantine-{entry.repository}-{entry.test_id}-{iso(entry.added_at)}"
        return [News(job_id, attempt, "test.quarantined", url, body, key) for url in self._config.webhooks]

    # -- sending ------------------------------------------------------------------------

    def start(self) -> None:
        """Send what is due, now and as it comes (what a crash left pending included): a
        sender for each configured receiver, and one for deliveries to receivers no
        longer configured."""
        if not self._config.webhooks or self._threads:
            return
        self._stop.clear()  # started again: the active dispatcher's, each time it is the active one
        urls = list(dict.fromkeys(self._config.webhooks))
        for url in urls:
            self._threads.append(
                threading.Thread(
                    target=self._send_all, args=(lambda url=url: self.outbox.due(url=url),), name="notify", daemon=True
                )
            )
        self._threads.append(
            threading.Thread(
                target=self._send_all, args=(lambda: self.outbox.due(besides=urls),), name="notify", daemon=True
            )
        )
        for thread in self._threads:
            thread.start()

    def _send_all(self, due: Callable[[], list[Delivery]]) -> None:
        while not self._stop.is_set():
            deliveries = due()
            for delivery in deliveries:
                if self._stop.is_set():
                    return
                self._send(delivery)
            if not deliveries:
                self._wake.wait(POLL)

    def _send(self, delivery: Delivery) -> None:
        try:
            payload, content_type = self.channel.payload(delivery.body)
            status = post(delivery.url, payload, content_type, {"Idempotency-Key": delivery.key}, self._config.timeout)
            if 200 <= status < 300:
                self.outbox.sent(delivery)
                return
            problem = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
            if 400 <= status < 500:  # refused: trying again would be refused again
                log.warning("webhook %s refused %s: %s", delivery.url, delivery.key, problem)
                self.outbox.failed_try(delivery, problem, None)
                return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            problem = "timed out" if isinstance(exc, (TimeoutError, socket.timeout)) else type(exc).__name__
        if delivery.tries < self._config.retries:
            self.outbox.failed_try(delivery, problem, self._retry.after(delivery.tries + 1))
        else:
            log.warning(
                "webhook %s: giving up on %s after %s tries (%s)",
                delivery.url,
                delivery.key,
                delivery.tries + 1,
                problem,
            )
            self.outbox.failed_try(delivery, problem, None)

    def close(self, timeout: float = 10) -> None:
        """Send what is due within ``timeout``; what is left stays in the outbox for the next start."""
        if not self._threads:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.outbox.due(1):
            self._wake.set()
            self._wake.clear()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        end = time.monotonic() + 2 * self._config.timeout + 1  # a request in flight ends by its own deadline
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        self._threads = []

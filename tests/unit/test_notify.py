"""Webhook receivers are somebody else's servers: a redirect, an endless answer or one
that trickles cannot send the body elsewhere, fill the dispatcher's memory, or hold back the
deliveries to other receivers. Real HTTP servers on loopback (tests.helpers.WebhookReceiver)."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from orchestrator.models import JobStatus
from orchestrator.results.notify import Notifier
from tests.helpers import GitRepo, Web, WebhookReceiver


def setup(tmp_path: Path, urls: list[str], **notify: object) -> tuple[Web, Notifier]:
    repo = GitRepo(tmp_path / "upstream")
    repo.commit("root")
    w = Web(tmp_path, repo, notify={"webhooks": urls, "on": "all", "retries": 0, "timeout": 2, **notify})
    w.jobs.poll()
    notifier = Notifier(w.config.notify, w.store)
    w.store.news = notifier.news
    notifier.start()
    return w, notifier


def ended(notifier: Notifier, job_id: int, timeout: float = 15) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries = notifier.outbox.of_job(job_id)
        if deliveries and all(d.state != "pending" for d in deliveries):
            return deliveries
        time.sleep(0.05)
    raise AssertionError(f"deliveries still pending after {timeout} s: {notifier.outbox.of_job(job_id)}")


def test_no_redirect_is_followed_and_a_3xx_is_a_failed_try(tmp_path: Path) -> None:
    hostile, elsewhere = WebhookReceiver(), WebhookReceiver()
    hostile.redirect_to = elsewhere.url  # another origin
    try:
        w, notifier = setup(tmp_path, [f"{hostile.base}/redirect307", f"{hostile.base}/redirect302"])
        job = w.finish(JobStatus.PASSED)
        deliveries = ended(notifier, job.id)
        notifier.close()
        # each try reached this receiver (once, CI saw a 404 that no handler here sends: the
        # answer came from some other server, and this says so if it happens again)
        assert sorted(hostile.paths) == ["/redirect302", "/redirect307"], hostile.paths
        assert sorted(d.last_error for d in deliveries) == [
            "HTTP 302 (redirects are not followed)",
            "HTTP 307 (redirects are not followed)",
        ]
        assert all(d.state == "failed" for d in deliveries)
        assert elsewhere.paths == [] and elsewhere.received == []  # the body went nowhere else
        w.close()
    finally:
        hostile.close()
        elsewhere.close()


def test_an_endless_answer_is_not_read(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    try:
        w, notifier = setup(tmp_path, [f"{receiver.base}/huge"])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        began = time.monotonic()
        (delivery,) = ended(notifier, w.finish(JobStatus.PASSED).id)
        took = time.monotonic() - began
        notifier.close()
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
        assert delivery.state == "sent" and took < 5
        assert grown_mb < 100 and receiver.answered < 200 * (1 << 20), (grown_mb, receiver.answered)
        w.close()
    finally:
        receiver.close()


def test_a_trickling_receiver_holds_back_no_other_and_is_cut_at_the_deadline(tmp_path: Path) -> None:
    slow, fast = WebhookReceiver(), WebhookReceiver()
    try:
        w, notifier = setup(tmp_path, [f"{slow.base}/trickle", fast.url], timeout=2)
        began = time.monotonic()
        job = w.finish(JobStatus.FAILED)
        while not fast.received and time.monotonic() - began < 10:
            time.sleep(0.02)
        assert fast.received and time.monotonic() - began < 1.5, "the fast receiver waited for the slow one"
        deliveries = {d.url: d for d in ended(notifier, job.id)}
        notifier.close()
        slow_one = deliveries[f"{slow.base}/trickle"]
        assert slow_one.state == "failed" and slow_one.last_error in (
            "timed out",
            "RemoteDisconnected",
            "ConnectionResetError",
            "BadStatusLine",
        )
        assert time.monotonic() - began < 8  # cut at its 2 s deadline, not after a byte every 4 s
        w.close()
    finally:
        slow.close()
        fast.close()


class ChatChannel:
    """A second format, as a chat service's webhook wants it: one line of text."""

    def payload(self, body: dict) -> tuple[bytes, str]:
        job = body.get("job") or {}
        text = f"{body['event']}: {job.get('repository')} {str(job.get('commit'))[:10]} {job.get('status')}"
        return json.dumps({"text": text}).encode(), "application/json"


def test_a_second_format_is_one_channel_given_to_the_notifier(tmp_path: Path) -> None:
    """The news (which events, what they say) stays notify.py's; a channel (channels.py)
    only formats it, and the same bounded POST carries it."""
    receiver = WebhookReceiver()
    try:
        repo = GitRepo(tmp_path / "upstream")
        repo.commit("root")
        w = Web(tmp_path, repo, notify={"webhooks": [receiver.url], "on": "all", "retries": 0, "timeout": 2})
        w.jobs.poll()
        notifier = Notifier(w.config.notify, w.store, channel=ChatChannel())
        w.store.news = notifier.news
        notifier.start()
        job = w.finish(JobStatus.FAILED)
        (delivery,) = ended(notifier, job.id)
        notifier.close()
        assert delivery.state == "sent"
        assert receiver.received == [{"text": f"job.finished: demo {job.commit[:10]} failed"}]
        w.close()
    finally:
        receiver.close()

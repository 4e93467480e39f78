"""Which of several dispatchers on one PostgreSQL store is the active one (store/leases.py).

Exactly one holds the lease: it observes, schedules, runs jobs and sends webhooks. The
others are standbys: they serve the read-only API and the dashboard from the same store,
answer a change with 503 and the active's address, and try for the lease every
``lease / 3`` seconds. The active renews it as often; when a renewal is refused (the lease
expired, or another holds it: this process was paused past its lease), the active steps
down at once: its store refuses every write from then on (the fence), its dispatcher is
abandoned where it stands (containers left for the new active to adopt), and it is a
standby again.

While the database is away, nothing changes hands: the active keeps its containers and
stops claiming work (``store_error`` says why in /healthz), and a standby takes over only
after it has seen the database answer for two whole leases (so the active, which renews as
soon as the database is back, keeps its place). The lease is read and written on a
connection of its own each time, never the pool's: both see the database back at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import NotActive
from orchestrator.store import Store
from orchestrator.store.db import errors as store_errors
from orchestrator.store.leases import Lease

log = logging.getLogger("orchestrator.dispatch.leadership")

AFTER_OUTAGE = 2  # leases a standby waits, after an outage of the database it saw, before taking an expired lease


@dataclass(frozen=True)
class Role:
    active: bool
    name: str
    lease: Lease | None  # the lease as last read (whoever holds it)
    store_error: str | None


class Leadership:
    def __init__(self, store: Store, name: str, address: str, lease: float):
        self.store, self.name, self.address, self.ttl = store, name, address, lease
        self.active = threading.Event()  # set while this dispatcher holds the lease
        self.lost = threading.Event()  # set when it stepped down (cleared when it is active again)
        self.epoch = 0
        self.last: Lease | None = None
        self.store_error: str | None = None
        # the database answered without a break since (as if for a whole lease already, at start:
        # only an outage this dispatcher saw makes it wait before taking an expired lease)
        self._healthy_since: float | None = time.monotonic() - AFTER_OUTAGE * lease
        store.leading = self.active.is_set

    @property
    def every(self) -> float:
        return self.ttl / 3

    def role(self) -> Role:
        return Role(self.active.is_set(), self.name, self.last, self.store_error)

    def document(self) -> dict[str, Any]:
        """What /healthz says of it."""
        lease = self.last
        return {
            "role": "active" if self.active.is_set() else "standby",
            "name": self.name,
            "active": lease.holder if lease is not None and not lease.expired else None,
            "active_address": lease.address if lease is not None and not lease.expired else None,
            "lease_age_s": round(lease.age, 3) if lease is not None else None,
            "epoch": lease.epoch if lease is not None else None,
            "store_error": self.store_error,
        }

    def terms(self, stop: threading.Event, between: Callable[[], None]) -> Iterator[threading.Event]:
        """Each term of this dispatcher as the active one, until ``stop``: an event, set as
        soon as the term ends (``stop``, or the lease lost), which whatever the term runs
        watches. The lease is kept meanwhile (``run``), and given up when they end; between
        terms, a standby's, ``between`` is called once a lease."""
        keeper = threading.Thread(target=self.run, args=(stop,), name="lease", daemon=True)
        keeper.start()
        chores = 0.0
        while not stop.is_set():
            if not self.active.wait(0.2):
                if time.monotonic() - chores > self.ttl:
                    chores = time.monotonic()
                    between()
                continue
            term = threading.Event()

            def end_term(term: threading.Event = term) -> None:
                while not (stop.is_set() or self.lost.is_set() or term.is_set()):
                    time.sleep(0.05)
                term.set()

            threading.Thread(target=end_term, name="term", daemon=True).start()
            try:
                yield term
            finally:
                term.set()
        keeper.join(timeout=10)  # the lease given up, or left to expire if the store does not answer

    def hold(self, stop: threading.Event) -> bool:
        """Take the lease (waiting for an active one to let it go) and keep it until ``stop``,
        which gives it up: `run --once` on a shared store. False if stopped first."""
        threading.Thread(target=self.run, args=(stop,), name="lease", daemon=True).start()
        while not self.active.wait(0.2):
            if stop.is_set():
                return False
        return True

    def run(self, stop: threading.Event) -> None:
        """Take and keep the lease until ``stop``; then give it up (a clean stop lets a
        standby take over at once, not a lease later)."""
        while not stop.is_set():
            self.step(stop)
            stop.wait(self.every)
        self.resign()

    def resign(self) -> None:
        """Give the lease up, if held (a clean stop): a standby takes over at once, not a
        lease later. A store that does not answer lets it expire instead."""
        if not self.active.is_set():
            return
        epoch = self.epoch
        self.step_down("stopping")
        with contextlib.suppress(*store_errors()):
            self.store.leases.release(self.name, epoch)

    def step(self, stop: threading.Event | None = None) -> None:
        """Renew the lease held, or (a standby, not stopping) take one that is free."""
        try:
            if self.active.is_set():
                if self.store.leases.renew(self.name, self.epoch, self.ttl):
                    self.last = self.store.leases.current()
                    self._answered()
                    return
                # refused: expired (a pause, the database away past the lease) or another holds it
                self._answered()
                lease = self._try()
                if lease is None or lease.holder != self.name:
                    self.step_down(f"the lease went to {lease.holder if lease else 'nobody'}")
                return
            self._answered()
            stopping = stop is not None and stop.is_set()
            waited = (
                self._healthy_since is not None and time.monotonic() - self._healthy_since >= AFTER_OUTAGE * self.ttl
            )
            if not stopping and waited:
                self._try()
            else:
                self.last = self.store.leases.current()
        except NotActive:
            self.step_down("its store refused a write")
        except store_errors() as exc:
            self.store_error = f"the store does not answer: {str(exc).strip().splitlines()[0] if str(exc) else exc}"
            self._healthy_since = None
            log.warning("%s: %s", self.name, self.store_error)

    def _answered(self) -> None:
        if self._healthy_since is None:
            self._healthy_since = time.monotonic()
        self.store_error = None

    def _try(self) -> Lease | None:
        """Take the lease if it is free (or still ours); the lease as it now is."""
        lease = self.store.leases.acquire(self.name, self.address, self.ttl)
        if lease is not None and lease.holder == self.name:
            if not self.active.is_set() or lease.epoch != self.epoch:
                self.epoch = lease.epoch
                self.store.fence_with(self.name, self.epoch)
                self.lost.clear()
                self.active.set()
                log.info("%s: active (epoch %d)", self.name, self.epoch)
        self.last = lease or self.store.leases.current()
        return self.last

    def step_down(self, why: str) -> None:
        if not self.active.is_set():
            return
        log.warning("%s: stepping down: %s", self.name, why)
        self.store.fence_with(self.name, -1)  # every write refused from now on, whatever is still running
        self.active.clear()
        self.lost.set()

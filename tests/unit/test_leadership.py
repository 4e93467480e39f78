"""Leadership (leadership.py) on a real store, SQLite's and PostgreSQL's: one active among
several, a holder that stopped renewing replaced and stepping down when it looks again, its
writes refused; and the terms a dispatcher's process runs while it is active."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.dispatch.leadership import Leadership
from orchestrator.errors import NotActive
from orchestrator.store import NewCommit, Store

TTL = 0.5  # seconds


@pytest.fixture
def stores(store_location):
    """Two stores on one database: two dispatchers' views of it."""
    opened = [Store(store_location), Store(store_location)]
    yield opened
    for store in opened:
        store.close()


def test_one_active_and_a_holder_that_stopped_renewing_steps_down_its_writes_refused(stores) -> None:
    alpha = Leadership(stores[0], "alpha", "http://alpha", TTL)
    beta = Leadership(stores[1], "beta", "http://beta", TTL)
    alpha.step()
    beta.step()
    assert (alpha.active.is_set(), beta.active.is_set()) == (True, False)
    assert beta.document()["active"] == "alpha" and beta.document()["active_address"] == "http://alpha"
    time.sleep(TTL * 1.5)  # alpha paused: no renewal
    beta.step()
    assert beta.active.is_set() and beta.epoch == alpha.epoch + 1
    with pytest.raises(NotActive):  # alpha's write, before it looks: its fence refuses it
        stores[0].record_commits("demo", [NewCommit("a" * 40, "while paused", ("main",))])
    alpha.step()  # it wakes and renews: refused, it steps down
    assert not alpha.active.is_set() and alpha.lost.is_set()
    assert stores[1].record_commits("demo", [NewCommit("b" * 40, "by the new active", ("main",))])
    assert [j.commit for j in stores[1].of_commit("demo", "a" * 40)] == []  # nothing of the paused one's


def test_a_term_runs_while_active_and_ends_when_the_lease_is_lost(stores) -> None:
    """alpha a standby while beta holds the lease (its chores called between terms); beta
    gone silent, alpha's term begins; alpha stepping down ends the term at once; a clean
    stop ends the next one and gives the lease up."""
    beta = Leadership(stores[1], "beta", "http://beta", TTL)
    beta.step()
    alpha = Leadership(stores[0], "alpha", "http://alpha", TTL)
    stop = threading.Event()
    chores: list[float] = []
    terms: list[threading.Event] = []

    def serve() -> None:
        for term in alpha.terms(stop, between=lambda: chores.append(time.monotonic())):
            terms.append(term)
            term.wait(10)

    server = threading.Thread(target=serve)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while not terms and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(terms) == 1 and not terms[0].is_set() and alpha.epoch == beta.epoch + 1
        assert chores and chores[0] < time.monotonic() - TTL / 2  # a standby first, while beta's lease ran
        alpha.step_down("a test took it")
        assert terms[0].wait(1)  # the term ends at once
        deadline = time.monotonic() + 10  # the lease still its own: a term of its own again
        while len(terms) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(terms) == 2 and alpha.active.is_set()
    finally:
        stop.set()
        server.join(15)
    assert not server.is_alive() and all(term.is_set() for term in terms)
    assert stores[1].leases.current().expired  # a clean stop gives the lease up: no waiting for it

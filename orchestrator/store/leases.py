"""The active dispatcher's lease: one row, held by one dispatcher at a time, renewed every
few seconds, with an epoch that grows each time it changes hands (the fencing token).

Time is the database's own clock (never a dispatcher's: two machines' clocks differ), in
seconds. While the lease is held, every write transaction of the holder's store checks, inside
itself, that the lease is still its own at its epoch and not expired (``fence``): writers go
one at a time, so a dispatcher that was paused (SIGSTOP, a long pause, a network cut) and
wakes after losing its lease has each write refused, and steps down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.errors import NotActive
from orchestrator.store.db import Connection, Database

TABLE = (
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, address TEXT NOT NULL,"
    " epoch INTEGER NOT NULL, acquired_at REAL NOT NULL, renewed_at REAL NOT NULL, expires_at REAL NOT NULL)"
)
ACTIVE = "active"
_NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgres": "extract(epoch from clock_timestamp())::float8",
}


@dataclass(frozen=True)
class Lease:
    holder: str
    address: str  # where its API answers (a standby's 503 names it)
    epoch: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    now: float  # the database's time when it was read

    @property
    def expired(self) -> bool:
        return self.expires_at <= self.now

    @property
    def age(self) -> float:
        """Seconds since it was last renewed."""
        return max(0.0, self.now - self.renewed_at)

    def document(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "address": self.address,
            "epoch": self.epoch,
            "age_s": round(self.age, 3),
            "expired": self.expired,
        }


class Leases:
    def __init__(self, db: Database):
        self._db = db
        self._now = _NOW[db.dialect]

    def _read(self, db: Connection) -> Lease | None:
        row = db.execute(
            f"SELECT holder, address, epoch, acquired_at, renewed_at, expires_at, {self._now} FROM leases"
            " WHERE name = ?",
            (ACTIVE,),
        ).fetchone()
        return Lease(*row) if row else None

    def current(self) -> Lease | None:
        with self._db.write(fenced=False, direct=True) as db:  # never fenced: it is how a dispatcher learns it lost
            return self._read(db)

    def acquire(self, holder: str, address: str, ttl: float) -> Lease | None:
        """Take the lease if nobody holds it, it expired, or ``holder`` holds it; the lease
        then held, or None. A new holder gets the next epoch; the same one keeps its own (had
        another held it meanwhile, the epoch would have moved on with that one)."""
        with self._db.write(fenced=False, direct=True) as db:
            lease = self._read(db)
            if lease is not None and not lease.expired and lease.holder != holder:
                return None
            if lease is None:
                db.execute(
                    "INSERT INTO leases (name, holder, address, epoch, acquired_at, renewed_at, expires_at)"
                    f" VALUES (?, ?, ?, 1, {self._now}, {self._now}, {self._now} + ?)",
                    (ACTIVE, holder, address, ttl),
                )
            else:
                # its own lease, expired with nobody else having held it (the database was away):
                # the same epoch, so that its writes under way go on; another's: the next one
                same = lease.holder == holder
                db.execute(
                    f"UPDATE leases SET holder = ?, address = ?, epoch = ?, acquired_at = "
                    f"{'acquired_at' if same else self._now}, renewed_at = {self._now}, expires_at = {self._now} + ?"
                    " WHERE name = ?",
                    (holder, address, lease.epoch if same else lease.epoch + 1, ttl, ACTIVE),
                )
            return self._read(db)

    def renew(self, holder: str, epoch: int, ttl: float) -> bool:
        """Extend the lease ``holder`` holds at ``epoch``, unless it expired or changed hands."""
        with self._db.write(fenced=False, direct=True) as db:
            changed = db.execute(
                f"UPDATE leases SET renewed_at = {self._now}, expires_at = {self._now} + ?"
                f" WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > {self._now}",
                (ttl, ACTIVE, holder, epoch),
            ).rowcount
            return bool(changed == 1)

    def release(self, holder: str, epoch: int) -> None:
        """Give the lease up at once (a clean stop): a standby need not wait for it to expire."""
        with self._db.write(fenced=False, direct=True) as db:
            db.execute(
                f"UPDATE leases SET expires_at = {self._now} WHERE name = ? AND holder = ? AND epoch = ?",
                (ACTIVE, holder, epoch),
            )

    def fence(self, holder: str, epoch: int) -> Any:
        """The check each write transaction of the holder makes first (Database.fence)."""

        def check(db: Connection) -> None:
            row = db.execute(
                f"SELECT 1 FROM leases WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > {self._now}",
                (ACTIVE, holder, epoch),
            ).fetchone()
            if row is None:
                raise NotActive(f"{holder} no longer holds the lease (epoch {epoch}): nothing written")

        return check

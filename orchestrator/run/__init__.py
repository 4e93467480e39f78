"""Running jobs: one attempt, watching it, the warm start, recovery after a restart, and a
suite split over several containers (how it is planned: sharding.py).

May import: results, environment, observe, backends, store and the ground floor
(tests/unit/test_architecture.py)."""

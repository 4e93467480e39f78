"""Dispatching: which queued job runs next and where. The dispatcher's slots, the picker
(the newest of a branch first, coalescing), the bisection of a failure over the commits it
skipped, the merge queue, and the lease that makes one of several dispatchers the active one.

May import: run and every layer below it (tests/unit/test_architecture.py)."""

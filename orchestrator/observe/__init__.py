"""Observing: where commits come from. The mirrors of the watched repositories (Git, through
GitPython), the observer that finds every new commit on the tracked branches and queues it,
and the schedules that queue the heads at set times.

May import: store and the ground floor (tests/unit/test_architecture.py)."""

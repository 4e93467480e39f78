"""What a job leaves behind, and what is read from it: the report a container writes, the
verdict, the result files users read, artifacts and coverage, the capped log, the test
history and its trends, flaky and quarantined tests, the re-run of failures, the search
index's text, the commit's verdict over its Pythons, the metrics, and the webhooks that
tell of it.

May import: environment, observe and every layer below them (tests/unit/test_architecture.py)."""

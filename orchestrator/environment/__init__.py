"""Per-repository environments: what a commit declares it needs to be tested (its
dependencies and test tools), built once per fingerprint into an image of its own.

May import: backends and every layer below it (tests/unit/test_architecture.py)."""

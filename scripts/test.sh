#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh test), checks the code (ruff's lint and format,
# mypy's types: configured in pyproject.toml), then runs the whole test suite: unit tests,
# and integration tests on the real Docker engine with real Git repositories. It ends with
# the 15 slowest tests, so that the time budget stays visible in every log.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
python3 -m ruff check --quiet .
python3 -m ruff format --check --quiet .
python3 -m mypy
exec python3 -m pytest -q -n 3 --durations=15 tests "$@"   # three workers on two cores: most tests wait on containers (tests/conftest.py: what stays one after the other)

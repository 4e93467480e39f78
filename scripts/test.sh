#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh), checks the code (ruff's lint and format,
# mypy's types: configured in pyproject.toml), then runs the whole test suite: unit tests,
# and integration tests on the real Docker engine with real Git repositories.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
python3 -m ruff check --quiet .
python3 -m ruff format --check --quiet .
python3 -m mypy
exec python3 -m pytest -q -n 2 tests "$@"   # two workers (tests/conftest.py: what stays one after the other)

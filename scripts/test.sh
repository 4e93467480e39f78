#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh), then runs the whole test suite: unit tests,
# and integration tests on the real Docker engine with real Git repositories.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec python3 -m pytest -q tests "$@"

#!/usr/bin/env bash
# The main job on a demo repository: sets up only what the demo runs on (scripts/setup.sh
# demo says what first), creates ./demo-repo with a few commits (one passes, one fails, one
# cannot be collected, one fixes it), tests each in its own container with config.yaml, and
# shows the results and how to see them on the dashboard.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
scripts/setup.sh demo

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
commit() { git -C demo-repo add -A && git -C demo-repo -c user.name=Demo -c user.email=demo@example.invalid commit -q -m "$1"; }

say "Creating ./demo-repo (a fresh Git repository) and forgetting earlier demo runs"
rm -rf demo-repo .orchestrator test_results
git init -q -b main demo-repo
mkdir -p demo-repo/tests demo-repo/calc
printf 'def add(a, b):\n    return a + b\n' > demo-repo/calc/__init__.py
printf 'from calc import add\n\ndef test_add():\n    assert add(2, 2) == 4\n' > demo-repo/tests/test_calc.py
commit "Add calc.add with a test"

say "First run: a repository seen for the first time has only its branch heads tested"
python3 -m orchestrator run --once -c config.yaml || true

printf 'def add(a, b):\n    return a - b\n' > demo-repo/calc/__init__.py
commit "Break add (this commit fails)"
printf 'from calc import multiply\n' > demo-repo/tests/test_mul.py
commit "Test a function that does not exist (collection error)"
printf 'def add(a, b):\n    return a + b\n\ndef multiply(a, b):\n    return a * b\n' > demo-repo/calc/__init__.py
printf 'from calc import multiply\n\ndef test_multiply():\n    assert multiply(3, 4) == 12\n' > demo-repo/tests/test_mul.py
commit "Fix add, add multiply"

say "Second run: every new commit is tested, oldest first, each in its own container"
status=0
python3 -m orchestrator run --once -c config.yaml || status=$?

say "orchestrator status -c config.yaml"
python3 -m orchestrator status -c config.yaml
failing=$(git -C demo-repo rev-parse HEAD~2)
say "orchestrator logs ${failing:0:8} -c config.yaml   (the failing commit's container log)"
python3 -m orchestrator logs "${failing:0:8}" -c config.yaml | tail -n 12
say "Result files are in ./test_results/demo/<sha>/ (result.json, output.log, junit.xml)"
ls test_results/demo/*/
echo "run --once exited $status (1: some commit failed, as this demo intends)" >&2
say "Done in $(( $(date +%s) - started )) s. To see these results on the dashboard:"
cat >&2 <<'EOF'
    orchestrator run -c config.yaml      # then open http://127.0.0.1:8888/ (Ctrl-C to stop)
  It keeps watching ./demo-repo: commit to it and the new commit is tested within seconds.
EOF

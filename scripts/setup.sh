#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: the package and its test tools, a Docker
# engine that answers (installed and started if there is none), and the runner image
# (with its Debian base built locally when no registry can be reached).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Installing Debian's chromium and chromium-driver (the dashboard's browser tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: chromium and chromium-driver are missing; the browser tests will fail without them" >&2
  fi
fi

if ! command -v docker-registry >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Installing Debian's docker-registry (the Swarm tests' registry; not started as a service)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null
  else
    echo "setup: docker-registry is missing; the Swarm tests will fail without it" >&2
  fi
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Installing Debian's postgresql (the PostgreSQL store's tests make a cluster of their own; none is started)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "setup: postgresql is missing; the PostgreSQL store's tests will fail without it" >&2
  fi
fi
if [ "$(id -u)" = 0 ] && ! id ci-postgres >/dev/null 2>&1; then
  # initdb refuses to run as root: the tests' clusters run as this user
  useradd --system --no-create-home --shell /usr/sbin/nologin ci-postgres
fi

say "Installing the orchestrator and its test tools (pip)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test]'

if ! timeout 20 docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    say "No Docker engine: installing Debian's docker.io"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  if ! timeout 20 docker info >/dev/null 2>&1; then
    say "Starting dockerd"
    nohup dockerd >/var/log/orchestrator-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  timeout 20 docker info >/dev/null 2>&1 || { echo "setup: the Docker engine does not answer (see /var/log/orchestrator-dockerd.log)" >&2; exit 3; }
fi

say "Building the runner images, Python 3.11 and 3.13 (seconds when nothing changed)"
config=$(mktemp -d)
trap 'rm -rf "$config"' EXIT
printf 'repositories:\n  - name: setup\n    url: %s\nstate_dir: %s/state\nresults_dir: %s/results\n' \
  "$PWD" "$config" "$config" > "$config/config.yaml"
python3 -m orchestrator image build -c "$config/config.yaml" --python 3.11 --python 3.13

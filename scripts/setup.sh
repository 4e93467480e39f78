#!/usr/bin/env bash
# What a fresh machine needs, idempotent, for one of two uses:
#
#   scripts/setup.sh demo   this package without its test tools, a Docker engine that answers,
#                           and the runner image of the default Python (what demo.sh runs on)
#   scripts/setup.sh test   all of that, the test tools, Debian's chromium and chromium-driver,
#                           docker-registry and postgresql, and the Python 3.13 runner image
#
# It says what it will install before it installs anything. Where no container registry
# answers, a runner image's Debian base is built here (mmdebstrap, as root); that build and
# the Python packages' install go side by side, as they wait on different servers.
set -euo pipefail
cd "$(dirname "$0")/.."
use=${1:-test}
case $use in demo|test) ;; *) echo "usage: scripts/setup.sh demo|test" >&2; exit 2 ;; esac

started=$SECONDS
say() { printf '\033[1m==> [%3d s] %s\033[0m\n' $((SECONDS - started)) "$*" >&2; }
is_root() { [ "$(id -u)" = 0 ]; }
engine_answers() { timeout 20 docker info >/dev/null 2>&1; }
has_image() { timeout 20 docker image inspect "$1" >/dev/null 2>&1; }
python=$(python3 -c 'import sys; print(sys.executable)')

# -- what is missing
debs=()   # wanted first: the engine and the bases need them
later=()  # the rest, installed while the bases build
if [ "$use" = test ]; then
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || later+=(chromium chromium-driver)
  command -v docker-registry >/dev/null 2>&1 || later+=(docker-registry)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || later+=(postgresql)
fi
engine_answers || command -v dockerd >/dev/null 2>&1 || debs+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || debs+=(mmdebstrap)
pythons=(3.11)
[ "$use" = test ] && pythons+=(3.13 3.14 3.15 pypy3.11)   # the suite runs on each
images=()
for version in "${pythons[@]}"; do
  tag=ci-runner:latest; [ "$version" = 3.11 ] || tag=ci-runner:py$version
  [ "$version" = pypy3.11 ] && tag=ci-runner:pypy3.11
  engine_answers && has_image "$tag" || images+=("$tag")
done
extras=""; [ "$use" = test ] && extras="[test]"

say "Setting up for the ${use}: what is missing will be installed"
[ $((${#debs[@]} + ${#later[@]})) -eq 0 ] || echo "  Debian packages (apt): ${debs[*]} ${later[*]}" >&2
echo "  Python packages (uv, into $python): this package${extras:+ with its test tools}, editable" >&2
engine_answers || echo "  a Docker engine: dockerd, started in the background" >&2
[ ${#images[@]} -eq 0 ] || echo "  runner images: ${images[*]} (each one's Debian base built here if no registry has one)" >&2

apt_install() {
  [ $# -gt 0 ] || return 0
  if is_root && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install $*"
    [ -n "${apt_updated:-}" ] || { apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "setup: missing $*, and only root can install them (apt-get install $*)" >&2
  fi
}
# -- the Python packages, from the start: they wait on PyPI while apt and the bases wait on Debian
say "Installing the orchestrator${extras:+ and its test tools} (uv), in the background"
(
  python3 -c 'import uv' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore uv
  # compiled now, as pip would: with PYTHONDONTWRITEBYTECODE set (these machines set it) every
  # process would compile each module it imports, every time (1.8 s of a 2.7 s command here)
  python3 -m uv pip install --quiet --compile-bytecode --python "$python" -e ".$extras"
  python3 -m compileall -q -j 0 orchestrator runner_image
) >/tmp/orchestrator-python.log 2>&1 &
python_pid=$!

apt_install "${debs[@]}"

if ! engine_answers; then
  say "Starting dockerd"
  nohup dockerd >/var/log/orchestrator-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 1; done
  engine_answers || { echo "setup: the Docker engine does not answer (see /var/log/orchestrator-dockerd.log)" >&2; exit 3; }
fi

# -- each release's Debian base, built beside the installs when no registry has one; then
# its runner images, as soon as it is there (each release's images beside the others')
declare -A building=() versions_of=()   # base build pid -> release; release -> its Pythons
ready=()                                  # releases whose images can be built now
if [ ${#images[@]} -gt 0 ]; then
  # from the source: pythons.py needs nothing installed to say which bases it falls back to
  # (a line per Debian release: its Pythons, official base or None, local base, moving, interpreters)
  while read -r release names official fallback moving interpreters; do
    versions_of[$release]=${names//,/ }
    if [ "$moving" = True ]; then   # a testing release: pinned by the day it was built
      [ -n "$(docker images -q --filter "label=orchestrator.base=$fallback")" ] && { ready+=("$release"); continue; }
      tag=$fallback-$(date -u +%Y%m%d)
    else
      has_image "$fallback" && { ready+=("$release"); continue; }
      tag=$fallback
    fi
    if [ "$official" != None ] && { has_image "$official" || timeout 60 docker pull -q "$official" >/dev/null 2>&1; }; then
      ready+=("$release"); continue
    fi
    say "Building the Debian $release base $tag in the background"
    # shellcheck disable=SC2086 # interpreters: a list of package names
    BASE_NAME=$fallback bash runner_image/bootstrap-base.sh "$tag" "$release" $interpreters \
      >"/tmp/orchestrator-base-$release.log" 2>&1 &
    building[$!]=$release
  done < <(PYTHONPATH=. python3 -c "from orchestrator import pythons as p
releases = {}
for name in '${pythons[*]}'.split():
    releases.setdefault(p.OFFERED[name].debian, []).append(name)
for names in releases.values():
    d = p.OFFERED[names[0]]
    print(d.debian, ','.join(names), d.base, d.fallback_base, d.release.moving, *d.release.interpreters)")
fi

apt_install "${later[@]}"
if [ "$use" = test ] && is_root && ! id ci-postgres >/dev/null 2>&1; then
  # initdb refuses to run as root: the tests' clusters run as this user
  useradd --system --no-create-home --shell /usr/sbin/nologin ci-postgres
fi

if ! wait "$python_pid"; then
  tail -n 5 /tmp/orchestrator-python.log >&2
  echo "setup: installing the Python packages failed (the whole log: /tmp/orchestrator-python.log)" >&2
  exit 3
fi
say "The orchestrator is installed"
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi   # pyenv's shims learn the new `orchestrator`

tidy() { rm -f /tmp/orchestrator-python.log /tmp/orchestrator-base-*.log /tmp/orchestrator-images-*.log; }   # kept only to read a failure
[ ${#images[@]} -gt 0 ] || { tidy; exit 0; }
config=$(mktemp -d)
trap 'rm -rf "$config"' EXIT
printf 'repositories:\n  - name: setup\n    url: %s\nstate_dir: %s/state\nresults_dir: %s/results\n' \
  "$PWD" "$config" "$config" > "$config/config.yaml"
rm -f /tmp/orchestrator-images-*.log
declare -A imaging=()   # image build pid -> its Python
build_images() {   # each Python's image beside the others': a build mostly waits on the engine
  local release=$1
  say "Building the runner images of Python ${versions_of[$release]} (Debian $release)"
  for version in ${versions_of[$release]}; do
    python3 -m orchestrator image build -c "$config/config.yaml" --python "$version" \
      >"/tmp/orchestrator-images-$version.log" 2>&1 &
    imaging[$!]=$version
  done
}
for release in "${ready[@]}"; do build_images "$release"; done
while [ ${#building[@]} -gt 0 ]; do   # each base as it is done
  status=0; wait -n -p done "${!building[@]}" || status=$?
  release=${building[$done]}; unset "building[$done]"
  if [ $status -ne 0 ]; then
    tail -n 5 "/tmp/orchestrator-base-$release.log" >&2
    echo "setup: building the Debian $release base failed (the whole log: /tmp/orchestrator-base-$release.log)" >&2
    exit 3
  fi
  build_images "$release"
done
for pid in "${!imaging[@]}"; do
  if ! wait "$pid"; then
    tail -n 5 "/tmp/orchestrator-images-${imaging[$pid]}.log" >&2
    echo "setup: building the Python ${imaging[$pid]} runner image failed (the whole log: /tmp/orchestrator-images-${imaging[$pid]}.log)" >&2
    exit 3
  fi
done
say "The runner images are built: $(grep -h '^Built' /tmp/orchestrator-images-*.log | cut -d' ' -f2 | sort | tr '\n' ' ')"
tidy

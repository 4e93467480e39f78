#!/usr/bin/env bash
# Builds a minimal Debian image with Debian's Python 3 and pip from PyPI, for hosts that
# reach no container registry: mmdebstrap fills a root file system from the host's own
# Debian mirror and `docker import` turns it into an image. (mmdebstrap, not debootstrap:
# it fetches with apt, in parallel, and takes about 40% of debootstrap's time here.)
#
#   bootstrap-base.sh TAG [SUITE [INTERPRETER...]]
#
# INTERPRETER: a package of the release whose command is its name (python3.15, pypy3),
# installed beside python3, each with pip. The image's labels record the day it was built
# and the version of each interpreter's package: a testing release is pinned by them.
# BASE_NAME (optional): the `orchestrator.base` label, by which the newest is found.
set -euo pipefail

tag=${1:?usage: bootstrap-base.sh TAG [SUITE [INTERPRETER...]]}
suite=${2:-bookworm}
shift $(( $# < 2 ? $# : 2 ))
interpreters=("$@")

if ! command -v mmdebstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap-base: installing mmdebstrap" >&2
    install=(apt-get install -y -qq --no-install-recommends mmdebstrap)
    "${install[@]}" >/dev/null 2>&1 || { apt-get update -qq && "${install[@]}" >/dev/null; }
  else
    echo "bootstrap-base: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2
    exit 1
  fi
fi
if [ "$(id -u)" != 0 ]; then
  echo "bootstrap-base: building a Debian base needs root" >&2
  exit 1
fi

# Use the mirror the host's apt already uses, so this works wherever apt does.
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$2 !~ /security/ {print $2; exit}' || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '$2 !~ /security/ {print $2; exit}' || true)
fi

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/orchestrator-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT

echo "bootstrap-base: mmdebstrap $suite from ${mirror:-the default mirror} (a minute or so)" >&2
include=python3,ca-certificates
for interpreter in "${interpreters[@]}"; do include=$include,$interpreter; done
# Signatures are checked with the host's keyring; the Release file's Valid-Until is not (a
# snapshot mirror, or a host clock ahead of the mirror's, would refuse every release; the
# debootstrap this replaced never checked it either).
# Documentation, manuals and translations are never unpacked: a smaller tree to import.
mmdebstrap --quiet --mode=root --variant=minbase --include="$include" \
  --aptopt='Acquire::Check-Valid-Until "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  "$suite" "$rootfs" "${mirror:-http://deb.debian.org/debian}" 2>&1 | { grep -v '^W: Download is performed unsandboxed' >&2 || true; }

# pip from PyPI into /usr/local, as in the official python images, not Debian's python3-pip:
# that one brings Debian's own copies of packaging, setuptools and friends, which pip cannot
# uninstall when a project's environment needs other versions (uninstall-no-record-file).
echo "bootstrap-base: installing pip from PyPI (downloaded on this host)" >&2
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
  --dest "$rootfs/tmp/pip" pip >&2
wheel=$(ls "$rootfs"/tmp/pip/pip-*.whl)
for interpreter in python3 "${interpreters[@]}"; do
  chroot "$rootfs" env PIP_BREAK_SYSTEM_PACKAGES=1 "$interpreter" "/tmp/pip/${wheel##*/}/pip" install --quiet \
    --no-index --no-cache-dir --disable-pip-version-check --root-user-action=ignore "/tmp/pip/${wheel##*/}" >&2
done
rm -rf "$rootfs/tmp/pip"
packages=$(chroot "$rootfs" dpkg-query -W -f '${Package}=${Version} ' python3 "${interpreters[@]}")

# Keep the image small: package caches and docs are not needed to run tests.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

echo "bootstrap-base: importing as $tag" >&2
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
  --change "LABEL orchestrator.base=${BASE_NAME:-$tag} orchestrator.base.day=$(date -u +%Y%m%d) \
orchestrator.base.packages=\"${packages% }\"" - "$tag" >/dev/null
echo "$tag"

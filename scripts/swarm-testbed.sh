#!/usr/bin/env bash
# A real Docker Swarm on one machine, for tests and for trying the Swarm backend: this
# host's engine is the manager; each worker is another dockerd in a network namespace of its
# own, on a bridge this script creates; a registry (Debian's docker-registry) with a
# self-signed certificate serves images to every node. Nothing here reaches any address but
# the bridge's own.
#
#   swarm-testbed.sh up DIR [WORKERS]   prints KEY=VALUE lines: MANAGER, REGISTRY, WORKERn_HOST, WORKERn_PID
#   swarm-testbed.sh restart DIR N      starts worker N's engine again (after a test killed it); prints its pid
#   swarm-testbed.sh down DIR           ends everything `up` started there, by its own pids
#
# Names carry a prefix made from DIR, so that two test beds never touch each other's parts.
set -euo pipefail

action=${1:?usage: swarm-testbed.sh up|down DIR [WORKERS]}
workers=${3:-2}   # for restart: the worker's number
# The engine's swarm is one per machine: who holds it, so that a test bed whose owner was
# killed (a session or CI run stopped mid-suite) is torn down by the next one, not left
# to make every later run fail. "OWNER-PID OWNER-START DIR"
holder=/var/tmp/orchestrator-swarm-testbed.owner

names() {   # the names and addresses of the test bed in folder $1
  dir=$(realpath -m "$1")
  prefix=ob$(printf '%s' "$dir" | md5sum | cut -c1-4)    # ob + 4 hex: names stay within IFNAMSIZ
  net=${SWARM_TESTBED_NET:-10.231.$((0x$(printf '%s' "$dir" | md5sum | cut -c5-6) % 200 + 20))}
  gateway=$net.1
  registry=$gateway:5000
  certs=/etc/docker/certs.d/$registry
}
names "${2:?usage: swarm-testbed.sh up|down DIR [WORKERS]}"

say() { printf 'swarm-testbed: %s\n' "$*" >&2; }

end_pid() {   # TERM, then KILL after a while: only a pid this test bed recorded
  local pid=$1 waited=0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ $waited -lt 150 ]; do sleep 0.1; waited=$((waited + 1)); done
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  set +e   # tear down as much as there is, whatever fails
  if [ -d "$dir" ]; then
    for node in "$dir"/w*; do
      [ -d "$node" ] || continue
      if [ -f "$node/pid" ]; then
        DOCKER_HOST=unix://$node/docker.sock timeout 10 docker swarm leave --force >/dev/null 2>&1 || true
        end_pid "$(cat "$node/pid")"
      fi
    done
    [ -f "$dir/registry.pid" ] && end_pid "$(cat "$dir/registry.pid")"
  fi
  # Whatever still names this folder is ours: a killed engine's containerd and shims, and a
  # registry or engine whose folder was moved or removed under it (it would hold the address).
  for proc in /proc/[0-9]*; do
    if tr '\0' ' ' < "$proc/cmdline" 2>/dev/null | grep -qF -- "$dir/"; then end_pid "${proc#/proc/}"; fi
  done
  grep -F " $dir/" /proc/mounts | awk '{print $2}' | sort -r | while read -r mount; do
    umount -l "$mount" 2>/dev/null || true
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${prefix}-w" || true); do ip netns del "$ns" || true; done
  for veth in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^${prefix}h" || true); do
    ip link del "$veth" 2>/dev/null || true   # a namespace may outlive its name
  done
  if [ -f "$dir/manager" ]; then
    timeout 30 docker swarm leave --force >/dev/null 2>&1 || true
  elif [ "$(docker info --format '{{.Swarm.NodeAddr}}' 2>/dev/null)" = "$gateway" ]; then
    # our swarm, whose folder (and its record of the gwbridge) is gone: leave it, and the
    # gwbridge it made goes too unless something else uses it
    timeout 30 docker swarm leave --force >/dev/null 2>&1 || true
    timeout 30 docker network rm docker_gwbridge >/dev/null 2>&1 || true
  fi
  if [ -f "$dir/gwbridge" ]; then
    timeout 30 docker network rm docker_gwbridge >/dev/null 2>&1 || true
  fi
  ip link del "${prefix}br" 2>/dev/null || true
  rm -rf "$certs"
  rm -rf "$dir"
  if [ -f "$holder" ] && [ "$(cut -d' ' -f3- "$holder")" = "$dir" ]; then rm -f "$holder"; fi
}

started() { cut -d' ' -f22 "/proc/$1/stat" 2>/dev/null; }   # a pid's start time: pids are reused

take_over() {   # the engine is in a swarm: a killed test bed's is torn down, anything else refused
  local addr owner_pid owner_start owner_dir
  addr=$(docker info --format '{{.Swarm.NodeAddr}}')
  if [ -f "$holder" ]; then
    read -r owner_pid owner_start owner_dir < "$holder"
    if [ -n "$owner_pid" ] && [ "$(started "$owner_pid")" = "$owner_start" ]; then
      say "another test bed ($owner_dir, for pid $owner_pid) holds this engine's swarm; end it first"
      exit 3
    fi
    say "tearing down the test bed its killed owner left in $owner_dir"
    ( names "$owner_dir"; down )
    rm -f "$holder"
  fi
  if [[ $addr == 10.231.* ]] && [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != inactive ]; then
    # its folder is gone, or it was made before owners were recorded
    say "leaving the swarm a killed test bed left (manager on $addr)"
    timeout 30 docker swarm leave --force >/dev/null 2>&1 || true
    for link in $(ip -o addr show to "$addr" | awk '{print $2}'); do
      for ns in $(ip netns list | awk '{print $1}' | grep "^${link%br}-w" || true); do ip netns del "$ns" || true; done
      for veth in $(ip -o link show master "$link" | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$veth" || true; done
      ip link del "$link" 2>/dev/null || true
    done
    timeout 30 docker network rm docker_gwbridge >/dev/null 2>&1 || true   # swarm init made it; unused now
  fi
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != inactive ]; then
    say "this host's engine is already part of a swarm; leave it first (docker swarm leave)"
    exit 3
  fi
}

start_worker() {   # the engine of worker $1, in its namespace, under its own hostname
  local i=$1 node=$dir/w$1
  rm -f "$node/pid"
  # nsenter, not `ip netns exec`, which remounts /sys and hides the cgroups from dockerd
  nsenter --net="/var/run/netns/${prefix}-w$i" unshare --uts sh -c "hostname ${prefix}-w$i && exec dockerd \
    --config-file $node/daemon.json --data-root $node/root --exec-root $node/exec --pidfile $node/pid \
    -H unix://$node/docker.sock --iptables=false --ip-masq=false --bridge=none" >>"$node/dockerd.log" 2>&1 &
  for _ in $(seq 1 150); do
    [ -f "$node/pid" ] && DOCKER_HOST=unix://$node/docker.sock timeout 5 docker info >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  say "worker $i: its engine did not answer (see $node/dockerd.log)"
  return 1
}

up() {
  [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = inactive ] || take_over
  mkdir -p "$dir"
  command -v docker-registry >/dev/null || { say "docker-registry is missing (apt-get install docker-registry)"; exit 3; }

  ip link add "${prefix}br" type bridge
  ip addr add "$gateway/24" dev "${prefix}br"
  ip link set "${prefix}br" up

  say "registry on $registry (TLS, self-signed)"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$gateway" -addext "subjectAltName=IP:$gateway" \
    -keyout "$dir/registry.key" -out "$dir/registry.crt" 2>/dev/null
  mkdir -p "$certs" && cp "$dir/registry.crt" "$certs/ca.crt"
  cat > "$dir/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $dir/registry}, delete: {enabled: true}}
http: {addr: "$registry", tls: {certificate: $dir/registry.crt, key: $dir/registry.key}}
EOF
  docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
  echo $! > "$dir/registry.pid"

  driver=$(docker info --format '{{.Driver}}')
  say "manager: this host's engine, on $gateway"
  # swarm init creates docker_gwbridge on this engine; leaving the swarm does not remove it
  [ -n "$(docker network ls -q --filter name='^docker_gwbridge$')" ] || touch "$dir/gwbridge"
  docker swarm init --advertise-addr "$gateway" --listen-addr "$gateway:2377" >/dev/null
  touch "$dir/manager"
  echo "$PPID $(started $PPID) $dir" > "$holder"
  token=$(docker swarm join-token -q worker)

  for i in $(seq 1 "$workers"); do
    node=$dir/w$i ns=${prefix}-w$i
    mkdir -p "$node"
    ip netns add "$ns"
    ip link add "${prefix}h$i" type veth peer name "${prefix}p$i"
    ip link set "${prefix}p$i" netns "$ns"
    ip link set "${prefix}h$i" master "${prefix}br" up
    ip netns exec "$ns" sh -c "ip addr add $net.$((i + 1))/24 dev ${prefix}p$i && ip link set ${prefix}p$i up && ip link set lo up"
    printf '{"storage-driver": "%s", "log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "2"}}\n' \
      "$driver" > "$node/daemon.json"
    start_worker "$i"
    DOCKER_HOST=unix://$node/docker.sock timeout 60 docker swarm join --token "$token" "$gateway:2377" >/dev/null
    say "worker ${prefix}-w$i on $net.$((i + 1)) joined"
  done
  answered=
  for _ in $(seq 1 100); do
    if curl -sf --cacert "$dir/registry.crt" "https://$registry/v2/" >/dev/null; then answered=1; break; fi
    sleep 0.1
  done
  # with this test bed's certificate, from its own process: not another that holds the address
  if [ -z "$answered" ] || ! kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then
    say "the registry on $registry did not answer with this test bed's certificate (see $dir/registry.log)"
    exit 1
  fi
  echo "MANAGER=unix:///var/run/docker.sock"
  echo "REGISTRY=$registry"
  for i in $(seq 1 "$workers"); do
    echo "WORKER${i}_HOST=unix://$dir/w$i/docker.sock"
    echo "WORKER${i}_PID=$(cat "$dir/w$i/pid")"
    echo "WORKER${i}_NAME=${prefix}-w$i"
  done
}

case $action in
  up) trap 'status=$?; [ $status -eq 0 ] || { say "set-up failed; tearing down"; down; }' EXIT; up ;;
  restart) start_worker "${3:?usage: swarm-testbed.sh restart DIR N}" && cat "$dir/w$3/pid" ;;
  down) down ;;
  *) say "unknown action $action"; exit 2 ;;
esac

# common.sh — sourced by swarm-up.sh, swarm-node.sh and swarm-down.sh: the lab's settings and how one node's
# dockerd is started. Not run on its own.
#
# Settings (environment; swarm-up.sh records them in $BASE/lab.env, which the other scripts read back, so a
# node restarts with the same flags and a lab is torn down by what it was, not by what the caller guesses):
#   BASE        state dir (sockets unix://$BASE/nodeN.sock, each node's data, logs, pidfiles)
#   NODES       number of nodes (1..9)
#   NET         first three octets: the host is $NET.1, node n is $NET.1n
#   NS_PREFIX   netns names: ${NS_PREFIX}hub (the bridge), ${NS_PREFIX}ns1.. (the nodes); also the cgroup parent
#   HOST_IF     the host-side veth (at most 15 characters)
#   POOL        each dockerd's --default-address-pool base (its docker_gwbridge and local networks)
#   SWARM_POOL  `swarm init --default-addr-pool` (the overlay networks)
#   NODE_PREFIX node n's hostname, hence its Swarm node name: ${NODE_PREFIX}n
#   DOCKERD_ARGS_n  extra dockerd flags of node n, e.g. "--node-generic-resource gpu=GPU-fake-0"
#   IMAGES      host images copied onto the nodes in IMAGE_NODES (docker save | docker load)
#   IMAGE_NODES the nodes that get IMAGES (default "1": node 1 only)

lab_defaults() {
  BASE=${BASE:-/tmp/chalk-swarm-lab}; NODES=${NODES:-2}; NET=${NET:-10.232.0}; NS_PREFIX=${NS_PREFIX:-chk}
  HOST_IF=${HOST_IF:-${NS_PREFIX}host}; POOL=${POOL:-10.233.0.0/18}; SWARM_POOL=${SWARM_POOL:-10.234.0.0/18}
  NODE_PREFIX=${NODE_PREFIX:-swnode}; IMAGES=${IMAGES:-}; IMAGE_NODES=${IMAGE_NODES:-1}
  CGROUP=${NS_PREFIX}lab    # cgroup parent of node n: /${CGROUP}-n$n
  HUB=${NS_PREFIX}hub
}

lab_check() {
  # The developer's lab of the recipe (/tmp/swarm-try: swhub, swns1.., swhost, 10.231.0.x) is never ours.
  [[ $NS_PREFIX =~ ^[a-z][a-z0-9]{0,7}$ ]] || { echo "NS_PREFIX=$NS_PREFIX: want 1-8 of [a-z0-9], a letter first" >&2; return 2; }
  [ "$NS_PREFIX" != sw ] && [ "$HOST_IF" != swhost ] && [ "$NET" != 10.231.0 ] \
    || { echo "NS_PREFIX=$NS_PREFIX HOST_IF=$HOST_IF NET=$NET: those belong to the recipe's lab (swhub/swhost/10.231.0.x)" >&2; return 2; }
  [ ${#HOST_IF} -le 15 ] || { echo "HOST_IF=$HOST_IF: an interface name has at most 15 characters" >&2; return 2; }
  [[ $NET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "NET=$NET: want the first three octets, e.g. 10.232.0" >&2; return 2; }
  [[ $NODES =~ ^[1-9]$ ]] || { echo "NODES=$NODES: want 1..9 (node n is \$NET.1n)" >&2; return 2; }
  case $BASE in /|"") echo "BASE=$BASE: not a state dir" >&2; return 2;; esac
}

# Read back what swarm-up.sh recorded, when it did.
lab_load() {
  if [ -f "$BASE/lab.env" ]; then
    # shellcheck disable=SC1091
    . "$BASE/lab.env"
  fi
  lab_defaults
}

node_sock() { echo "unix://$BASE/node$1.sock"; }

# Start node $1's dockerd in its netns, with its own hostname (UTS namespace) and the cgroup hierarchies
# re-mounted: `ip netns exec` gives a private mount namespace with a fresh /sys, which hides them
# ("failed to start daemon: Devices cgroup isn't mounted"). Backgrounded; the pidfile names the dockerd.
# A pidfile left by a dockerd that died (or a zombie of it: this machine's init reaps late) makes dockerd refuse
# to start ("pid file found"): it goes first.
start_dockerd() {
  local n=$1 D=$BASE/n$1 extra_var="DOCKERD_ARGS_$1" cgmounts
  local -a extra
  read -r -a extra <<<"${!extra_var:-}"
  [ -n "$(dockerd_pid "$n")" ] && { echo "node $n: its dockerd runs already (pid $(dockerd_pid "$n"))" >&2; return 1; }
  rm -f "$D/dockerd.pid"
  # Likewise its containerd's: a dockerd adopts the containerd its pidfile names while `kill -0` finds it, and a
  # zombie's never answers ("timeout waiting for containerd to start"). A live one of this node's is kept.
  local cp
  cp=$(cat "$D/exec/containerd/containerd.pid" 2>/dev/null || true)
  if [ -n "$cp" ] && ! { alive "$cp" && tr '\0' ' ' 2>/dev/null <"/proc/$cp/cmdline" | grep -qF "$D/exec/containerd"; }; then
    rm -f "$D/exec/containerd/containerd.pid"
  fi
  mkdir -p "$D/data" "$D/exec"
  # Its own config file (so /etc/docker/daemon.json is never read) and its own key (distinct engine IDs).
  [ -f "$D/daemon.json" ] || echo "{\"deprecated-key-path\": \"$D/key.json\"}" > "$D/daemon.json"
  cgmounts=$(awk '$3=="cgroup"||$3=="cgroup2"{o=$4; gsub(/(^|,)(rw|relatime)/,"",o); sub(/^,/,"",o); print $3" "$2" "(o==""?"-":o)}' /proc/mounts | tr '\n' ';')
  # stdin from /dev/null, all output to the node's log: the dockerd holds nothing of its caller's.
  ip netns exec "${NS_PREFIX}ns$n" unshare --uts bash -c '
    set -e
    mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup
    IFS=";"; for m in $0; do IFS=" " read -r t p o <<<"$m"; mkdir -p "$p"
      if [ "$o" = "-" ]; then mount -t "$t" "$t" "$p"; else mount -t "$t" -o "$o" "$t" "$p"; fi; done; unset IFS
    hostname "$1"; shift
    exec "$@"' "$cgmounts" "$NODE_PREFIX$n" dockerd \
      --config-file "$D/daemon.json" --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/dockerd.pid" \
      -H "$(node_sock "$n")" --bridge=none --storage-driver=overlay2 --cgroup-parent="/$CGROUP-n$n" \
      --insecure-registry "$NET.1:5000" --default-address-pool "base=$POOL,size=24" "${extra[@]}" \
      </dev/null >>"$D/dockerd.log" 2>&1 &
  STARTED_PID=$!  # ip netns exec, unshare and bash -c all exec: this is the dockerd
}

# Wait (up to $2 s, default 60) for node $1's engine to answer; fail at once when its dockerd (pid $3) exits.
wait_engine() {
  local n=$1 limit=${2:-60} i
  local pid=${3:-}
  for i in $(seq 1 $((limit * 5))); do
    docker -H "$(node_sock "$n")" version >/dev/null 2>&1 && return 0
    if [ -n "$pid" ] && ! alive "$pid"; then
      echo "node $n: dockerd (pid $pid) exited; the end of $BASE/n$n/dockerd.log:" >&2
      tail -n 20 "$BASE/n$n/dockerd.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
  echo "node $n: dockerd did not answer on $(node_sock "$n") within ${limit}s; the end of $BASE/n$n/dockerd.log:" >&2
  tail -n 20 "$BASE/n$n/dockerd.log" >&2 || true
  return 1
}

# Whether process $1 runs: a zombie has ended (an init that reaps late, or never, leaves one; `kill -0` says yes).
alive() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  case ${st%% *} in Z|X) return 1;; *) return 0;; esac
}

# The pid in node $1's dockerd pidfile when that process is alive and is that dockerd (its command line names
# the pidfile: a stale pidfile whose pid was reused by another process names nothing), else nothing.
dockerd_pid() {
  local p
  p=$(cat "$BASE/n$1/dockerd.pid" 2>/dev/null || true)
  [ -n "$p" ] && tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF -- "--pidfile $BASE/n$1/dockerd.pid" && echo "$p"
  return 0
}

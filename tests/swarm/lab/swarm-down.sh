#!/bin/bash
# swarm-down.sh — undo swarm-up.sh for one BASE: kill each node's dockerd by its pidfile, then what a killed
# dockerd leaves behind (its containerd and each container's init and shim, by their own pidfiles), delete the
# namespaces, the host veth, the cgroups and the state dir. Safe on a lab that is half up or already gone, and
# on one left by a crashed run. Never kills a process by name. Run as root.
#
#   BASE=/tmp/chalk-swarm-lab-0 tests/swarm/lab/swarm-down.sh
#
# The lab's names come from $BASE/lab.env (written first by swarm-up.sh); without it, from the environment.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
BASE=${BASE:?set BASE to the lab state dir}
lab_load
lab_check || exit 2

# SIGKILL, not SIGTERM: a node's graceful shutdown takes ~5 s and the lab is thrown away; what a killed dockerd
# leaves (containerd, shims, containers) goes next, by its own pidfiles.
PIDS=()
for n in $(seq 1 "$NODES"); do
  p=$(dockerd_pid "$n"); [ -n "$p" ] && kill -KILL "$p" && PIDS+=("$p")
done
for p in "${PIDS[@]}"; do
  for _ in $(seq 1 100); do alive "$p" || break; sleep 0.05; done
done
for n in $(seq 1 "$NODES"); do
  d=$BASE/n$n
  [ -d "$d" ] || continue
  # Left behind when a dockerd was killed -9: its containerd, and each container's init and shim (init's parent).
  p=$(cat "$d/exec/containerd/containerd.pid" 2>/dev/null || true)
  [ -n "$p" ] && tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF "$d/exec/containerd" && kill -KILL "$p"
  # A pid from a pidfile is killed only when it is still this node's: the init in the node's cgroup parent, the
  # shim naming the node's containerd (a stale pidfile's pid may belong to anything by now).
  for pf in "$d"/exec/containerd/daemon/io.containerd.runtime.v2.task/moby/*/init.pid; do
    [ -f "$pf" ] || continue
    i=$(cat "$pf"); s=$(cat "/proc/$i/stat" 2>/dev/null || true); s=${s##*) }; s=$(echo "$s" | cut -d' ' -f2)
    grep -qF ":/$CGROUP-n$n/" "/proc/$i/cgroup" 2>/dev/null || continue
    kill -KILL "$i" 2>/dev/null
    [ -n "$s" ] && [ "$s" != 1 ] && tr '\0' ' ' 2>/dev/null <"/proc/$s/cmdline" | grep -qF "$d/exec/containerd" \
      && kill -KILL "$s" 2>/dev/null
  done
done
# Anything still inside this lab's own network namespaces was started by this lab (say so: a pidfile missed it).
for ns in $(seq -f "${NS_PREFIX}ns%g" 1 "$NODES") "$HUB"; do
  ip netns list | awk '{print $1}' | grep -qx "$ns" || continue
  for _ in $(seq 1 30); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
  left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
  if [ -n "$left" ]; then
    echo "netns $ns: processes no pidfile named are still in it: $left- SIGKILL" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null
  fi
done
for ns in $(seq -f "${NS_PREFIX}ns%g" 1 "$NODES") "$HUB"; do
  ip netns list | awk '{print $1}' | grep -qx "$ns" && ip netns del "$ns"
done
ip link show "$HOST_IF" >/dev/null 2>&1 && ip link del "$HOST_IF"
for c in /sys/fs/cgroup/*/"$CGROUP"-n[0-9]; do
  [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
done
[ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ] && umount /run/netns 2>/dev/null && rmdir /run/netns
rm -rf "$BASE"
exit 0

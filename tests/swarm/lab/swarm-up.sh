#!/bin/bash
# swarm-up.sh — stand up an N-node Docker Swarm on this one machine for chalkd's tests: each node a separate
# dockerd in its own network namespace, joined as one cluster, without touching the host's dockerd. Run as root.
# Adapted from the recipe in shared/swarm-lab (Debian bookworm, docker.io 20.10.24). Settings: see common.sh.
#
#   BASE=/tmp/chalk-swarm-lab-0 NET=10.232.0 NS_PREFIX=chk0 DOCKERD_ARGS_2="--node-generic-resource gpu=GPU-fake-0" \
#     IMAGES=python:3.11-slim tests/swarm/lab/swarm-up.sh
#   docker -H unix:///tmp/chalk-swarm-lab-0/node1.sock node ls
#
# A lab already at $BASE (or holding these namespaces) is refused: run swarm-down.sh for it first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
lab_defaults; lab_check
t0=$(date +%s%N)
if [ -e "$BASE/lab.env" ] || ip netns list | awk '{print $1}' | grep -qx "$HUB" || ip link show "$HOST_IF" >/dev/null 2>&1; then
  echo "a lab is already at BASE=$BASE (or netns $HUB / link $HOST_IF exists): run swarm-down.sh for it first" >&2
  exit 1
fi
mkdir -p "$BASE"
# Recorded first: a run that dies half-way still leaves what swarm-down.sh needs to undo it.
{
  declare -p BASE NODES NET NS_PREFIX HOST_IF POOL SWARM_POOL NODE_PREFIX IMAGES IMAGE_NODES
  for n in $(seq 1 "$NODES"); do v=DOCKERD_ARGS_$n; declare -p "$v" 2>/dev/null || echo "declare -- $v=''"; done
} | sed 's/^declare -[-a-zA-Z]* /declare -g /' > "$BASE/lab.env"

# 1. network: the bridge lives in its own netns, so node<->node frames never cross the host's iptables FORWARD
#    chain (the host dockerd sets its policy to DROP and bridge-nf-call-iptables=1). No default route in the
#    nodes: nothing leaves the machine.
ip netns add "$HUB"
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" link set br0 up
ip link add "$HOST_IF" type veth peer name host netns "$HUB"      # host <-> hub: chalkd, a registry, curl
ip -n "$HUB" link set host master br0 up
ip addr add "$NET.1/24" dev "$HOST_IF"; ip link set "$HOST_IF" up
for n in $(seq 1 "$NODES"); do
  ip netns add "${NS_PREFIX}ns$n"
  ip -n "${NS_PREFIX}ns$n" link add eth0 type veth peer name "n$n" netns "$HUB"
  ip -n "$HUB" link set "n$n" master br0 up
  ip -n "${NS_PREFIX}ns$n" addr add "$NET.1$n/24" dev eth0
  ip -n "${NS_PREFIX}ns$n" link set eth0 up; ip -n "${NS_PREFIX}ns$n" link set lo up
done

# 2. one dockerd per node
STARTED=()
for n in $(seq 1 "$NODES"); do start_dockerd "$n"; STARTED[n]=$STARTED_PID; done
for n in $(seq 1 "$NODES"); do wait_engine "$n" 60 "${STARTED[n]}"; done
t_engines=$(date +%s%N)

# 3. images, in the background while the swarm forms (a load is the slow part): host engine -> the IMAGE_NODES
IMG_PIDS=()
for n in $IMAGE_NODES; do
  [ -n "$IMAGES" ] || break
  # shellcheck disable=SC2086
  (docker save $IMAGES | docker -H "$(node_sock "$n")" load -q >/dev/null) 2>"$BASE/n$n/load.err" &
  IMG_PIDS+=("$!")
done

# 4. swarm: node 1 the manager, the others workers; a 1 s dispatcher heartbeat finds a lost node in ~3 s
D1="docker -H $(node_sock 1)"
$D1 swarm init --advertise-addr "$NET.11" --default-addr-pool "$SWARM_POOL" >/dev/null
$D1 swarm update --dispatcher-heartbeat 1s >/dev/null
TOKEN=$($D1 swarm join-token -q worker)
for n in $(seq 2 "$NODES"); do
  docker -H "$(node_sock "$n")" swarm join --advertise-addr "$NET.1$n" --token "$TOKEN" "$NET.11:2377" >/dev/null
done
t_swarm=$(date +%s%N)

for i in "${!IMG_PIDS[@]}"; do
  wait "${IMG_PIDS[$i]}" || { echo "copying $IMAGES onto a node failed:" >&2; cat "$BASE"/n*/load.err >&2; exit 1; }
done
t_end=$(date +%s%N)
ms() { echo $(( ($2 - $1) / 1000000 )); }
echo "lab $BASE up: engines $(ms "$t0" "$t_engines") ms, swarm $(ms "$t_engines" "$t_swarm") ms," \
     "images done $(ms "$t0" "$t_end") ms in all"

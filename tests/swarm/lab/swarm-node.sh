#!/bin/bash
# swarm-node.sh — one node of a lab made by swarm-up.sh, for node-loss tests. Run as root.
#
#   BASE=/tmp/chalk-swarm-lab-0 tests/swarm/lab/swarm-node.sh kill 2    # kill -9 of node 2's dockerd (its pidfile)
#   BASE=/tmp/chalk-swarm-lab-0 tests/swarm/lab/swarm-node.sh start 2   # start it again, same flags; waits for it
#   BASE=/tmp/chalk-swarm-lab-0 tests/swarm/lab/swarm-node.sh pid 2     # its dockerd's pid, or nothing when down
#
# Containers outlive a killed dockerd (their shims keep running); the restarted dockerd finds its containerd
# (by its pidfile), rejoins the swarm and cleans them up.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
BASE=${BASE:?set BASE to the lab state dir}
[ -f "$BASE/lab.env" ] || { echo "no lab at BASE=$BASE (no $BASE/lab.env): run swarm-up.sh first" >&2; exit 2; }
lab_load
usage() { echo "usage: swarm-node.sh kill|start|pid N (1..$NODES)" >&2; exit 2; }
[ $# -eq 2 ] || usage
n=$2; [[ $n =~ ^[1-9]$ ]] && [ "$n" -le "$NODES" ] || usage
case $1 in
  pid) dockerd_pid "$n" ;;
  kill)
    p=$(dockerd_pid "$n")
    [ -n "$p" ] || { echo "node $n: its dockerd is not running (pidfile $BASE/n$n/dockerd.pid)" >&2; exit 1; }
    kill -KILL "$p"
    for _ in $(seq 1 100); do alive "$p" || exit 0; sleep 0.1; done
    echo "node $n: dockerd $p still alive 10 s after SIGKILL" >&2; exit 1 ;;
  start)
    p=$(dockerd_pid "$n")
    [ -z "$p" ] || { echo "node $n: its dockerd is running already (pid $p)" >&2; exit 1; }
    start_dockerd "$n"
    wait_engine "$n" 60 "$STARTED_PID" ;;
  *) usage ;;
esac

"""``chalkd nodes`` (the swarm's nodes, from the daemon) and ``chalkd node gpus`` (this host, no daemon).

    chalkd nodes                 # NAME, ROLE, STATE, AVAILABILITY, CPU, MEMORY, GPUS, REPLICAS; then the
                                 # replicas Swarm has not placed yet, with its reason
    chalkd nodes --json          # the same as JSON
    chalkd node gpus             # the daemon.json entry (and dockerd flags) that advertise this host's GPUs
    chalkd node gpus --json      # {"node-generic-resources": ["gpu=GPU-…", ...]} only

``chalkd nodes`` needs a daemon serving ``--runtime swarm``; any other answers with the runtime it runs.
What the engine reports about a node (its hostname, labels, Swarm's messages) is shown with control
characters escaped: a node that joined the swarm chooses its own hostname, and must not be able to
write terminal escape sequences onto the operator's screen.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

__all__ = ["add_parsers", "nodes_command", "safe", "render_nodes", "nodes_json"]


def add_parsers(sub: argparse._SubParsersAction, default_target: str) -> None:
    nodes = sub.add_parser("nodes", help="the swarm's nodes: state, CPU, memory, GPUs and this daemon's replicas "
                                         "on each (--runtime swarm)")
    nodes.add_argument("--json", action="store_true", help="print JSON instead of a table")
    nodes.add_argument("--target", default=default_target,
                       help="daemon address (default $CHALK_COMPUTE_TARGET or 127.0.0.1:50051)")
    node = sub.add_parser("node", help="this host as a swarm node: `chalkd node gpus`")
    node_sub = node.add_subparsers(dest="action", required=True)
    gpus = node_sub.add_parser("gpus", help="print the dockerd setting that advertises this host's GPUs to Swarm "
                                            "(NVML or $CHALKD_FAKE_GPUS); no daemon needed")
    gpus.add_argument("--json", action="store_true", help="print only the daemon.json entry")


def nodes_command(args: argparse.Namespace) -> int:
    if args.command == "node":
        return _node_gpus(args)
    from chalkcompute.exceptions import ChalkError

    try:
        resp = _fetch(args.target)
    except (ChalkError, OSError, ValueError) as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(nodes_json(resp), indent=2))
    else:
        render_nodes(resp, Console())
    return 0


def _fetch(target: str):
    from chalkcompute import _rpc
    from chalkcompute._bridge import run_sync
    from chalkcompute._client import Client
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import NodesStub

    client = Client.get(target)

    async def fetch() -> pb.ListNodesResponse:
        return await _rpc.unary(NodesStub(client.channel).List, pb.ListNodesRequest(), target=client.target)

    return run_sync(fetch())


def safe(text: str) -> str:
    """``text`` with control characters (ESC, CR, ...) written as ``\\x1b`` and rich markup escaped.

    >>> safe("node\\x1b[2J[red]1")
    'node\\\\x1b[2J\\\\[red]1'
    """
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                    for c in text)
    return escape(shown)


def _cpus(nanos: int) -> str:
    return f"{nanos / 1e9:g}" if nanos else "?"


def _memory(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n else "?"


def _generic(resources, *, per_line: bool) -> list[str]:
    """``gpu`` names one per item (UUIDs are what a user matches against ``nvidia-smi``), other kinds as
    ``kind: count``."""
    out: list[str] = []
    for g in resources:
        if g.names and per_line:
            out.extend(g.names if g.kind == "gpu" else [f"{g.kind}={n}" for n in g.names])
        elif g.names:
            out.append(",".join(g.names) if g.kind == "gpu" else f"{g.kind}={','.join(g.names)}")
        else:
            out.append(f"{g.kind}: {g.count}")
    return out


def _replica_line(r) -> str:
    given = " ".join(_generic(r.generic, per_line=False))
    return f"{r.replica_id} {r.function} {r.state}" + (f" {given}" if given else "")


def render_nodes(resp, console: Console) -> None:
    """The table ``chalkd nodes`` prints, then the replicas not placed yet."""
    # Nothing is cut short with "…" (a GPU UUID or replica id must stay whole to be of use): cells fold.
    table = Table(Column("NAME", overflow="fold"), "ROLE", "STATE", "AVAILABILITY", Column("CPU", justify="right"),
                  Column("MEMORY", justify="right"), Column("GPUS", overflow="fold"),
                  Column("REPLICAS", overflow="fold"))
    for n in resp.nodes:
        name = safe(n.name) + (" (chalkd)" if n.is_daemon_node else "")
        role = safe(n.role) + ("*" if n.leader else "")
        state = safe(n.state) if n.state == "ready" else f"[red]{safe(n.state)}[/red]"
        replicas = "\n".join(safe(_replica_line(r)) for r in n.replicas) or "-"
        table.add_row(name, role, state, safe(n.availability), _cpus(n.cpu_nanos), _memory(n.memory_bytes),
                      "\n".join(safe(x) for x in _generic(n.generic, per_line=True)) or "-", replicas)
    console.print(table)
    if any(n.leader for n in resp.nodes):
        console.print("manager*: the leader", highlight=False)
    for r in resp.unplaced:
        console.print(f"not placed yet: {safe(_replica_line(r))}" + (f": {safe(r.message)}" if r.message else ""),
                      highlight=False)


def _generic_json(resources) -> dict[str, Any]:
    return {g.kind: list(g.names) if g.names else g.count for g in resources}


def _replica_json(r) -> dict[str, Any]:
    return {"replica_id": r.replica_id, "function": r.function, "kind": r.kind, "state": r.state,
            "service": r.service, "generic": _generic_json(r.generic), "message": r.message}


def nodes_json(resp) -> dict[str, Any]:
    """``chalkd nodes --json``: ``{"nodes": [...], "unplaced": [...]}`` with the fields of
    :class:`chalkd.swarm.nodes.NodeInfo` (``json.dumps`` escapes control characters)."""
    nodes = [{"id": n.id, "name": n.name, "address": n.address, "role": n.role, "leader": n.leader,
              "state": n.state, "availability": n.availability, "cpu_nanos": n.cpu_nanos,
              "memory_bytes": n.memory_bytes, "generic": _generic_json(n.generic),
              "engine_version": n.engine_version, "labels": dict(n.labels), "is_daemon_node": n.is_daemon_node,
              "replicas": [_replica_json(r) for r in n.replicas]} for n in resp.nodes]
    return {"nodes": nodes, "unplaced": [_replica_json(r) for r in resp.unplaced]}


def _node_gpus(args: argparse.Namespace) -> int:
    from chalkd.gpus import probe_gpus
    from chalkd.swarm.nodes import gpu_setting, gpu_setting_text

    try:
        inventory = probe_gpus()
    except ValueError as exc:  # only a malformed $CHALKD_FAKE_GPUS
        print(f"chalkd: {exc}", file=sys.stderr)
        return 2
    if not inventory.devices:
        why = f"NVML: {inventory.note}" if inventory.source == "nvml" else inventory.note
        print(f"chalkd: no GPUs found on this host ({why}): there is nothing for this node to advertise to Swarm",
              file=sys.stderr)
        return 1
    devices = list(inventory.devices)
    source = "NVML" if inventory.source == "nvml" else inventory.note
    sys.stdout.write(json.dumps(gpu_setting(devices), indent=2) + "\n" if args.json
                     else gpu_setting_text(devices, source))
    return 0

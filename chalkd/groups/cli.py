"""``chalkd groups``: list scaling groups, show a group's replica output, delete a group, through the SDK.

    chalkd groups ls                     # name, status, URL, replicas ready/desired, revision, message
    chalkd groups logs web [--tail 50] [--replica sgr-1a2b3c]
    chalkd groups delete web

``logs`` prints the last lines of each replica's output (stdout and stderr of
the app, from the engine's log of each replica; the last few ended replicas'
too), each line prefixed with its replica and revision.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["add_parsers", "groups_command"]


def add_parsers(sub: argparse._SubParsersAction, default_target: str) -> None:
    g = sub.add_parser("groups", help="scaling groups: list them, show a group's logs, delete one")
    g_sub = g.add_subparsers(dest="action", required=True)
    ls = g_sub.add_parser("ls", help="list scaling groups")
    logs = g_sub.add_parser("logs", help="the last lines of each replica's output")
    logs.add_argument("name", help="the group's name or id")
    logs.add_argument("--tail", type=int, default=200, help="lines per replica (default 200)")
    logs.add_argument("--replica", default="", help="one replica's only")
    delete = g_sub.add_parser("delete", help="delete a scaling group (its URL stops answering, replicas stop)")
    delete.add_argument("name", help="the group's name or id")
    for p in (ls, logs, delete):
        p.add_argument("--target", default=default_target, help="daemon address (default $CHALK_COMPUTE_TARGET "
                                                                 "or 127.0.0.1:50051)")


def groups_command(args) -> int:
    from chalkcompute.exceptions import ChalkError

    try:
        return _run(args)
    except (ChalkError, OSError, ValueError) as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1


def _lookup(name: str) -> dict[str, str]:
    return {"id": name} if name.startswith("sg-") else {"name": name}


def _run(args) -> int:
    from chalkcompute._bridge import run_sync
    from chalkcompute._client import Client
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute.scaling_group import ScalingGroup

    if args.action == "ls":
        client = Client.get(args.target)

        async def fetch() -> list[pb.ScalingGroupInfo]:
            from chalkcompute import _rpc
            from chalkcompute._proto.chalk_v1_chalk_grpc import ScalingGroupsStub
            from chalkcompute.exceptions import ErrorKind

            resp = await _rpc.unary(ScalingGroupsStub(client.channel).List, pb.ListScalingGroupsRequest(),
                                    target=client.target, kind=ErrorKind.SCALING_GROUP)
            return list(resp.groups)

        table = Table()
        table.add_column("NAME", no_wrap=True)
        for col in ("ID", "STATUS", "URL", "READY/DESIRED", "REVISION", "IN FLIGHT", "MESSAGE"):
            table.add_column(col, overflow="fold")
        for i in run_sync(fetch()):
            revision = str(i.revision) + (f" (rolling out {i.target_revision})" if i.target_revision > i.revision
                                          else "")
            message = i.status_message + (f"; last rollout: {i.rollout_error}" if i.rollout_error else "")
            table.add_row(escape(i.name), i.id, i.status, i.web_url, f"{i.ready_replicas}/{i.desired_replicas}",
                          revision, str(i.in_flight), escape(message))
        Console().print(table)
        return 0
    if args.action == "delete":
        sg = ScalingGroup.from_id(args.name, target=args.target) if args.name.startswith("sg-") else \
            ScalingGroup.from_name(args.name, target=args.target)
        sg.delete()
        print(f"deleted scaling group {sg.name} ({sg.id})")
        return 0
    if args.tail < 1:
        print("chalkd: --tail must be at least 1", file=sys.stderr)
        return 2
    client = Client.get(args.target)

    async def logs() -> list[pb.ScalingGroupLogLine]:
        from chalkcompute import _rpc
        from chalkcompute._proto.chalk_v1_chalk_grpc import ScalingGroupsStub
        from chalkcompute.exceptions import ErrorKind

        req = pb.ScalingGroupLogsRequest(tail=args.tail, replica=args.replica, **_lookup(args.name))
        resp = await _rpc.unary(ScalingGroupsStub(client.channel).Logs, req, target=client.target,
                                kind=ErrorKind.SCALING_GROUP)
        return list(resp.lines)

    out = sys.stdout
    for line in run_sync(logs()):
        out.write(f"[{line.replica} r{line.revision}] {line.line}\n")
    out.flush()
    return 0

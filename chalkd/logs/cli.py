"""``chalkd logs``: what a call, a function, a replica or a scaling group wrote.

    chalkd logs fc-0640a1b2c3d4e5-9f3a1c          # one call's lines (ids are told apart by their prefix)
    chalkd logs embed --since 10m --tail 50        # a function's calls (every version), newest 50 lines
    chalkd logs embed --replica r-3f9a... -f       # one replica's calls, then follow
    chalkd logs r-3f9a...                          # a replica's whole output (a subprocess's too)
    chalkd logs sg-1a2b3c4d5e6f                    # a scaling group's replicas (or --group NAME)
    chalkd logs sb-1a2b3c                          # a sandbox's (or ct-...: a container's) entrypoint output,
                                                   # and a line per exec: command, exit code, duration

A call's follow ends when the call has finished; the others run until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["add_parser", "logs_command"]

CALL, REPLICA, GROUP, SANDBOX, CONTAINER = "fc-", "r-", "sg-", "sb-", "ct-"


def add_parser(sub: argparse._SubParsersAction, default_target: str) -> None:
    p = sub.add_parser("logs", help="show what a call, function, replica, scaling group, sandbox or container printed")
    p.add_argument("name", nargs="?", default="",
                   help="a call id (fc-...), replica id (r-...), scaling group id (sg-...), sandbox id (sb-...), "
                        "container id (ct-...) or a function's name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines as they are written")
    p.add_argument("--since", default="", help="only lines from this long ago on, e.g. 10m, 2h, 1d")
    p.add_argument("--tail", type=int, default=0, help="only the last N lines (default: all)")
    p.add_argument("--replica", default="", help="with a function's name: only this replica's lines")
    p.add_argument("--group", default="", help="a scaling group's name: its replicas' output")
    p.add_argument("--build", action="store_true", help="with a function's name: its newest version's image "
                                                         "build log")
    p.add_argument("--target", default=default_target,
                   help="daemon address (default $CHALK_COMPUTE_TARGET or 127.0.0.1:50051)")


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def logs_command(args: argparse.Namespace) -> int:
    from chalkcompute.exceptions import ChalkError
    from chalkcompute.sandbox import parse_duration

    if args.tail < 0:
        print(f"chalkd: --tail must be 0 (all) or more, got {args.tail}", file=sys.stderr)
        return 2
    if bool(args.name) == bool(args.group):
        print("chalkd: name one thing: a call id, a function, a replica id or a group id; or --group NAME",
              file=sys.stderr)
        return 2
    since = 0.0
    if args.since:
        try:
            since = time.time() - parse_duration(args.since, "--since")
        except (TypeError, ValueError) as exc:
            print(f"chalkd: {exc}", file=sys.stderr)
            return 2
    name: str = args.name
    try:
        if args.group or name.startswith(GROUP):
            return _group(args)
        return _lines(args, name, since)
    except ChalkError as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _lines(args: argparse.Namespace, name: str, since: float) -> int:
    from chalkcompute import _logs
    from chalkcompute._client import Client
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

    req = pb.ReadLogsRequest(since=since, tail=args.tail)
    if name.startswith((SANDBOX, CONTAINER)):
        req.object_id = name  # its entrypoint's output and a line per exec (command, exit code, duration)
    elif name.startswith(CALL):
        req.call_id = name
    elif name.startswith(REPLICA) and not args.replica:
        req.replica_id = name
    else:
        req.function_name, req.replica_id = name, args.replica
    if args.build:
        if not req.function_name or args.replica or args.follow:
            print("chalkd: --build takes a function's name (no --replica, no -f)", file=sys.stderr)
            return 2
        req.build = True
    client = Client.get(args.target)
    lines = _logs.follow_lines(client, req) if args.follow else _logs.read_lines(client, req)
    for line in lines:
        if req.build:
            out = line.text
        elif req.function_name:
            calls = ",".join(line.call_ids) or "-"
            out = f"{_stamp(line.ts)} {calls} {line.replica_id} {line.text}"
        elif req.call_id or req.object_id:
            out = f"{_stamp(line.ts)} {line.text}"
        else:
            out = line.text  # a replica's file: its lines as written
        print(out, flush=args.follow)
    return 0


def _group(args: argparse.Namespace) -> int:
    from chalkcompute._bridge import run_sync
    from chalkcompute._client import Client
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import ScalingGroupsStub
    from chalkcompute._rpc import unary

    if args.follow or args.since:
        print("chalkd: a scaling group's logs take --tail and --replica only (not -f or --since) for now",
              file=sys.stderr)
        return 2
    client = Client.get(args.target)
    req = pb.ScalingGroupLogsRequest(tail=args.tail, replica=args.replica)
    if args.group:
        req.name = args.group
    else:
        req.id = args.name

    async def ask() -> pb.ScalingGroupLogsResponse:
        return await unary(ScalingGroupsStub(client.channel).Logs, req, target=client.target)

    for line in run_sync(ask()).lines:
        print(f"{line.replica} {line.line}")
    return 0

"""An attacker's own worker client, for the worker-TLS tests (run as a script, here or in a container).

    python worker_probe.py '{"target": "10.231.0.1:50051", "ca": "/ca.pem", "session_id": "r-a",
                            "session_key": "...", "hello_id": "r-b", "hello_token": "..."}'

Over TLS with the CA ``ca`` (no ``ca``: plain HTTP/2), it opens ``Worker/Connect``: with a
session made from ``session_key`` under ``session_id`` (none without a key), then sends the
hello ``hello_id``/``hello_token``. It prints one JSON line: ``messages`` (how many answers
came back: a function version, secrets), ``error`` (the exception's type), ``status`` and
``message`` (a GRPCError's).
"""

from __future__ import annotations

import asyncio
import json
import sys


async def probe(args: dict) -> dict:
    from grpclib.client import Channel

    from chalkcompute._auth import SessionCredentials, client_ssl_context
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import WorkerStub

    host, _, port = args["target"].rpartition(":")
    channel = Channel(host, int(port), ssl=client_ssl_context(args.get("ca") or None))
    if args.get("session_key"):
        SessionCredentials(args["target"], args["session_key"], key_id=args.get("session_id", "")).attach(channel)
    out: dict = {"messages": 0, "error": None, "status": None, "message": None}
    try:
        async with WorkerStub(channel).Connect.open() as stream:
            await stream.send_message(pb.WorkerRequest(hello=pb.WorkerHello(
                replica_id=args.get("hello_id", ""), token=args.get("hello_token", ""))))
            while await stream.recv_message() is not None:
                out["messages"] += 1
                break  # one answer is already a breach
    except Exception as exc:  # what refused us is the result
        out["error"] = type(exc).__name__
        out["status"] = getattr(getattr(exc, "status", None), "name", None)
        out["message"] = str(getattr(exc, "message", exc))
    finally:
        channel.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(asyncio.wait_for(probe(json.loads(sys.argv[1])), 60))))

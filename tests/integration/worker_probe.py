"""An attacker's own worker client, for the worker-TLS tests (run as a script, here or in a container:
``python3 - ARGS < worker_probe.py``).

    python worker_probe.py '{"target": "10.231.0.1:50051", "ca": "/ca.pem", "session_id": "r-a",
                            "session_key": "...", "hello_id": "r-b", "hello_token": "..."}'

Over TLS with the CA ``ca`` (a path; or ``ca_pem``, its text; neither: plain HTTP/2), it opens
``Worker/Connect``: with a session made from ``session_key`` under ``session_id`` (none without a
key), then sends the hello ``hello_id``/``hello_token``. It prints one JSON line: ``messages`` (how
many answers came back: a function version, secrets), ``error`` (the exception's type), ``status``
and ``message`` (a GRPCError's).

With ``"mode": "worker"`` it runs the real ``python -m chalkcompute.worker`` instead, as a process
on another node would be started: ``CHALK_WORKER_TARGET`` = ``target``, ``CHALK_REPLICA_ID`` =
``replica_id``, the key file holding ``key`` (empty: no credential), ``CHALK_COMPUTE_TLS`` = the CA;
it prints ``returncode`` and the end of ``stderr``.
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


def run_worker(args: dict) -> dict:
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        key_file = os.path.join(tmp, "key")
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(args.get("key", ""))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHALK")}
        env.update(CHALK_WORKER_TARGET=args["target"], CHALK_REPLICA_ID=args["replica_id"],
                   CHALK_REPLICA_KEY_FILE=key_file, CHALK_TRANSPORT="grpc")
        if args.get("ca"):
            env["CHALK_COMPUTE_TLS"] = args["ca"]
        run = subprocess.run([sys.executable, "-m", "chalkcompute.worker"], capture_output=True, text=True,
                             timeout=90, env=env, cwd=tmp)
        return {"returncode": run.returncode, "stderr": run.stderr[-3000:]}


def main(args: dict) -> dict:
    import tempfile

    if args.get("ca_pem"):  # the CA's text (a container has no file of it): into a file of its own
        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
            f.write(args["ca_pem"])
        args["ca"] = f.name
    if args.get("mode") == "worker":
        return run_worker(args)
    return asyncio.run(asyncio.wait_for(probe(args), 60))


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))

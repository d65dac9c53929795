"""The ``chalkd`` command line.

    chalkd serve [--host 127.0.0.1] [--port 50051] [--home DIR] [--runtime auto|process|docker|swarm]
                 [--durability normal|full] [--max-message-size BYTES] [--replica-env NAME ...]
                 [--http-port 50052] [--metrics-open]   # /metrics (bearer token unless --metrics-open)
    chalkd status    [--target HOST:PORT]   # exit 0 with a summary (and the metrics URL), 1 when no daemon answers
    chalkd top       [--target HOST:PORT] [--once]   # live: functions, sandboxes, groups, GPUs (q to quit)
    chalkd functions [--target HOST:PORT] [--all] [-v]   # -v: desired/ready replicas, last scaling decision
    chalkd calls     [--target HOST:PORT] [--function NAME] [--limit N]
    chalkd rate-limit set NAME --rate N [--per second|minute|hour]
    chalkd rate-limit list | delete NAME
    chalkd secret set NAME [--value V]       # value from stdin or a prompt (kept out of shell history)
    chalkd secret list | delete NAME         # names and times, never values
    chalkd integration set NAME KEY=VALUE... [--from-env-file FILE]
    chalkd integration list | delete NAME    # names and keys, never values
    chalkd volume ls [NAME [PREFIX]] | get NAME PATH [-o FILE] | put NAME PATH [LOCAL_FILE|-]
    chalkd volume rm NAME PATH | delete NAME
    chalkd gpus                              # this host's GPUs (NVML); no daemon needed
    chalkd doctor [--target HOST:PORT] [--home DIR]   # engine, base image, GPUs, disk, daemon vs SDK version
    chalkd --version
    chalkd image bootstrap [--python 3.11] [--mirror URL] [--force]   # the base image, from Debian packages
    chalkd image ls | prune [TAG...] [--older-than 7d] [--dry-run]      # our chalkd-img: tags; never other images
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table

from chalkcompute.policies import PERIODS
from chalkd.config import (
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_PORT,
    Config,
    default_home,
    parse_size,
)

log = logging.getLogger(__name__)


def _port_range(text: str) -> tuple[int, int]:
    """``"51000-51999"`` -> (51000, 51999); a clear ValueError naming --group-ports otherwise."""
    lo, sep, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi if sep else lo)
    except ValueError:
        raise ValueError(f"--group-ports must be a range such as 51000-51999, got {text!r}") from None
    return low, high


def _default_target() -> str:
    return os.environ.get("CHALK_COMPUTE_TARGET", f"{DEFAULT_HOST}:{DEFAULT_PORT}")


def _version_line() -> str:
    import chalkcompute
    import chalkd

    return (f"chalkd {chalkd.__version__} (chalkcompute {chalkcompute.__version__}, "
            f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chalkd", description="Self-hosted serverless compute for Python.")
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--host", default=os.environ.get("CHALKD_HOST", DEFAULT_HOST))
    serve.add_argument("--port", type=int, default=int(os.environ.get("CHALKD_PORT", DEFAULT_PORT)))
    serve.add_argument("--home", type=Path, default=None,
                       help="state directory (default: $CHALKD_HOME or the user data dir)")
    serve.add_argument("--runtime", default=os.environ.get("CHALKD_RUNTIME", "auto"),
                       choices=["auto", "process", "docker", "swarm"])
    serve.add_argument("--engine", default=os.environ.get("CHALKD_ENGINE"),
                       help="the Docker engine to drive (docker and swarm runtimes), e.g. unix:///var/run/docker.sock "
                            "(default: $DOCKER_HOST or the local socket); with --runtime swarm, a swarm manager's")
    serve.add_argument("--advertise-addr", default=os.environ.get("CHALKD_ADVERTISE_ADDR"), metavar="ADDR[:PORT]",
                       help="--runtime swarm: the address workers on every node dial (over TLS, chalkd's own CA); "
                            "chalkd listens there too (default port: --port, or a free one with --port 0)")
    serve.add_argument("--registry", default=os.environ.get("CHALKD_REGISTRY"), metavar="HOST:PORT",
                       help="--runtime swarm: push built images there; nodes pull them (else --node-engine copies)")
    serve.add_argument("--node-engine", action="append", default=[], metavar="NODE=URL",
                       help="--runtime swarm without --registry: the engine of swarm node NODE (its hostname), to "
                            "copy built images to with docker save | load (repeatable)")
    serve.add_argument("--durability", default=os.environ.get("CHALKD_DURABILITY", "normal"),
                       choices=["normal", "full"])
    serve.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE, help="bytes (default 64 MiB)")
    serve.add_argument("--memory-budget", default=os.environ.get("CHALKD_MEMORY_BUDGET", "1GiB"),
                       help="bytes for the daemon's buffers, e.g. 512MiB (default 1GiB, or $CHALKD_MEMORY_BUDGET): "
                            "a quarter for queued calls' arguments (the rest are read from the database at "
                            "dispatch), a quarter for recently finished results, 1/16 for idempotency keys, "
                            "and each caller stream's outbox (a caller that stops reading is paused, then dropped)")
    serve.add_argument("--log-max-bytes", default=os.environ.get("CHALKD_LOG_MAX_BYTES", "1GiB"),
                       help="disk for what handlers print, kept per call (default 1GiB); one replica keeps at "
                            "most a quarter of it, the oldest lines go first")
    serve.add_argument("--log-max-age", default=os.environ.get("CHALKD_LOG_MAX_AGE", "7d"),
                       help="lines older than this are removed, e.g. 12h, 30d (default 7d)")
    serve.add_argument("--chunk-window-bytes", default=os.environ.get("CHALKD_CHUNK_WINDOW_BYTES", "16MiB"),
                       help="bytes of a generator's chunks that may wait for its reader (default 16MiB); the "
                            "generator pauses beyond them (and beyond 8192 chunks)")
    serve.add_argument("--detached-stream-timeout", type=float,
                       default=float(os.environ.get("CHALKD_DETACHED_STREAM_TIMEOUT", "60")),
                       help="seconds a generator call may stream with no reader attached before it is cancelled "
                            "and its replica freed (default 60); a spawned one counts once its budget is full")
    serve.add_argument("--spawned-stream-budget", default=os.environ.get("CHALKD_SPAWNED_STREAM_BUDGET", "256MiB"),
                       help="bytes of a spawned generator's chunks stored for a later reader before it pauses "
                            "(default 256MiB)")
    serve.add_argument("--heartbeat-timeout", type=float, default=15.0, help="seconds before a silent worker is lost")
    serve.add_argument("--cancel-grace", type=float, default=5.0,
                       help="seconds a cancelled or timed-out handler has to stop before its replica is killed")
    serve.add_argument("--sweep-interval", type=float, default=60.0,
                       help="seconds between sweeps that drop results past their TTL")
    serve.add_argument("--build-ca-bundle", default=None,
                       help="CA bundle every image build trusts (default: $CHALKD_BUILD_CA_BUNDLE, $SSL_CERT_FILE "
                            "or the system bundle)")
    serve.add_argument("--pids-limit", type=int, default=4096, help="process limit per container (Docker runtime)")
    serve.add_argument("--log-level", default=os.environ.get("CHALKD_LOG_LEVEL", "INFO"))
    serve.add_argument("--replica-env", action="append", default=[], metavar="NAME",
                       help="process runtime: also pass the daemon's env var NAME to replicas (repeatable); "
                            "they get only PATH, HOME, TMPDIR, LANG, LC_*, TZ, the CA bundle and proxy "
                            "variables otherwise, plus their image's env, their own env and their secrets")
    serve.add_argument("--tls-cert", default=os.environ.get("CHALKD_TLS_CERT"),
                       help="PEM certificate (chain) to serve TLS; needed with --tls-key for a --host beyond loopback")
    serve.add_argument("--tls-key", default=os.environ.get("CHALKD_TLS_KEY"), help="PEM private key for --tls-cert")
    serve.add_argument("--auth-timeout", type=float, default=float(os.environ.get("CHALKD_AUTH_TIMEOUT", "5")),
                       help="seconds a connection may stay open without authenticating (default 5)")
    serve.add_argument("--idle-timeout", type=float, default=float(os.environ.get("CHALKD_IDLE_TIMEOUT", "300")),
                       help="seconds a connection with no open stream and no traffic stays open (default 300; "
                            "0: forever); clients reconnect by themselves")
    serve.add_argument("--max-unauthenticated-per-peer", type=int,
                       default=int(os.environ.get("CHALKD_MAX_UNAUTHENTICATED_PER_PEER", "64")),
                       help="connections not yet authenticated, per remote IP (TCP) or uid (unix socket), default "
                            "64; a new one closes that peer's oldest. Authenticated connections are not counted")
    serve.add_argument("--sandbox-runtime", default=os.environ.get("CHALKD_SANDBOX_RUNTIME", "runc"),
                       help="the engine's OCI runtime for sandboxes (default runc; runsc: gVisor, registered "
                            "with the engine first)")
    serve.add_argument("--sandbox-memory", default=os.environ.get("CHALKD_SANDBOX_MEMORY", "2GiB"),
                       help="memory cap of a sandbox created without memory= (default 2GiB)")
    serve.add_argument("--sandbox-pids-limit", type=int, default=1024, help="process limit per sandbox (1024)")
    serve.add_argument("--sandbox-disk", default=os.environ.get("CHALKD_SANDBOX_DISK", "10GiB"),
                       help="each sandbox's writable layer (default 10GiB): enforced where the storage driver "
                            "allows, otherwise measured, and the sandbox terminated past it")
    serve.add_argument("--sandbox-disk-check-interval", type=float, default=30.0,
                       help="seconds between two measurements of sandboxes' writable layers, where the storage "
                            "driver cannot enforce --sandbox-disk (default 30)")
    serve.add_argument("--group-ports", default=os.environ.get("CHALKD_GROUP_PORTS", "51000-51999"),
                       help="ports for scaling groups' URLs, LOW-HIGH (default 51000-51999): one per group, kept "
                            "across restarts, on --host")
    serve.add_argument("--group-cooldown", type=float, default=60.0,
                       help="seconds a scaling group has more replicas than its requests need before one stops "
                            "(default 60)")

    serve.add_argument("--http-port", type=int, default=int(os.environ.get("CHALKD_HTTP_PORT", DEFAULT_HTTP_PORT)),
                       help=f"HTTP port on --host for /metrics (default {DEFAULT_HTTP_PORT}, or $CHALKD_HTTP_PORT; "
                            "0 picks a free one); it needs the token as `Authorization: Bearer <token>`")
    serve.add_argument("--metrics-open", action="store_true",
                       help="serve /metrics without the token (anyone who can reach --host:--http-port reads it)")

    token = sub.add_parser("token", help="show or rotate the daemon's token (<home>/token)")
    token.add_argument("action", choices=["show", "rotate"])
    token.add_argument("--home", type=Path, default=None,
                       help="state directory (default: $CHALKD_HOME or the user data dir)")

    for name, help_text in (("status", "is a daemon answering?"), ("functions", "list functions"),
                            ("calls", "list recent calls"), ("top", "a live view: functions, sandboxes, groups, GPUs")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--target", default=_default_target(),
                       help="daemon address (default $CHALK_COMPUTE_TARGET or 127.0.0.1:50051)")
        if name == "functions":
            p.add_argument("--all", action="store_true", help="include older versions")
            p.add_argument("-v", "--verbose", action="store_true",
                           help="also desired/ready replicas and the last scaling decision with its reason")
        if name == "top":
            p.add_argument("--once", action="store_true", help="print one frame and exit")
            p.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")
        if name == "calls":
            p.add_argument("--function", default="", help="only calls of this function")
            p.add_argument("--limit", type=int, default=50)
    rl = sub.add_parser("rate-limit", help="rate limits functions name with rate_limit_key")
    rl_sub = rl.add_subparsers(dest="action", required=True)
    rl_set = rl_sub.add_parser("set", help="define or change a rate limit")
    rl_set.add_argument("name")
    rl_set.add_argument("--rate", type=float, required=True, help="calls (attempts) per period")
    rl_set.add_argument("--per", default="second", choices=list(PERIODS))
    rl_sub.add_parser("list", help="list rate limits")
    rl_del = rl_sub.add_parser("delete", help="delete a rate limit no function uses")
    rl_del.add_argument("name")
    for p in (rl_set, rl_sub.choices["list"], rl_del):
        p.add_argument("--target", default=_default_target(), help="daemon address")
    _add_secret_parsers(sub)
    from chalkd.volumes.cli import add_parsers as add_volume_parsers

    add_volume_parsers(sub, _default_target())
    from chalkd.sandboxes.cli import add_parsers as add_sandbox_parsers

    add_sandbox_parsers(sub, _default_target())
    from chalkd.groups.cli import add_parsers as add_group_parsers

    add_group_parsers(sub, _default_target())
    from chalkd.swarm.cli import add_parsers as add_swarm_parsers

    add_swarm_parsers(sub, _default_target())  # nodes, node gpus

    sub.add_parser("gpus", help="list this host's GPUs as chalkd sees them (NVML or $CHALKD_FAKE_GPUS)")
    from chalkd.doctor import add_parser as add_doctor_parser

    add_doctor_parser(sub, _default_target())
    from chalkd.logs.cli import add_parser as add_logs_parser

    add_logs_parser(sub, _default_target())
    from chalkd.web.dashboard_cli import add_parser as add_dashboard_parser

    add_dashboard_parser(sub, _default_target())

    image = sub.add_parser("image", help="chalkd's images: bootstrap the base image, ls, prune")
    image_sub = image.add_subparsers(dest="action", required=True)
    boot = image_sub.add_parser("bootstrap", help="build python:<version>-slim from Debian packages (needs root)")
    boot.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                      help="Python major.minor: 3.9, 3.11 or 3.13 (default: this Python's)")
    boot.add_argument("--mirror", default=None, help="Debian archive (default http://deb.debian.org/debian)")
    boot.add_argument("--force", action="store_true", help="rebuild even when the image is present")
    from chalkd.images.cli import add_parsers as add_image_parsers

    add_image_parsers(image_sub)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args)
    if args.command == "gpus":
        return _gpus()
    if args.command == "doctor":
        from chalkd.doctor import doctor_command

        return doctor_command(args)
    if args.command == "volume":
        from chalkd.volumes.cli import volume_command

        return volume_command(args)
    if args.command == "sandbox":
        from chalkd.sandboxes.cli import sandbox_command

        return sandbox_command(args)
    if args.command == "groups":
        from chalkd.groups.cli import groups_command

        return groups_command(args)
    if args.command in ("nodes", "node"):
        from chalkd.swarm.cli import nodes_command

        return nodes_command(args)
    if args.command == "image" and args.action in ("ls", "prune"):
        from chalkd.images.cli import image_command

        return image_command(args)
    if args.command == "image":
        return _image_bootstrap(args)
    if args.command == "dashboard":
        from chalkd.web.dashboard_cli import dashboard_command

        return dashboard_command(args)
    if args.command == "logs":
        from chalkd.logs.cli import logs_command

        return logs_command(args)
    if args.command == "top":
        from chalkd.top import top_command

        return top_command(args)
    try:
        return asyncio.run(_client_command(args))
    except ConnectionError as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1


def _duration(text: str, what: str) -> float:
    from chalkcompute.sandbox import parse_duration

    return parse_duration(text, what)


def _serve(args) -> int:
    from chalkd.private_dir import UnsafeDirectoryError
    from chalkd.server import Server, StartupError
    from chalkd.web.app import HttpPortError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        memory_budget = parse_size(args.memory_budget, "--memory-budget")
        chunk_window_bytes = parse_size(args.chunk_window_bytes, "--chunk-window-bytes")
        log_max_bytes = parse_size(args.log_max_bytes, "--log-max-bytes")
        log_max_age = _duration(args.log_max_age, "--log-max-age")
        spawned_stream_budget = parse_size(args.spawned_stream_budget, "--spawned-stream-budget")
        sandbox_memory = parse_size(args.sandbox_memory, "--sandbox-memory")
        sandbox_disk = parse_size(args.sandbox_disk, "--sandbox-disk")
        group_ports = _port_range(args.group_ports)
        from chalkd.swarm.images import parse_node_engines

        node_engines = parse_node_engines(args.node_engine)
    except ValueError as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 2
    config = Config(
        host=args.host, port=args.port, home=args.home or default_home(), runtime=args.runtime,
        durability=args.durability, max_message_bytes=args.max_message_size,
        heartbeat_timeout=args.heartbeat_timeout, cancel_grace=args.cancel_grace,
        sweep_interval=args.sweep_interval, pids_limit=args.pids_limit,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        memory_budget=memory_budget, replica_env=args.replica_env,
        chunk_window_bytes=chunk_window_bytes, detached_stream_timeout=args.detached_stream_timeout,
        spawned_stream_budget=spawned_stream_budget,
        auth_timeout=args.auth_timeout, idle_timeout=args.idle_timeout,
        max_unauthenticated_per_peer=args.max_unauthenticated_per_peer,
        sandbox_runtime=args.sandbox_runtime, sandbox_memory=sandbox_memory,
        sandbox_pids_limit=args.sandbox_pids_limit, sandbox_disk=sandbox_disk,
        sandbox_disk_check_interval=args.sandbox_disk_check_interval,
        group_ports=group_ports, group_cooldown=args.group_cooldown,
        http_port=args.http_port, metrics_open=args.metrics_open,
        log_max_bytes=log_max_bytes, log_max_age=log_max_age,
        engine=args.engine, advertise_addr=args.advertise_addr, registry=args.registry, node_engines=node_engines,
    )
    if args.build_ca_bundle is not None:
        config.build_ca_bundle = args.build_ca_bundle or None
    try:
        config.validate()
    except ValueError as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        try:
            import uvloop  # noqa: F401  (faster loop where available)
        except ImportError:
            pass
        server = Server(config)
        await server.startup()  # a failed start has closed what it opened when this raises
        try:
            print(f"chalkd listening on {config.host}:{server.port} (home {config.home}); "
                  f"metrics at {server.web.url}/metrics", flush=True)
            if config.replica_env and server.runtime.name != "process":
                # Containers start from their image's env alone: say so rather than ignore the flag.
                print(f"chalkd: warning: --replica-env {' '.join(config.replica_env)} has no effect on the "
                      f"{server.runtime.name} runtime (containers get their image's env, their function's "
                      "env and their secrets)", file=sys.stderr, flush=True)
            await server.main_loop()
        finally:
            await server.shutdown()

    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:  # apart from the import: a start-up error without uvloop gets the same clear message
        runner(run())
    except (StartupError, UnsafeDirectoryError, HttpPortError) as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"chalkd: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _client_command(args) -> int:
    from grpclib import GRPCError
    from grpclib.client import Channel

    from chalkcompute._auth import client_ssl_context, credentials_for, tls_from_env
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import FunctionCatalogStub

    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        print(f"chalkd: --target must be HOST:PORT, got {args.target!r}", file=sys.stderr)
        return 2
    channel = Channel(host.strip("[]"), int(port), ssl=client_ssl_context(tls_from_env()))  # $CHALK_COMPUTE_TLS
    credentials_for(args.target).attach(channel)  # the token found as the SDK finds it
    stub = FunctionCatalogStub(channel)
    console = Console()
    try:
        try:
            status = await asyncio.wait_for(stub.Status(pb.StatusRequest()), 5)
        except GRPCError as exc:  # a wrong or missing token: the message says how to fix it
            print(f"chalkd: {exc.message}", file=sys.stderr)
            return 1
        except (TimeoutError, OSError) as exc:
            raise ConnectionError(
                f"no daemon answers at {args.target} ({exc or 'timed out'}); start one with `chalkd serve`") from None
        if args.command == "status":
            console.print(
                f"chalkd {status.version} at {args.target} (pid {status.pid}), up {status.uptime_seconds:.0f}s\n"
                f"home: {status.home}\nruntime: {status.runtime}, durability: {status.durability}\n"
                f"functions: {status.functions}, replicas: {status.replicas}\n"
                f"calls: {status.calls_queued} queued, {status.calls_running} running, "
                f"{status.calls_total} submitted since start"
            )
            if status.http_port:  # a daemon from before the HTTP port says 0
                from chalkcompute._auth import tls_from_env
                from chalkd.web.app import http_url

                console.print(f"metrics: {http_url(host.strip('[]'), status.http_port, bool(tls_from_env()))}/metrics "
                              "(Authorization: Bearer <token>)", highlight=False, soft_wrap=True)
        elif args.command == "functions":
            resp = await stub.ListFunctions(pb.ListFunctionsRequest(include_old_versions=args.all))
            table = Table("NAME", "VERSION", "ID", "STATE", "REPLICAS", "CREATED", "OPTIONS")
            for f in resp.functions:
                # options= as registered: stored and shown, never interpreted by chalkd. The list
                # leaves specs out (they can be large), so each version's comes from GetFunction.
                if f.HasField("spec") or f.state == "deleted":  # a deleted version's spec is not served
                    spec = f.spec
                else:
                    spec = (await stub.GetFunction(pb.GetFunctionRequest(id=f.id))).function.spec
                options = " ".join(f"{k}={v}" for k, v in sorted(spec.options.items()))
                # A failed version says why: the last line of its reason (a class's @before traceback ends so).
                why = [line for line in f.error.splitlines() if line.strip()] if f.state == "failed" else []
                state = f"{f.state}: {why[-1][:100]}" if why else f.state
                if f.waiting:  # e.g. "waiting: 2 GPUs of type nvidia-l4 wanted, 1 free"
                    state = f"{state}, {f.waiting}"
                table.add_row(f.function_name, str(f.version), f.id, state,
                              f"{f.ready_replicas}/{f.replicas}", _when(f.created_at), options)
            console.print(table)
            if args.verbose:
                _print_scaling(console, resp.functions)
        elif args.command == "calls":
            resp = await stub.ListCalls(pb.ListCallsRequest(limit=args.limit, function_name=args.function))
            table = Table("ID", "FUNCTION", "STATE", "ATTEMPT", "CHUNKS", "CREATED", "ERROR")
            for c in resp.calls:
                table.add_row(c.id, c.function_name, c.state, str(c.attempt), str(c.chunks),
                              _when(c.created_at), c.error[:60])
            console.print(table)
        elif args.command == "rate-limit":
            try:
                return await _rate_limit_command(args, channel, console)
            except GRPCError as exc:
                print(f"chalkd: {exc.message}", file=sys.stderr)
                return 1
        elif args.command in ("secret", "integration"):
            from chalkd.secrets.cli import SecretCommandError, secret_command

            try:
                return await secret_command(args, channel, console)
            except (GRPCError, SecretCommandError) as exc:
                print(f"chalkd: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
                return 1
        return 0
    finally:
        channel.close()


async def _rate_limit_command(args, channel, console: Console) -> int:
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import PoliciesStub

    stub = PoliciesStub(channel)
    if args.action == "set":
        resp = await stub.SetRateLimit(pb.SetRateLimitRequest(
            limit=pb.RateLimit(name=args.name, rate=args.rate, per=args.per)))
        verb = "defined" if resp.created else "updated"
        console.print(f"rate limit {args.name} {verb}: {resp.limit.rate:g} per {resp.limit.per}")
    elif args.action == "list":
        resp = await stub.ListRateLimits(pb.ListRateLimitsRequest())
        table = Table("NAME", "RATE", "PER", "USED BY")
        for lim in resp.limits:
            table.add_row(lim.name, f"{lim.rate:g}", lim.per, ", ".join(lim.used_by))
        console.print(table)
    elif args.action == "delete":
        await stub.DeleteRateLimit(pb.DeleteRateLimitRequest(name=args.name))
        console.print(f"rate limit {args.name} deleted")
    return 0


def _add_secret_parsers(sub) -> None:
    from chalkd.secrets.cli import add_parsers

    add_parsers(sub, _default_target())


def _gpus() -> int:
    # Local, like serve: it reads this host's inventory the way the daemon does, so it works
    # (and explains an empty list) without a daemon running.
    from chalkd.gpus import GpuAllocator, probe_gpus

    try:
        inventory = probe_gpus()
    except ValueError as exc:  # only a malformed $CHALKD_FAKE_GPUS
        print(f"chalkd: {exc}", file=sys.stderr)
        return 2
    console = Console()
    if not inventory.devices:
        why = f"NVML: {inventory.note}" if inventory.source == "nvml" else inventory.note
        console.print(f"no GPUs found ({why})", highlight=False)
        return 0
    rows = GpuAllocator(inventory.devices).describe()
    # UUIDs are what Docker and CUDA_VISIBLE_DEVICES take: never cut them short; let names wrap instead.
    table = Table("INDEX", Column("NAME", overflow="fold"), "MEMORY",
                  Column("UUID", no_wrap=True, min_width=max(len(r["uuid"]) for r in rows)))
    for row in rows:
        table.add_row(row["index"], row["name"], row["memory"], row["uuid"])
    console.print(table)
    if inventory.source == "nvml":
        console.print(f"{len(rows)} GPU(s) via NVML" + (f" ({inventory.note})" if inventory.note else ""),
                      highlight=False)
    else:
        console.print(f"{len(rows)} GPU(s): {inventory.note}", highlight=False)
    return 0


def _image_bootstrap(args) -> int:
    # Local, like gpus: it talks to the Docker engine, not to a daemon.
    from chalkd.images.bootstrap import DEFAULT_MIRROR, BootstrapError, bootstrap_base_image

    def progress(line: str) -> None:
        print(line, flush=True)

    async def run() -> None:
        # SIGTERM (a CI timeout) stops it like Ctrl-C: debootstrap is stopped, the working folder removed.
        import signal

        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        await bootstrap_base_image(args.python, mirror=args.mirror or DEFAULT_MIRROR, force=args.force,
                                   log=progress)

    try:
        asyncio.run(run())
    except ValueError as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 2
    except BootstrapError as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chalkd: image bootstrap interrupted", file=sys.stderr)
        return 130
    return 0


def _token(args) -> int:
    """``chalkd token show|rotate``: print the token, or replace it (a running daemon keeps the old
    one until it restarts, and its per-user records are rewritten then)."""
    from chalkd.auth import load_or_create_token, rotate_token

    home = args.home or default_home()
    if not (home / "token").exists() and args.action == "show":
        print(f"chalkd: no token in {home} yet: `chalkd serve --home {home}` makes one at first start",
              file=sys.stderr)
        return 1
    try:
        token = rotate_token(home) if args.action == "rotate" else load_or_create_token(home)
    except OSError as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1
    print(token)
    if args.action == "rotate":
        print(f"rotated the token in {home}/token: restart the daemon to use it", file=sys.stderr)
    return 0


def _print_scaling(console: Console, functions) -> None:
    """``chalkd functions -v``: per version, desired/ready replicas, what they wait for, the last decision.

    Unwrapped lines (soft_wrap): a reason is read whole, and scripts can grep it."""
    now = dt.datetime.now().timestamp()
    for f in functions:
        lines = [f"{f.function_name} v{f.version} ({f.id}): desired {f.desired_replicas}, "
                 f"ready {f.ready_replicas}, replicas {f.replicas}"]
        if f.waiting:
            lines.append(f"  {f.waiting}")
        if f.scaling_decision:
            lines.append(f"  last decision at {_when(f.scaling_decision_at)} ({now - f.scaling_decision_at:.0f}s ago): "
                         f"{f.scaling_decision}")
        else:
            lines.append("  no scaling decision yet")
        console.print("\n".join(lines), soft_wrap=True, highlight=False, markup=False)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


if __name__ == "__main__":
    raise SystemExit(main())

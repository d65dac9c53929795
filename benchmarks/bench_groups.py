"""Scaling-group benchmarks, one function per part (``--parts proxy[,docker]``).

    python benchmarks/bench_groups.py --out benchmarks/results/groups.json [--parts proxy]
        [--duration 5] [--concurrency 32] [--rounds 2] [--apps aiohttp,stdlib]

Part ``proxy``: a tiny HTTP app (answering 2 bytes; ``--apps``: aiohttp on uvloop, the fastest Python app
and so the proxy's worst case, and the stdlib's threaded http.server) runs as 2 processes; a load
generator (its own process: a raw HTTP/1.1 client on uvloop, keep-alive connections, a fixed number of
requests in flight, one per connection) hits one app directly, then a `GroupProxy` (its own process, on
uvloop, as the daemon runs it) over both apps, for ``--duration`` seconds each, alternating for
``--rounds`` rounds (the best round of each counts: on a shared machine the worst is noise). A second
pass at concurrency 1 gives the latency the proxy adds without queueing. Numbers are for the machine it
runs on; nothing here asserts.

Other parts (a Docker part: burst to max replicas, scale-from-zero first response) add a function to
PARTS taking the parsed arguments and returning a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import emit, percentile  # noqa: E402

HERE = Path(__file__).resolve()


# -- the processes (this file runs as each of them with --role) ---------------------------------------------

def role_app(kind: str) -> None:
    """The tiny app: GET / -> b"ok". Prints its port. ``kind``: "aiohttp" (on uvloop: the fastest Python
    app, the proxy's worst case) or "stdlib" (http.server, threaded, keep-alive: the issue's fallback app)."""
    if kind == "stdlib":
        return _stdlib_app()
    import uvloop
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"ok", content_type="text/plain")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        await _until_term()
        await runner.cleanup()

    uvloop.run(main())


def _stdlib_app() -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hello(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True  # else headers and body, written apart, wait on delayed ACKs (40 ms)
        wbufsize = 1 << 16  # one send per answer (flushed after each request)

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


def role_proxy(backends: str) -> None:
    """A GroupProxy over ``backends`` (host:port,...), all ready, as the daemon would run it. Prints its port."""
    import uvloop

    from chalkd.groups.pool import Backend, ReplicaPool
    from chalkd.groups.proxy import GroupProxy

    async def main() -> None:
        pool = ReplicaPool("bench")
        for i, hp in enumerate(backends.split(",")):
            host, port = hp.rsplit(":", 1)
            pool.add(Backend(f"r-{i}", host, int(port), state="ready"))
        proxy = GroupProxy(pool, name="bench", auth_key=None)
        print(await proxy.start("127.0.0.1", 0), flush=True)
        await _until_term()
        await proxy.close(grace=1.0)

    uvloop.run(main())


async def _until_term() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def role_load(port: int, concurrency: int, duration: float, warmup: float) -> None:
    """Keep ``concurrency`` keep-alive connections busy (one request in flight each) against port; print
    JSON: requests/s and latency percentiles (ms) over ``duration`` seconds after ``warmup``."""
    import uvloop

    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    clock = time.perf_counter

    class Conn(asyncio.Protocol):
        """A minimal HTTP/1.1 client: Content-Length bodies only (all the app sends)."""

        def __init__(self, window: dict[str, float], done: asyncio.Future[None]) -> None:
            self.buf = b""
            self.window = window
            self.done = done
            self.sent = 0.0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            self._send()

        def _send(self) -> None:
            self.sent = clock()
            if self.sent >= self.window["end"]:
                self.transport.close()  # type: ignore[attr-defined]
                return
            self.transport.write(request)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                head_end = self.buf.find(b"\r\n\r\n")
                if head_end < 0:
                    return
                head = self.buf[:head_end]
                i = head.lower().find(b"content-length:")
                if i < 0:
                    counts["errors"] += 1
                    self.transport.close()  # type: ignore[attr-defined]
                    return
                j = head.find(b"\r\n", i)
                length = int(head[i + 15: j if j >= 0 else len(head)])
                total = head_end + 4 + length
                if len(self.buf) < total:
                    return
                ok = head.startswith(b"HTTP/1.1 200")
                self.buf = self.buf[total:]
                now = clock()
                if now >= self.window["start"]:
                    if ok:
                        latencies.append(now - self.sent)
                        counts["ok"] += 1
                    else:
                        counts["errors"] += 1
                self._send()

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():
                self.done.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        t0 = clock()
        window = {"start": t0 + warmup, "end": t0 + warmup + duration}
        dones = []
        for _ in range(concurrency):
            done: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(lambda d=done: Conn(window, d), "127.0.0.1", port)  # type: ignore[misc]
            dones.append(done)
        await asyncio.wait_for(asyncio.gather(*dones), warmup + duration + 30)

    uvloop.run(main())
    ms = [x * 1000 for x in latencies]
    print(json.dumps({"requests_per_s": round(counts["ok"] / duration, 1), "ok": counts["ok"],
                      "errors": counts["errors"], "p50_ms": round(statistics.median(ms), 3) if ms else None,
                      "p99_ms": round(percentile(ms, 99), 3) if ms else None,
                      "mean_ms": round(statistics.fmean(ms), 3) if ms else None}))


# -- the parts ------------------------------------------------------------------------------------------------

def _spawn(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, str(HERE), *args], stdout=subprocess.PIPE, text=True,
                            cwd=HERE.parents[1])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"{' '.join(args)}: did not start (said {line!r})")
    return proc, int(line)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(port: int, concurrency: int, duration: float, warmup: float,
          watch: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """One load run; with ``watch`` ({"proxy": [pid], "apps": [pids]}), also the CPU microseconds each
    group of processes spent per answered request (warm-up included in both, so a slight overestimate)."""
    before = {k: [_cpu_seconds(p) for p in pids] for k, pids in (watch or {}).items()}
    out = subprocess.run([sys.executable, str(HERE), "--role", "load", "--port", str(port), "--concurrency",
                          str(concurrency), "--duration", str(duration), "--warmup", str(warmup)],
                         capture_output=True, text=True, check=True, cwd=HERE.parents[1])
    result: dict[str, Any] = json.loads(out.stdout)
    answered = result["ok"] * (duration + warmup) / duration
    for k, pids in (watch or {}).items():
        after = [_cpu_seconds(p) for p in pids]
        if answered and None not in after and None not in before[k]:
            spent = sum(a - b for a, b in zip(after, before[k], strict=True))  # type: ignore[operator]
            result[f"cpu_us_per_request_{k}"] = round(spent / answered * 1e6, 1)
    return result


def part_proxy(args: argparse.Namespace) -> dict[str, Any]:
    """The proxy against each app kind in ``--apps``."""
    out: dict[str, Any] = {
        "proxy": "chalkd.groups.proxy.GroupProxy on uvloop in its own process, least outstanding over both apps",
        "load_generator": "raw HTTP/1.1 keep-alive client on uvloop, one process, one request in flight "
                          "per connection; the best of --rounds alternating runs counts",
        "targets": {"p50_added_ms_at_most": 1.0, "throughput_ratio_at_least": 0.7},
    }
    for kind in [k.strip() for k in args.apps.split(",") if k.strip()]:
        out[f"app_{kind}"] = _proxy_vs_direct(args, kind)
    return out


def _proxy_vs_direct(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    procs: list[subprocess.Popen[str]] = []
    try:
        ports = []
        for _ in range(2):
            proc, port = _spawn("--role", "app", "--app", kind)
            procs.append(proc)
            ports.append(port)
        proc, proxy_port = _spawn("--role", "proxy", "--backends", ",".join(f"127.0.0.1:{p}" for p in ports))
        procs.append(proc)
        app_pids = [p.pid for p in procs[:2]]
        direct_watch = {"app": app_pids[:1]}
        proxy_watch = {"proxy": [proc.pid], "apps": app_pids}

        def measure(concurrency: int, duration: float) -> dict[str, Any]:
            rows: dict[str, list[dict[str, Any]]] = {"direct": [], "proxy": []}
            for _ in range(args.rounds):
                rows["direct"].append(_load(ports[0], concurrency, duration, args.warmup, direct_watch))
                rows["proxy"].append(_load(proxy_port, concurrency, duration, args.warmup, proxy_watch))
            best = {k: max(v, key=lambda r: r["requests_per_s"]) for k, v in rows.items()}
            d, p = best["direct"], best["proxy"]
            return {
                "concurrency": concurrency, "duration_s": duration,
                "direct_one_app": d, "through_proxy_two_apps": p,
                "throughput_ratio": round(p["requests_per_s"] / d["requests_per_s"], 3),
                "p50_added_ms": round(p["p50_ms"] - d["p50_ms"], 3),
                "p99_added_ms": round(p["p99_ms"] - d["p99_ms"], 3),
                "all_rounds_requests_per_s": {k: [r["requests_per_s"] for r in v] for k, v in rows.items()},
                # What one core could carry through the proxy alone, from its CPU per request.
                "proxy_one_core_rps_estimate": round(1e6 / p["cpu_us_per_request_proxy"])
                if p.get("cpu_us_per_request_proxy") else None,
            }

        loaded = measure(args.concurrency, args.duration)
        single = measure(1, min(args.duration, 3.0))
        return {
            "app": APPS[kind] + "; 2 processes, answering 2 bytes; the direct row hits one of them",
            "loaded": loaded,
            "unloaded_latency": single,
        }
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


APPS = {"aiohttp": "aiohttp on uvloop (the fastest Python app: the proxy's worst case)",
        "stdlib": "http.server ThreadingHTTPServer, HTTP/1.1 keep-alive (the issue's fallback app)"}
def part_docker(args: argparse.Namespace) -> dict[str, Any]:
    """A real group on the Docker runtime (the stdlib test app): the first answer of a group scaled to zero,
    and the time from a burst of slow requests to max_replicas ready (then back to zero)."""
    import tempfile
    import threading

    import httpx

    from chalkcompute import Image, ScalingGroup
    from tests.conftest import Daemon
    from tests.docker.conftest import remove_home_containers

    app = HERE.parents[1] / "tests" / "docker" / "apps" / "group_app.py"
    home = Path(tempfile.mkdtemp(prefix="bench-groups-"))
    d = Daemon(home, extra_args=("--runtime", "docker", "--group-cooldown", "1",
                                 "--group-ports", "52300-52309")).start()
    os.environ["CHALK_COMPUTE_TARGET"] = d.target
    max_replicas = 4
    out: dict[str, Any] = {"app": "tests/docker/apps/group_app.py (stdlib http.server)",
                           "max_replicas": max_replicas, "cooldown_s": 1.0}
    try:
        img = Image.debian_slim().add_local_file(str(app), "/app/app.py").entrypoint(["python", "/app/app.py"])
        sg = ScalingGroup(image=img, name="bench", min_replicas=0, max_replicas=max_replicas)
        t = time.perf_counter()
        sg.deploy()
        out["first_deploy_s"] = round(time.perf_counter() - t, 3)

        def until_zero() -> None:
            deadline = time.monotonic() + 60
            while sg.refresh(wait=2).status != "ScaledToZero":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not back to zero: {sg.info}")

        firsts, bursts, back = [], [], []
        for _ in range(args.rounds):
            until_zero()
            t = time.perf_counter()
            r = httpx.get(f"{sg.web_url}/health", timeout=60)
            assert r.status_code == 200, r.text
            firsts.append(time.perf_counter() - t)
            until_zero()

            def hit() -> None:
                with httpx.Client(timeout=120) as c:
                    for _ in range(4):
                        c.get(f"{sg.web_url}/slow?ms=1000")

            threads = [threading.Thread(target=hit) for _ in range(8 * max_replicas)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            while sg.refresh().ready_replicas < max_replicas:
                if time.perf_counter() - t > 120:
                    raise RuntimeError(f"max replicas not ready: {sg.info}")
                time.sleep(0.02)
            bursts.append(time.perf_counter() - t)
            for th in threads:
                th.join()
            t = time.perf_counter()
            until_zero()
            back.append(time.perf_counter() - t)
        out["scale_from_zero_first_response_s"] = [round(x, 3) for x in firsts]
        out["burst_to_max_replicas_ready_s"] = [round(x, 3) for x in bursts]
        out["burst_end_to_scaled_to_zero_s"] = [round(x, 3) for x in back]
        sg.delete()
    finally:
        d.stop()
        remove_home_containers(home)
    return out


PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"proxy": part_proxy, "docker": part_docker}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="proxy", help=f"comma-separated, of: {', '.join(PARTS)}")
    ap.add_argument("--out", default="")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight (one per connection)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--apps", default="aiohttp,stdlib", help=f"part proxy: app kinds, of: {', '.join(APPS)}")
    ap.add_argument("--app", default="aiohttp", help=argparse.SUPPRESS)
    ap.add_argument("--role", choices=("app", "proxy", "load"), help=argparse.SUPPRESS)
    ap.add_argument("--backends", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "app":
        return role_app(args.app)
    if args.role == "proxy":
        return role_proxy(args.backends)
    if args.role == "load":
        return role_load(args.port, args.concurrency, args.duration, args.warmup)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"--parts: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "note": "a shared machine: other work ran beside this, so figures are noisy"},
    }
    for part in parts:
        results[part] = PARTS[part](args)
    emit(results, out=args.out)


if __name__ == "__main__":
    main()

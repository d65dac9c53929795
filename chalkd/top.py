"""``chalkd top``: a live terminal view of a daemon's /metrics (functions, sandboxes, groups, GPUs).

    chalkd top                  # refreshes every second; q or Ctrl-C to quit
    chalkd top --once           # one frame (rates over one --interval), for scripts and tests

It asks the daemon for its HTTP port over gRPC first (``Status``): the token handshake there proves the
daemon knows the token before the token is sent anywhere, and only then does the same token go, as a
bearer header, to the port that daemon named. Frames are built from Prometheus text with
prometheus-client's parser; rates (calls/s, mean latency) are the difference of two scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]


@dataclass
class Sample:
    """One scrape: ``values[metric name][labels] = value`` (histograms' ``_sum``/``_count`` included),
    taken at monotonic time ``at``."""

    at: float
    values: dict[str, dict[Labels, float]] = field(default_factory=lambda: defaultdict(dict))

    @classmethod
    def parse(cls, text: str, at: float) -> Sample:
        """
        >>> s = Sample.parse('chalkd_calls_total{function="f",outcome="succeeded"} 3.0\\n', 0.0)
        >>> s.get("chalkd_calls_total", function="f", outcome="succeeded")
        3.0
        """
        sample = cls(at)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                sample.values[s.name][tuple(sorted(s.labels.items()))] = s.value
        return sample

    def get(self, name: str, **labels: str) -> float:
        return self.values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def by(self, name: str, label: str) -> dict[str, float]:
        """``name``'s values summed over every label but ``label``."""
        out: dict[str, float] = defaultdict(float)
        for key, value in self.values.get(name, {}).items():
            out[dict(key).get(label, "")] += value
        return out

    def rows(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        for key, value in sorted(self.values.get(name, {}).items()):
            yield dict(key), value


def frame(now: Sample, before: Sample | None, target: str) -> RenderableType:
    """One screen: a header, then functions, sandboxes, scaling groups and GPUs (each only when there is
    something to show, functions always)."""
    dt = (now.at - before.at) if before is not None else 0.0
    info = next(iter(now.values.get("chalkd_info", {})), ())
    version = dict(info).get("version", "?")
    header = Text(f"chalkd {version} at {target}, up {now.get('chalkd_uptime_seconds'):.0f}s, "
                  f"{now.get('chalkd_calls_submitted_total'):.0f} calls submitted"
                  + ("" if dt else "  (rates need two frames)"), style="bold")
    parts: list[RenderableType] = [header]

    calls = now.by("chalkd_calls_total", "function")
    failed: dict[str, float] = defaultdict(float)
    for labels, value in now.rows("chalkd_calls_total"):
        if labels.get("outcome") == "failed":
            failed[labels["function"]] += value
    queued = now.by("chalkd_queue_depth", "function")
    inflight = now.by("chalkd_calls_in_flight", "function")
    replicas: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in now.rows("chalkd_replicas"):
        replicas[labels["function"]][labels["state"]] = value
    lat_sum = now.by("chalkd_call_duration_seconds_sum", "function")
    lat_count = now.by("chalkd_call_duration_seconds_count", "function")
    old_calls = before.by("chalkd_calls_total", "function") if before else {}
    old_sum = before.by("chalkd_call_duration_seconds_sum", "function") if before else {}
    old_count = before.by("chalkd_call_duration_seconds_count", "function") if before else {}

    table = Table("FUNCTION", "CALLS/S", "CALLS", "FAILED", "IN FLIGHT", "QUEUED", "REPLICAS", "MEAN LATENCY",
                  title="functions", title_justify="left")
    for name in sorted(set(calls) | set(queued) | set(inflight) | set(replicas)):
        rate = latency = "-"
        if dt > 0:
            rate = f"{(calls.get(name, 0.0) - old_calls.get(name, 0.0)) / dt:.1f}"
            n = lat_count.get(name, 0.0) - old_count.get(name, 0.0)
            if n > 0:
                latency = _seconds((lat_sum.get(name, 0.0) - old_sum.get(name, 0.0)) / n)
        r = replicas.get(name, {})
        shown = f"{r.get('ready', 0):.0f} ready" + "".join(
            f", {v:.0f} {state}" for state, v in sorted(r.items()) if state != "ready" and v)
        table.add_row(name, rate, f"{calls.get(name, 0):.0f}", f"{failed.get(name, 0):.0f}",
                      f"{inflight.get(name, 0):.0f}", f"{queued.get(name, 0):.0f}", shown, latency)
    parts.append(table)

    sandboxes = {labels["status"]: v for labels, v in now.rows("chalkd_sandboxes")}
    if sandboxes:
        parts.append(Text("sandboxes: " + ", ".join(f"{v:.0f} {s}" for s, v in sorted(sandboxes.items()))))

    ready = now.by("chalkd_group_replicas_ready", "group")
    if ready:
        groups = Table("GROUP", "READY REPLICAS", "REQUESTS IN FLIGHT", title="scaling groups", title_justify="left")
        busy = now.by("chalkd_group_requests_in_flight", "group")
        for name in sorted(ready):
            groups.add_row(name, f"{ready[name]:.0f}", f"{busy.get(name, 0):.0f}")
        parts.append(groups)

    totals = {labels["gpu"]: (labels, v) for labels, v in now.rows("chalkd_gpu_allocated")}
    if totals:
        gpus = Table("GPU", "NAME", "UTIL", "MEMORY", "ALLOCATED", title="GPUs", title_justify="left")
        for gpu, (labels, held) in sorted(totals.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
            util = now.values.get("chalkd_gpu_utilization_ratio", {}).get(tuple(sorted(labels.items())))
            used = now.values.get("chalkd_gpu_memory_used_bytes", {}).get(tuple(sorted(labels.items())))
            total = now.values.get("chalkd_gpu_memory_total_bytes", {}).get(tuple(sorted(labels.items())))
            memory = f"{_gib(used)} / {_gib(total)}"
            gpus.add_row(gpu, labels["name"], "?" if util is None else f"{util * 100:.0f}%", memory,
                         "yes" if held else "no")
        parts.append(gpus)
    return Group(*parts)


def _seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def _gib(b: float | None) -> str:
    return "?" if b is None else f"{b / 2**30:.1f} GiB"


class TopError(Exception):
    """Why top cannot show this daemon (no answer, no HTTP port, the token refused)."""


async def _metrics_endpoint(target: str) -> tuple[str, str, bool | str]:
    """(the /metrics URL, the proven token, TLS verify) from the daemon's Status over gRPC."""
    from grpclib import GRPCError

    from chalkd.web.app import find_http

    try:
        http = await find_http(target)
    except GRPCError as exc:
        raise TopError(exc.message or str(exc)) from None
    except (ValueError, ConnectionError) as exc:
        raise TopError(str(exc)) from None
    if http.token is None:
        raise TopError(f"no token for {target}: set $CHALK_COMPUTE_TOKEN or $CHALKD_HOME")
    # The key the daemon proved it knows (the handshake), so no other daemon's token is ever sent.
    return f"{http.base}/metrics", http.token, http.tls if isinstance(http.tls, str) else True


def _scrape(client: httpx.Client, url: str) -> Sample:
    try:
        resp = client.get(url)
    except httpx.HTTPError as exc:
        raise TopError(f"cannot read {url}: {exc}") from None
    if resp.status_code != 200:
        raise TopError(f"{url} answered {resp.status_code}: {resp.text.strip()[:300]}")
    return Sample.parse(resp.text, time.monotonic())


def _quit_pressed(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a key on a terminal's stdin; True for q/Q."""
    if not sys.stdin.isatty():
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready) and sys.stdin.read(1).lower() == "q"


@contextlib.contextmanager
def _cbreak() -> Iterator[None]:
    """Keys arrive one at a time (no Enter needed) while inside, when stdin is a terminal."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def top_command(args) -> int:
    console = Console()
    if not args.interval > 0:
        print(f"chalkd: --interval must be positive seconds, got {args.interval:g}", file=sys.stderr)
        return 2
    try:
        url, token, verify = asyncio.run(_metrics_endpoint(args.target))
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, verify=verify, timeout=10) as client:
            before = _scrape(client, url)
            if args.once:
                time.sleep(args.interval)
                console.print(frame(_scrape(client, url), before, args.target))
                return 0
            with _cbreak(), Live(frame(before, None, args.target), console=console, screen=False,
                                 auto_refresh=False) as live:
                while not _quit_pressed(args.interval):
                    now = _scrape(client, url)
                    live.update(frame(now, before, args.target), refresh=True)
                    before = now
    except TopError as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0

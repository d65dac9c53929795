"""Readiness probes: one `ProbeLoop` per replica marks it ready or unready in its `ReplicaPool`.

    spec = ProbeSpec(kind="http", path="/health", period_seconds=5, failure_threshold=3)
    loop = ProbeLoop(spec, pool, backend, session)   # session: the proxy's shared aiohttp.ClientSession
    loop.start()
    await asyncio.wait_for(loop.first_ready.wait(), 300)
    ...
    await loop.stop()

Before its first success a replica is probed quickly (every 100 ms, backing off towards
``period_seconds``) so a new replica takes traffic as soon as it listens; after that every
``period_seconds``. ``failure_threshold`` failures in a row mark it unready (no new requests); the next
success marks it ready again. ``kind="http"``: a 2xx or 3xx answer to GET ``path`` is ready;
``kind="tcp"``: the port accepts a connection.

>>> ProbeSpec(kind="http", path="health")
Traceback (most recent call last):
ValueError: readiness probe path must start with '/' and hold no spaces, control characters or '#', got 'health'
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from chalkcompute._contract import Probe
from chalkd.groups.pool import Backend, ReplicaPool

log = logging.getLogger(__name__)

FIRST_DELAY = 0.1  # seconds between the first probes of a new replica
BACKOFF = 1.5  # ... growing by this factor towards period_seconds


#: How a replica is judged ready (the one dataclass the SDK's ReadinessProbe also is); see the module docstring.
ProbeSpec = Probe


async def probe_once(spec: ProbeSpec, host: str, port: int, session: aiohttp.ClientSession) -> str | None:
    """Probe once: None when ready, else a short reason why not ("connection refused", "HTTP 503", ...)."""
    try:
        async with asyncio.timeout(spec.timeout_seconds):
            if spec.kind == "tcp":
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass  # the app reset the probe's connection: it did accept it
                return None
            url = f"http://{_host_literal(host)}:{port}{spec.path}"
            async with session.get(url, allow_redirects=False, headers={"User-Agent": "chalkd-probe"}) as resp:
                if 200 <= resp.status < 400:
                    return None
                return f"HTTP {resp.status} from GET {spec.path}"
    except TimeoutError:
        return f"no answer within {spec.timeout_seconds:g}s"
    except (OSError, aiohttp.ClientError) as e:
        return _reason(e)
    except Exception as e:  # a probe never kills its loop; the reason says what went wrong
        log.debug("probe of %s:%s failed", host, port, exc_info=True)
        return f"probe error: {type(e).__name__}: {e}"


class ProbeLoop:
    """Probes one backend until stopped; see the module docstring. ``last_error``: the latest failed
    probe's reason (None after a success); ``first_ready``: set at the first success."""

    def __init__(self, spec: ProbeSpec, pool: ReplicaPool, backend: Backend, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.pool = pool
        self.backend = backend
        self.session = session
        self.first_ready = asyncio.Event()
        self.last_error: str | None = None
        self.failures = 0  # in a row
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"the probe of replica {self.backend.id} is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"probe-{self.backend.id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        spec, b = self.spec, self.backend
        delay = FIRST_DELAY
        # Quick probing until the first success: a new replica takes traffic as soon as it listens.
        while True:
            error = await probe_once(spec, b.host, b.port, self.session)
            if error is None:
                break
            self.last_error = error
            await asyncio.sleep(delay)
            delay = min(delay * BACKOFF, spec.period_seconds)
        self.last_error = None
        self.pool.set_ready(b.id, True)
        self.first_ready.set()
        log.debug("group %r: replica %s ready", self.pool.group, b.id)
        while True:
            await asyncio.sleep(spec.period_seconds)
            error = await probe_once(spec, b.host, b.port, self.session)
            if error is None:
                self.failures = 0
                self.last_error = None
                if b.state == "unready":
                    log.info("group %r: replica %s ready again", self.pool.group, b.id)
                self.pool.set_ready(b.id, True)
                continue
            self.failures += 1
            self.last_error = error
            if self.failures >= spec.failure_threshold and b.state == "ready":
                log.warning("group %r: replica %s unready after %d failed probes: %s",
                            self.pool.group, b.id, self.failures, error)
                self.pool.set_ready(b.id, False)


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _reason(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or e.os_error}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the app closed the connection without answering"
    text = str(e) or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "..."

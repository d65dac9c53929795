"""Daemon settings: arguments, then ``CHALKD_*`` environment variables, then defaults.

    config = Config(port=0, home=Path("/tmp/chalkd-test"))   # port 0: pick a free one
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from chalkcompute._contract import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
DEFAULT_HTTP_PORT = 50052   # /metrics (and the dashboard): chalkd.web
DEFAULT_MAX_MESSAGE = DEFAULT_MAX_MESSAGE_BYTES  # the contract both sides share
DEFAULT_MEMORY_BUDGET = 2**30
_REGISTRY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?")

_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str, what: str = "size") -> int:
    """Bytes from ``"1073741824"``, ``"512MiB"``, ``"1 GiB"`` or ``"2g"``.

    >>> parse_size("512MiB")
    536870912
    """
    t = str(text).strip().lower().replace(" ", "")
    num = t.rstrip("kmgtib")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in _SIZE_UNITS or value < 0:
        raise ValueError(f"{what} must be a size such as 1073741824, 512MiB or 1GiB, got {text!r}")
    return int(value * _SIZE_UNITS[unit])


def default_home() -> Path:
    env = os.environ.get("CHALKD_HOME")
    return Path(env) if env else Path(platformdirs.user_data_dir("chalkd"))


def default_ca_bundle() -> str | None:
    """``$CHALKD_BUILD_CA_BUNDLE``, else ``$SSL_CERT_FILE``, else the system bundle when there is one.

    Image builds trust it (pip, curl, requests inside ``RUN`` steps): where a
    network intercepts TLS, that is what lets a build reach a package registry.
    """
    for candidate in (os.environ.get("CHALKD_BUILD_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


@dataclass
class Config:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    home: Path = field(default_factory=default_home)
    runtime: str = "auto"                  # auto | process | docker | swarm
    # The Docker engine to drive (None: $DOCKER_HOST or the local socket); for swarm, a manager's. Swarm only:
    # the address remote workers dial (TLS), where built images go (a registry, or node engines to copy to).
    engine: str | None = None
    advertise_addr: str | None = None
    registry: str | None = None
    node_engines: dict[str, str] = field(default_factory=dict)
    durability: str = "normal"             # normal | full
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    heartbeat_timeout: float = 15.0
    drain_timeout: float = 30.0
    max_attempts: int = 3
    cancel_grace: float = 5.0              # seconds a cancelled handler has to stop before its replica is killed
    sweep_interval: float = 60.0           # seconds between sweeps of expired results
    pip_extra_args: list[str] = field(default_factory=list)
    # Names of the daemon's env vars process replicas also get, beyond the documented pass-through set
    # (chalkd.runtime.replica_env.PASS_THROUGH); --replica-env NAME, repeatable.
    replica_env: list[str] = field(default_factory=list)
    tls_cert: str | None = None             # PEM certificate chain; needed (with tls_key) to bind beyond loopback
    tls_key: str | None = None
    build_ca_bundle: str | None = field(default_factory=lambda: default_ca_bundle())  # trusted by every image build
    pids_limit: int = 4096                 # per container (Docker runtime)
    # Bytes for the daemon's buffers (queued arguments, finished results, idempotency keys, outboxes);
    # CHALKD_MEMORY_BUDGET or --memory-budget. See chalkd.queue.core.MemoryBudget for the split.
    memory_budget: int = field(default_factory=lambda: parse_size(
        os.environ.get("CHALKD_MEMORY_BUDGET", str(DEFAULT_MEMORY_BUDGET)), "CHALKD_MEMORY_BUDGET"))
    # Connections (chalkd.connections): closed when not authenticated within auth_timeout seconds, or idle
    # (no stream, no data) for idle_timeout seconds (0: never); unauthenticated ones capped per peer.
    auth_timeout: float = 5.0
    # Handlers' output kept per call (chalkd.logs.store): at most log_max_bytes on disk (a replica a
    # quarter of it), lines older than log_max_age seconds removed. --log-max-bytes, --log-max-age.
    log_max_bytes: int = 1 << 30
    log_max_age: float = 7 * 86400.0
    # Streams (chalkd.queue.core): a generator may have chunk_window_bytes of chunks no reader has consumed;
    # one nobody reads for detached_stream_timeout seconds is cancelled; a spawned one's chunks are kept
    # for a later reader up to spawned_stream_budget bytes, then it is paused like any other.
    chunk_window_bytes: int = 16 * 2**20
    detached_stream_timeout: float = 60.0
    spawned_stream_budget: int = 256 * 2**20
    idle_timeout: float = 300.0
    max_unauthenticated_per_peer: int = 64
    # Sandboxes (chalkd.sandboxes): the engine's OCI runtime for them (runsc: gVisor), and the caps a
    # sandbox that asks for no resources gets; its writable layer is limited to sandbox_disk bytes.
    sandbox_runtime: str = "runc"
    sandbox_memory: int = 2 * 2**30
    sandbox_pids_limit: int = 1024
    sandbox_disk: int = 10 * 2**30
    sandbox_disk_check_interval: float = 30.0  # seconds between measurements where the driver cannot enforce it
    # Scaling groups (chalkd.groups): each group's proxy gets a port of this range on --host; a group
    # with fewer requests than replicas for group_cooldown seconds loses one replica.
    group_ports: tuple[int, int] = (51000, 51999)
    group_cooldown: float = 60.0
    # The HTTP port (chalkd.web): /metrics, on --host; 0 picks a free one. $CHALKD_HTTP_PORT is the default
    # (tests set it to 0: many daemons at once). metrics_open: /metrics without the token.
    http_port: int = field(default_factory=lambda: int(os.environ.get("CHALKD_HTTP_PORT", DEFAULT_HTTP_PORT)))
    metrics_open: bool = False

    def validate(self) -> None:
        if not 0 <= self.http_port < 65536:
            raise ValueError(f"--http-port must be 0-65535, got {self.http_port}")
        lo, hi = self.group_ports
        if not 1024 <= lo <= hi <= 65535:
            raise ValueError(f"--group-ports must be a range LOW-HIGH within 1024-65535, got {lo}-{hi}")
        if not self.group_cooldown > 0:
            raise ValueError(f"--group-cooldown must be positive seconds, got {self.group_cooldown:g}")
        if self.runtime not in ("auto", "process", "docker", "swarm"):
            raise ValueError(f"--runtime must be auto, process, docker or swarm, got {self.runtime!r}")
        if self.engine is not None and not self.engine.startswith(("unix://", "tcp://", "http://", "https://")):
            raise ValueError(f"--engine must be a Docker engine address (unix:///path.sock or tcp://host:port), "
                             f"got {self.engine!r}")
        if self.runtime == "swarm":
            self.advertise()  # raises naming the problem
            if self.registry is not None and not _REGISTRY.fullmatch(self.registry):
                raise ValueError(f"--registry must be HOST[:PORT] (a registry the nodes pull from, e.g. "
                                 f"10.0.0.5:5000), got {self.registry!r}")
        else:
            for flag, value in (("--advertise-addr", self.advertise_addr), ("--registry", self.registry),
                                ("--node-engine", self.node_engines)):
                if value:
                    raise ValueError(f"{flag} is for --runtime swarm (this daemon runs --runtime {self.runtime})")
        if self.build_ca_bundle and not os.path.isfile(self.build_ca_bundle):
            raise ValueError(f"--build-ca-bundle {self.build_ca_bundle!r} is not a file")
        if self.pids_limit < 16:
            raise ValueError(f"--pids-limit must be at least 16, got {self.pids_limit}")
        if self.durability not in ("normal", "full"):
            raise ValueError(f"--durability must be normal or full, got {self.durability!r}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be 0-65535, got {self.port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path and not os.path.isfile(path):
                raise ValueError(f"{flag} {path!r} is not a file")
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.tls_cert:
            raise ValueError(
                f"binding {self.host} exposes the daemon beyond this machine: that needs TLS "
                "(--tls-cert and --tls-key) so the token handshake and your code cannot be read on the way; "
                "or bind 127.0.0.1")
        from chalkd.runtime.replica_env import check_env_names

        check_env_names(self.replica_env)
        if not self.cancel_grace > 0:
            raise ValueError(f"--cancel-grace must be positive, got {self.cancel_grace:g}")
        if not self.sweep_interval > 0:
            raise ValueError(f"--sweep-interval must be positive, got {self.sweep_interval:g}")
        if self.memory_budget < 64 * 2**20:
            raise ValueError(f"--memory-budget must be at least 64 MiB, got {self.memory_budget} bytes")
        if self.log_max_bytes < 4096:
            raise ValueError(f"--log-max-bytes must be at least 4096, got {self.log_max_bytes} bytes")
        if not self.log_max_age > 0:
            raise ValueError(f"--log-max-age must be positive, got {self.log_max_age:g}")
        if self.chunk_window_bytes < 64 * 1024:
            raise ValueError(f"--chunk-window-bytes must be at least 64 KiB, got {self.chunk_window_bytes} bytes")
        if not self.detached_stream_timeout > 0:
            raise ValueError(f"--detached-stream-timeout must be positive, got {self.detached_stream_timeout:g}")
        if self.spawned_stream_budget < 0:
            raise ValueError(f"--spawned-stream-budget must be 0 or more bytes, got {self.spawned_stream_budget}")
        if not self.auth_timeout > 0:
            raise ValueError(f"--auth-timeout must be positive, got {self.auth_timeout:g}")
        if self.idle_timeout < 0:
            raise ValueError(f"--idle-timeout must be 0 (never) or positive, got {self.idle_timeout:g}")
        if not self.sandbox_runtime or not all(c.isalnum() or c in "-_." for c in self.sandbox_runtime):
            raise ValueError(f"--sandbox-runtime must name an engine runtime (runc, runsc), got "
                             f"{self.sandbox_runtime!r}")
        if self.sandbox_memory < 16 * 2**20:
            raise ValueError(f"--sandbox-memory must be at least 16 MiB, got {self.sandbox_memory} bytes")
        if self.sandbox_pids_limit < 16:
            raise ValueError(f"--sandbox-pids-limit must be at least 16, got {self.sandbox_pids_limit}")
        if not self.sandbox_disk_check_interval > 0:
            raise ValueError("--sandbox-disk-check-interval must be positive, got "
                             f"{self.sandbox_disk_check_interval:g}")
        if self.sandbox_disk < 64 * 2**20:
            raise ValueError(f"--sandbox-disk must be at least 64 MiB, got {self.sandbox_disk} bytes")
        if self.max_unauthenticated_per_peer < 1:
            raise ValueError(
                f"--max-unauthenticated-per-peer must be at least 1, got {self.max_unauthenticated_per_peer}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"--max-message-size must be at least 1024 bytes, got {self.max_message_bytes}")

    def advertise(self) -> tuple[str, int]:
        """``--advertise-addr`` as (host, port); the port defaults to ``--port`` (0: a free one).

        >>> Config(runtime="swarm", advertise_addr="10.0.0.5:7000").advertise()
        ('10.0.0.5', 7000)
        """
        if not self.advertise_addr:
            raise ValueError("--runtime swarm needs --advertise-addr ADDR[:PORT]: the address of this machine "
                             "that workers on every swarm node can reach")
        text = self.advertise_addr.strip()
        host, port = text, self.port
        if text.startswith("["):          # [v6]:port
            host, _, rest = text[1:].partition("]")
            if rest.startswith(":"):
                port = _port(rest[1:], text)
        elif text.count(":") == 1:
            host, _, p = text.partition(":")
            port = _port(p, text)
        if not host or any(c.isspace() or c in "/@" for c in host):
            raise ValueError(f"--advertise-addr {text!r} must be ADDR[:PORT] (an IP address or host name)")
        if host in ("0.0.0.0", "::"):
            raise ValueError(f"--advertise-addr {text!r} must be an address workers can dial, not a wildcard")
        return host, port

    def ssl_context(self):
        """The server's TLS context when ``tls_cert``/``tls_key`` are set, else None (plain HTTP/2)."""
        if not self.tls_cert:
            return None
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls_cert, self.tls_key)
        ctx.set_alpn_protocols(["h2"])
        return ctx


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise ValueError(f"--advertise-addr {whole!r}: the port must be 0-65535")
    return int(text)

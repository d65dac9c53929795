"""``chalkd doctor``: is this machine ready to run chalkd, and does the daemon match the SDK?

Each check is one line, ``ok``, ``warn`` or ``fail``, with a hint for the last two; the
command exits 1 when a check fails, else 0 (a warning is something that works, less well)::

    $ chalkd doctor
    ok    engine  Docker 28.2.2 at unix:///var/run/docker.sock
    ok    image   base image python:3.11-slim present (450 MB)
    ok    gpus    no GPUs (NVML: NVML Shared Library Not Found)
    ok    daemon  chalkd 0.1.0 at 127.0.0.1:50051 (runtime docker), the same version as this SDK
    ok    disk    182.3 GiB free in /home/me/.local/share/chalkd

Local checks (engine, image, GPUs, disk) read this host as the daemon would; the daemon is asked
through its Status RPC at ``--target``, with the token found as the SDK finds it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30
# An image build needs ~0.5 GB per function image (and as much again while it builds); a home
# below these can still serve calls, but builds and the database's growth will run out first.
DISK_WARN_BYTES = 5 * GiB
DISK_FAIL_BYTES = 1 * GiB
LEVELS = ("ok", "warn", "fail")


@dataclass(frozen=True)
class Check:
    """One line of the report: ``Check("disk", "warn", "3.1 GiB free in /srv/chalkd", "free some space")``."""

    name: str
    level: str          # ok | warn | fail
    message: str
    hint: str = ""

    def lines(self) -> list[str]:
        out = [f"{self.level:<5} {self.name:<7} {self.message}"]
        if self.hint:
            out.append(f"{'':<13} hint: {self.hint}")
        return out


def base_image() -> str:
    """The base image the Docker runtime needs: ``python:<this Python>-slim`` (as the daemon's ``--runtime auto``)."""
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


async def engine_checks(base: str, daemon_runtime: str | None) -> list[Check]:
    """The engine (and its version), then the base image on it. A missing engine is a warning,
    the process runtime works without one, unless the daemon that answered runs on Docker."""
    import aiodocker

    missing = "fail" if daemon_runtime == "docker" else "warn"
    hint = ("start the Docker engine (dockerd) or point DOCKER_HOST at one; without it only the process "
            "runtime runs (no containers, sandboxes, GPUs, images)")
    try:
        docker = aiodocker.Docker()
    except Exception as exc:  # aiodocker finds no socket at all
        return [Check("engine", missing, f"no Docker engine ({exc})", hint),
                Check("image", "warn", f"base image {base} not checked (no engine)")]
    try:
        try:
            version = await asyncio.wait_for(docker.version(), 5)
        except Exception as exc:
            return [Check("engine", missing, f"no Docker engine answers at {_docker_host()} "
                                             f"({exc or type(exc).__name__})", hint),
                    Check("image", "warn", f"base image {base} not checked (no engine)")]
        checks = [Check("engine", "ok", f"Docker {version.get('Version', '?')} at {_docker_host()}")]
        try:
            info = await asyncio.wait_for(docker.images.inspect(base), 5)
            checks.append(Check("image", "ok", f"base image {base} present ({info.get('Size', 0) / 1e6:.0f} MB)"))
        except Exception:
            python = base.split(":", 1)[1].removesuffix("-slim")
            checks.append(Check("image", missing, f"base image {base} missing",
                                f"`chalkd image bootstrap --python {python}` builds it from Debian packages "
                                f"(or `docker pull {base}`)"))
        return checks
    finally:
        await docker.close()


def gpu_check() -> Check:
    """The GPUs chalkd would place work on (NVML, or ``$CHALKD_FAKE_GPUS``)."""
    from chalkd.gpus import FAKE_GPUS_ENV, probe_gpus

    try:
        inventory = probe_gpus()
    except ValueError as exc:
        return Check("gpus", "fail", str(exc), f"fix or unset ${FAKE_GPUS_ENV}")
    if not inventory.devices:
        why = f"NVML: {inventory.note}" if inventory.source == "nvml" else inventory.note
        return Check("gpus", "ok", f"no GPUs ({why}); functions asking for gpu= are refused")
    names = ", ".join(sorted({d.name for d in inventory.devices}))
    via = "NVML" if inventory.source == "nvml" else inventory.note
    return Check("gpus", "ok", f"{len(inventory.devices)} GPU(s): {names} ({via})")


def disk_check(home: Path, warn_bytes: int = DISK_WARN_BYTES, fail_bytes: int = DISK_FAIL_BYTES) -> Check:
    """Free space where the home is (or will be: its nearest existing parent)."""
    where = Path(home)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check("disk", "fail", f"cannot read the free space of {where}: {exc}", "check the home's path")
    message = f"{free / GiB:.1f} GiB free in {home}" + ("" if where == Path(home) else f" (not made yet; on {where})")
    hint = "free space there, or `chalkd image prune` (each function image is ~450 MB), or serve with another --home"
    if free < fail_bytes:
        return Check("disk", "fail", message + f", below {fail_bytes / GiB:g} GiB", hint)
    if free < warn_bytes:
        return Check("disk", "warn", message + f", below {warn_bytes / GiB:g} GiB", hint)
    return Check("disk", "ok", message)


def version_check(target: str, daemon_version: str, runtime: str, sdk_version: str) -> Check:
    """The running daemon's version against this SDK's: a difference is a warning (the wire may differ)."""
    if daemon_version == sdk_version:
        return Check("daemon", "ok", f"chalkd {daemon_version} at {target} (runtime {runtime}), "
                                     f"the same version as this SDK")
    return Check("daemon", "warn", f"chalkd {daemon_version} at {target} (runtime {runtime}), but this SDK is "
                                   f"{sdk_version}", "install the same version on both sides, then restart the daemon")


async def daemon_check(target: str) -> tuple[Check, object | None]:
    """Ask the daemon at ``target`` for its Status; the check and the status (None when none answered)."""
    from grpclib import GRPCError
    from grpclib.client import Channel

    import chalkcompute
    from chalkcompute._auth import client_ssl_context, credentials_for, tls_from_env
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import FunctionCatalogStub

    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return Check("daemon", "fail", f"--target must be HOST:PORT, got {target!r}"), None
    channel = Channel(host.strip("[]"), int(port), ssl=client_ssl_context(tls_from_env()))
    try:
        credentials_for(target).attach(channel)
        try:
            status = await asyncio.wait_for(FunctionCatalogStub(channel).Status(pb.StatusRequest()), 5)
        except GRPCError as exc:  # a daemon answered but refused us: the token
            return Check("daemon", "fail", f"the daemon at {target} refused us: {exc.message}",
                         "set CHALK_COMPUTE_TOKEN to what `chalkd token show` prints on its machine"), None
        except (TimeoutError, OSError) as exc:
            return Check("daemon", "warn", f"no daemon answers at {target} ({exc or 'timed out'})",
                         "start one with `chalkd serve`, or name it with --target / $CHALK_COMPUTE_TARGET"), None
        return version_check(target, status.version, status.runtime, chalkcompute.__version__), status
    finally:
        channel.close()


async def run_checks(target: str, home: Path | None) -> list[Check]:
    """Every check, in report order. ``home=None``: the answering daemon's home when it is on this
    machine, else ``$CHALKD_HOME`` or the default."""
    from chalkd.config import default_home

    daemon, status = await daemon_check(target)
    runtime = getattr(status, "runtime", None)
    checks = await engine_checks(base_image(), runtime)
    checks.append(gpu_check())
    checks.append(daemon)
    if home is None:
        served = Path(status.home) if status is not None and getattr(status, "home", "") else None
        home = served if served is not None and served.exists() else default_home()
    checks.append(disk_check(home))
    return checks


def add_parser(sub, default_target: str) -> None:
    p = sub.add_parser("doctor", help="check the engine, base image, GPUs, disk and the daemon's version")
    p.add_argument("--target", default=default_target,
                   help="daemon address (default $CHALK_COMPUTE_TARGET or 127.0.0.1:50051)")
    p.add_argument("--home", type=Path, default=None,
                   help="state directory whose disk is checked (default: the answering daemon's, else "
                        "$CHALKD_HOME or the user data dir)")


def doctor_command(args) -> int:
    """``chalkd doctor``: print each check; 1 when one fails, else 0."""
    checks = asyncio.run(run_checks(args.target, args.home))
    for check in checks:
        for line in check.lines():
            print(line)
    failed = [c.name for c in checks if c.level == "fail"]
    if failed:
        print(f"chalkd doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0

"""chalkd in your own tests: a pytest plugin with a real daemon per session.

Installed with chalkd and loaded by pytest through the ``pytest11`` entry point,
so a test needs no conftest::

    import chalkcompute

    @chalkcompute.function
    def double(x: int) -> int:
        return 2 * x

    def test_double(chalkd):           # a daemon on a free port, temporary home, process runtime
        assert double(21) == 42        # the SDK's default target is that daemon
        assert "listening" in chalkd.log()

``chalkd`` lives for the session (``chalkd_scope = function`` in the ini file
gives each test its own); ``chalkd_docker`` is the same on the Docker runtime
and skips (with the reason) when no engine answers or the base image is
missing. Extra ``chalkd serve`` flags: ``chalkd_args = --cancel-grace 1``.

While a fixture is up the SDK's default target and home point at its daemon
(``CHALK_COMPUTE_TARGET``, ``CHALKD_HOME``: the SDK's first place for a token), restored
after; ``CHALK_COMPUTE_TOKEN`` is unset meanwhile (it would be the only token tried), so
other daemons a test talks to are still found by their records. Functions decorated
at import time (before any fixture ran) follow it, and a handle registered with an
earlier fixture's daemon registers again with the new one. ``CHALK_REGISTER_AT_EXIT`` is set to ``0`` for the run:
a test session never deploys its decorated functions at exit.

This module is what the entry point loads into *every* pytest run, with or
without chalkd in use: it imports only the standard library and pytest at
module level; the SDK, grpclib and aiodocker are imported when a fixture runs.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

# What the fixtures set while they are up (restored after), and the SDK state they describe.
SDK_ENV = ("CHALK_COMPUTE_TARGET", "CHALK_COMPUTE_TOKEN", "CHALKD_HOME", "CHALK_COMPUTE_TLS")
SCOPES = ("session", "package", "module", "class", "function")


def free_port() -> int:
    """A TCP port free on loopback right now (the daemon binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A ``chalkd serve`` subprocess on loopback; restartable on the same port and home.

    What the ``chalkd`` fixture hands a test, and our own tests' helper for fault tests::

        d = Daemon(tmp_path / "home", extra_args=("--cancel-grace", "1")).start()
        d.target, d.token            # "127.0.0.1:40123", the home's token
        d.kill9(); d.start()         # a crash and a restart: same port, same home, same token
        d.stop()                     # SIGTERM, a clean shutdown
    """

    def __init__(self, home: Path, port: int | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, preexec_fn: Callable[[], object] | None = None,
                 cwd: Path | None = None) -> None:
        self.home = Path(home)
        self.preexec_fn = preexec_fn  # e.g. lower the daemon's rlimits (run in the child before exec)
        self.env = env
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home / "daemon.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        """The daemon's token (``<home>/token``, written at its first start)."""
        path = self.home / "token"
        if not path.exists():
            raise RuntimeError(f"no token in {self.home} yet: the daemon writes {path} at its first start")
        return path.read_text().strip()

    @property
    def runtime(self) -> str:
        """``process`` unless ``--runtime`` is among the extra arguments."""
        args = list(self.extra_args)
        return args[args.index("--runtime") + 1] if "--runtime" in args[:-1] else "process"

    def start(self, timeout: float = 20.0) -> Daemon:
        """Start it (again) and return once it listens; raises with its log when it exits or stays silent."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"chalkd at {self.target} is already running (pid {self.proc.pid})")
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chalkd.cli", "serve", "--port", str(self.port), "--home", str(self.home),
                 "--heartbeat-timeout", "5",
                 "--http-port", "0",  # a free one: the user's own daemon may hold 50052 (extra_args may name one)
                 # Pinned: `auto` would pick Docker on a machine with an engine and the base image.
                 *(() if "--runtime" in self.extra_args else ("--runtime", "process")), *self.extra_args],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd,
                env={**os.environ, **self.env} if self.env else None, preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chalkd exited with {self.proc.returncode}:\n{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)  # another process's progress: nothing here to wait on but the port
        raise RuntimeError(f"chalkd did not listen within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """Everything the daemon wrote (all its starts, appended)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL, as a crash: no shutdown, replicas left to find out."""
        if self.proc is None:
            raise RuntimeError(f"chalkd at {self.target} was never started")
        self.proc.send_signal(signal.SIGKILL)  # a no-op when it has exited already
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait for the clean shutdown (in-flight calls get up to 30 s); SIGKILL past 40 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self, timeout: float = 20.0) -> Daemon:
        """A clean stop, then a start on the same port and home."""
        self.stop()
        return self.start(timeout)


# -- pointing the SDK at a daemon ------------------------------------------------------------


def _forget_sdk_state(target: str) -> None:
    """Make an SDK already imported (a test module's decorators ran at collection) use the new daemon.

    The SDK reads the default target from the environment on each use, but two things it keeps
    would still belong to another daemon: the cached client of ``target`` (a daemon before this one
    may have had the same port and another token) and the version a decorated function registered
    with another daemon (its id means nothing here: it registers again on its next use).
    Nothing is imported here: what the test process has not imported holds no state."""
    client_mod = sys.modules.get("chalkcompute._client")
    if client_mod is not None:
        with client_mod.Client._lock:
            for key in [k for k in client_mod.Client._instances if k.split("#", 1)[0] == target]:
                client_mod.Client._instances.pop(key).close()
    functions = sys.modules.get("chalkcompute.functions")
    if functions is not None:
        remote_function = functions.RemoteFunction
        for obj in gc.get_objects():  # no registry of handles exists; this runs once per fixture start
            # type(), not isinstance(): a proxy object's __class__ may run arbitrary code
            if issubclass(type(obj), remote_function) and getattr(obj, "target", "") is None \
                    and getattr(obj, "fn", None) is not None and getattr(obj, "_info", None) is not None:
                obj._info = None
                functions._pending.add(obj)


class _SdkPointer:
    """Sets the SDK's environment to a daemon and puts back what was there."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> Daemon:
        d = self.daemon
        self.saved = {k: os.environ.get(k) for k in SDK_ENV}
        d.token  # noqa: B018 - raises, naming the file, if the daemon has not written it
        os.environ.update(CHALK_COMPUTE_TARGET=d.target, CHALKD_HOME=str(d.home))
        # $CHALK_COMPUTE_TOKEN (a CI's token for a real daemon) would be the only token tried: the home's
        # comes first without it, and the records of other daemons a test may start still follow.
        os.environ.pop("CHALK_COMPUTE_TOKEN", None)
        os.environ.pop("CHALK_COMPUTE_TLS", None)  # a loopback daemon serves plain HTTP/2
        os.environ["CHALK_REGISTER_AT_EXIT"] = "0"
        _forget_sdk_state(d.target)
        return d

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_sdk_state(self.daemon.target)


# -- the Docker runtime's preconditions ------------------------------------------------------


def docker_problem() -> str | None:
    """Why the Docker runtime cannot run here (no engine, no base image), or None.

    The daemon's own check (``--runtime auto``): the engine at ``$DOCKER_HOST`` answers and has
    :func:`~chalkd.doctor.base_image` (``chalkd doctor`` reports the same two)."""
    import asyncio

    import aiodocker

    from chalkd.doctor import base_image

    async def probe() -> str | None:
        try:
            docker = aiodocker.Docker()
        except Exception as exc:  # no socket at all: aiodocker raises while finding it
            return f"no Docker engine ({exc})"
        try:
            try:
                await asyncio.wait_for(docker.version(), 10)
            except Exception as exc:
                return (f"no Docker engine answers at {os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}"
                        f" ({exc or type(exc).__name__})")
            try:
                await asyncio.wait_for(docker.images.inspect(base_image()), 10)
            except Exception:
                v = base_image().split(":")[1].removesuffix("-slim")
                return f"the base image {base_image()} is missing: run `chalkd image bootstrap --python {v}`"
            return None
        finally:
            await docker.close()

    return asyncio.run(probe())


def remove_home_containers(home: Path) -> None:
    """Force-remove every container and network of a daemon home (sandboxes outlive their daemon)."""
    import asyncio

    import aiodocker

    label = f"dev.chalkd.home={Path(home).resolve()}"

    async def clean() -> None:
        docker = aiodocker.Docker()
        try:
            for c in await docker.containers.list(all=True, filters={"label": [label]}):
                await c.delete(force=True)
            for n in await docker.networks.list(filters={"label": [label]}):
                await (await docker.networks.get(n["Id"])).delete()
        finally:
            await docker.close()

    try:
        asyncio.run(clean())
    except Exception as exc:  # teardown: say what was left rather than fail the test that passed
        log.warning("could not remove the containers of %s: %s", home, exc)


# -- the plugin ------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("chalkd_scope", default="session",
                  help="scope of the chalkd and chalkd_docker fixtures: session (default), package, module, "
                       "class or function (a daemon per test)")
    parser.addini("chalkd_args", type="args", default=[],
                  help="extra `chalkd serve` arguments for the chalkd fixtures, e.g. --cancel-grace 1")


def pytest_configure(config: pytest.Config) -> None:
    # A decorated function registers itself when the interpreter exits ("deploy by running the script"):
    # a test run must not deploy to whatever daemon the environment names. An explicit setting stands.
    os.environ.setdefault("CHALK_REGISTER_AT_EXIT", "0")


def _scope(fixture_name: str, config: pytest.Config) -> str:
    scope = str(config.getini("chalkd_scope")).strip() or "session"
    if scope not in SCOPES:
        raise pytest.UsageError(f"chalkd_scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return scope


def _run_daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                runtime: str) -> Iterator[Daemon]:
    args = tuple(str(a) for a in request.config.getini("chalkd_args"))
    if "--runtime" in args or "--port" in args or "--home" in args:
        raise pytest.UsageError("chalkd_args may not set --runtime, --port or --home: the fixtures choose them "
                                "(chalkd_docker for the Docker runtime)")
    d = Daemon(tmp_path_factory.mktemp(f"chalkd-{runtime}"), extra_args=("--runtime", runtime, *args))
    d.start()
    try:
        with _SdkPointer(d):
            yield d
    finally:
        d.stop()
        if runtime == "docker":
            remove_home_containers(d.home)


@pytest.fixture(scope=_scope)
def chalkd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A real chalkd (process runtime) the SDK's default target points at; a :class:`Daemon`."""
    yield from _run_daemon(request, tmp_path_factory, "process")


@pytest.fixture(scope=_scope)
def chalkd_docker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """As ``chalkd``, on the Docker runtime; skipped when no engine answers or the base image is missing
    (a failure instead with ``CHALK_REQUIRE_DOCKER=1``, for CI machines that must have them)."""
    problem = docker_problem()
    if problem is not None:
        if os.environ.get("CHALK_REQUIRE_DOCKER") == "1":
            pytest.fail(f"CHALK_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    yield from _run_daemon(request, tmp_path_factory, "docker")


__all__ = ["Daemon", "free_port", "docker_problem", "remove_home_containers", "chalkd",
           "chalkd_docker"]

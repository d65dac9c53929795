"""Swarm tests: a 2-node Docker Swarm lab (tests/swarm/lab.py) and chalkd on ``--runtime swarm`` against it.

The lab (one per session): node 1 (``swnode1``) is the manager and the daemon's node, and holds the base image;
node 2 (``swnode2``) advertises two fake GPUs as generic resources (``gpu=GPU-fake-0``, ``gpu=GPU-fake-1``) and
has no image at all, so whatever runs there was shipped by chalkd. Without root, ``ip netns``, ``unshare``,
``dockerd`` or the base image these tests are skipped, unless ``CHALK_REQUIRE_SWARM=1`` (set by ``.ci/run``),
where a missing piece fails the run. The lab is torn down (by pidfiles) after the session even when a test
fails, on SIGTERM, and at interpreter exit; a lab left by a killed session is torn down by the next one that
takes its slot (and by ``.ci/run``'s exit trap).

Fixtures::

    def test_x(swarm_lab):                  # SwarmLab: manager_url, node_url(n), host_addr, node_addr(n),
        swarm_lab.docker(2, "ps")           #   node_name(n), kill_node(n), restart_node(n), node_pid(n), docker(n, ...)
    def test_y(swarm_daemon):               # SwarmDaemon (tests.conftest.Daemon + .lab); the SDK points at it
        ...
    def test_z(swarm_daemon_factory):       # a daemon of the test's own: swarm_daemon_factory(extra_args=(...))
        d = swarm_daemon_factory(("--registry", "10.232.0.1:5000"))
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chalkd.testing import _SdkPointer
from tests.conftest import Daemon
from tests.swarm.lab import LabError, SwarmLab

log = logging.getLogger(__name__)

BASE_IMAGE = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
REQUIRED = os.environ.get("CHALK_REQUIRE_SWARM") == "1"
FAKE_GPUS = ("GPU-fake-0", "GPU-fake-1")  # node 2's generic resources (kind "gpu")
GPU_NODE = 2
HERE = os.path.dirname(__file__)


def swarm_problem() -> str | None:
    """Why the lab cannot stand up here, or None."""
    if os.geteuid() != 0:
        return "the swarm lab needs root (network namespaces, a dockerd per node)"
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux"), ("dockerd", "docker.io"),
                          ("docker", "docker.io")):
        if shutil.which(tool, path=path) is None:
            return f"no `{tool}` on PATH (Debian package {package})"
    ip = shutil.which("ip", path=path) or "ip"
    probe = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        return f"`ip netns list` fails: {probe.stderr.strip()}"
    try:
        img = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the host's Docker engine does not answer ({exc})"
    if img.returncode != 0:
        v = BASE_IMAGE.split(":")[1].removesuffix("-slim")
        return (f"the base image {BASE_IMAGE} is not on the host's engine ({img.stderr.strip()}): "
                f"run `chalkd image bootstrap --python {v}`")
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "swarm: needs root and the 2-node Docker Swarm lab (tests/swarm/lab)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.fspath).startswith(HERE):
            item.add_marker(pytest.mark.swarm)
            item.add_marker(pytest.mark.docker)


class _TermToInterrupt:
    """While the lab is up, SIGTERM (a CI timeout, `timeout(1)`) becomes KeyboardInterrupt, so pytest runs the
    fixtures' teardown (the lab's) instead of dying with it; an earlier handler of the caller's own is kept."""

    def __init__(self) -> None:
        self.installed = False

    def __enter__(self) -> None:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._raise)
            self.installed = True

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}: tearing the swarm lab down")

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def swarm_lab() -> Iterator[SwarmLab]:
    """The session's lab, up (every node Ready); torn down after the session, whatever happened."""
    problem = swarm_problem()
    if problem is not None:
        if REQUIRED:
            pytest.fail(f"CHALK_REQUIRE_SWARM=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    lab = SwarmLab.claim(node_args={GPU_NODE: [a for g in FAKE_GPUS for a in ("--node-generic-resource", f"gpu={g}")]},
                         images=[BASE_IMAGE], image_nodes=(1,))

    def teardown() -> None:
        if lab.lock is None:
            return  # done already
        if os.environ.get("CHALK_SWARM_LAB_KEEP") == "1":
            log.warning("CHALK_SWARM_LAB_KEEP=1: the swarm lab at %s is left up (the next session that takes this "
                        "slot tears it down; or BASE=%s %s/swarm-down.sh)", lab.base, lab.base, lab.base)
        else:
            try:
                lab.down()
            except LabError as exc:
                log.error("tearing the swarm lab down failed: %s", exc)
        lab.release()

    atexit.register(teardown)  # the interpreter's exit, when pytest's own teardown never ran
    try:
        with _TermToInterrupt():
            lab.up()
            yield lab
    finally:
        teardown()
        atexit.unregister(teardown)


@pytest.fixture(autouse=True)
def _swarm_nodes_back(request: pytest.FixtureRequest) -> None:
    """Before each test that uses the lab: restart a node an earlier test killed and left down."""
    if "swarm_lab" in request.fixturenames:
        request.getfixturevalue("swarm_lab").heal()


class SwarmDaemon(Daemon):
    """A chalkd on ``--runtime swarm`` against a lab: :class:`tests.conftest.Daemon` plus ``lab``."""

    def __init__(self, home: Path, lab: SwarmLab, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, with_node_engines: bool = True) -> None:
        node_engines = [a for n in range(2, lab.nodes + 1) if with_node_engines
                        for a in ("--node-engine", f"{lab.node_name(n)}={lab.node_url(n)}")]
        args = ("--runtime", "swarm", "--engine", lab.manager_url, "--advertise-addr", lab.host_addr,
                *node_engines, *extra_args)
        super().__init__(home, extra_args=args, env=env)
        self.lab = lab

    def start(self, timeout: float = 60.0) -> SwarmDaemon:  # a swarm start makes its network and CA first
        super().start(timeout)
        return self

    def remove_swarm_objects(self) -> None:
        """Remove this home's services, secrets and networks (manager) and containers (every node): the lab is
        shared by the session's daemons."""
        label = f"label=dev.chalkd.home={self.home.resolve()}"
        lab = self.lab
        try:
            for kind in ("service", "secret", "config"):
                ids = lab.docker(1, kind, "ls", "-q", "--filter", label).split()
                if ids:
                    lab.docker(1, kind, "rm", *ids, check=False)
            for n in range(1, lab.nodes + 1):
                if lab.node_pid(n) is None:
                    continue
                ids = lab.docker(n, "ps", "-aq", "--filter", label).split()
                if ids:
                    lab.docker(n, "rm", "-f", *ids, check=False)
            ids = lab.docker(1, "network", "ls", "-q", "--filter", label).split()
            if ids:
                lab.docker(1, "network", "rm", *ids, check=False)
        except LabError as exc:  # teardown: say what was left rather than fail a test that passed
            log.warning("could not remove the swarm objects of %s: %s", self.home, exc)


@pytest.fixture(scope="session")
def swarm_daemon(swarm_lab: SwarmLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmDaemon]:
    """One chalkd on the lab's swarm for the session; the SDK's default target (and home) point at it."""
    d = SwarmDaemon(tmp_path_factory.mktemp("chalkd-swarm"), swarm_lab).start()
    try:
        with _SdkPointer(d):
            yield d
    finally:
        d.stop()
        d.remove_swarm_objects()


@pytest.fixture
def swarm_daemon_factory(swarm_lab: SwarmLab,
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SwarmDaemon]]:
    """Start daemons of the test's own on the lab: ``factory(extra_args=(), env=None)``; stopped (and their swarm
    objects removed) after the test. The SDK is not pointed at them: ``with chalkd.testing._SdkPointer(d):``."""
    started: list[SwarmDaemon] = []

    def start(extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
              no_node_engines: bool = False) -> SwarmDaemon:
        d = SwarmDaemon(tmp_path_factory.mktemp("chalkd-swarm-own"), swarm_lab, tuple(extra_args), env,
                        with_node_engines=not no_node_engines)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop()
        d.remove_swarm_objects()

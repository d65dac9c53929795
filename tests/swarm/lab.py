"""A 2-node Docker Swarm on this one machine for chalkd's swarm tests: a wrapper of ``tests/swarm/lab/*.sh``.

Each node is a separate ``dockerd`` in its own network namespace (the recipe in ``shared/swarm-lab``); the
host reaches node n at ``node_addr(n)`` and the nodes reach the host at ``host_addr``. Labs live in *slots*
so that several test sessions (and a developer's own lab on 10.231.0.x, which no slot uses) never share
addresses or namespace names: slot k is ``BASE=/tmp/chalk-swarm-lab-k``, ``NET=10.232.k``, netns
``chkkhub``/``chkkns1``.., held by an exclusive ``flock`` on ``/tmp/chalk-swarm-lab-k.lock`` for as long as
the process lives (the kernel drops it when the process dies, however it dies)::

    lab = SwarmLab.claim(node_args={2: ["--node-generic-resource", "gpu=GPU-fake-0"]},
                         images=["python:3.11-slim"])      # onto node 1 only (image_nodes=(1,))
    lab.up()                          # tears down whatever a crashed run left in this slot first
    lab.manager_url                   # "unix:///tmp/chalk-swarm-lab-0/node1.sock"
    lab.docker(1, "node", "ls")       # the docker CLI against node 1's engine; raises with its stderr
    lab.kill_node(2); lab.restart_node(2)
    lab.down()                        # by pidfiles; releases the slot

Needs root, ``ip netns``, ``unshare``, ``dockerd`` and the ``docker`` CLI.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import shlex
import subprocess
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parent / "lab"
SLOTS = 8  # labs at once on one machine (each ~300 MB of memory with an image; helpers run tests side by side)
LOCK_DIR = Path("/tmp")


class LabError(RuntimeError):
    """The lab could not do what was asked (the message carries the script's or the engine's own words)."""


class SwarmLab:
    """One lab: its settings, and the scripts run with them. See the module docstring."""

    def __init__(self, base: Path, net: str, ns_prefix: str, *, nodes: int = 2, host_if: str | None = None,
                 pool: str = "10.233.0.0/18", swarm_pool: str = "10.234.0.0/18", node_prefix: str = "swnode",
                 node_args: Mapping[int, Sequence[str]] | None = None, images: Sequence[str] = (),
                 image_nodes: Iterable[int] = (1,)) -> None:
        if not 1 <= nodes <= 9:
            raise ValueError(f"nodes={nodes}: a lab has 1..9 nodes (node n is NET.1n)")
        node_args = dict(node_args or {})
        image_nodes = tuple(image_nodes)
        for n in (*node_args, *image_nodes):
            if not 1 <= n <= nodes:
                raise ValueError(f"node {n} (in node_args or image_nodes) is not one of the lab's nodes 1..{nodes}")
        self.base = Path(base)
        self.net = net
        self.ns_prefix = ns_prefix
        self.nodes = nodes
        self.host_if = host_if or f"{ns_prefix}host"
        self.pool = pool
        self.swarm_pool = swarm_pool
        self.node_prefix = node_prefix
        self.node_args = {n: tuple(a) for n, a in node_args.items()}
        self.images = tuple(images)
        self.image_nodes = image_nodes
        self.lock: IO[bytes] | None = None  # the slot's flock, when claim() took one
        self.is_up = False
        self.up_seconds: float | None = None  # how long up() took (reported, never asserted)

    # -- slots -----------------------------------------------------------------------------------

    @classmethod
    def claim(cls, slots: int = SLOTS, **settings: object) -> SwarmLab:
        """A lab in the first free slot (its lock taken); raises :class:`LabError` when all are held."""
        for k in range(slots):
            path = LOCK_DIR / f"chalk-swarm-lab-{k}.lock"
            f = open(path, "ab")  # noqa: SIM115 - held open for the lab's lifetime: the lock is the fd
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            lab = cls(Path(f"/tmp/chalk-swarm-lab-{k}"), f"10.232.{k}", f"chk{k}",
                      pool=f"10.233.{k * 32}.0/19", swarm_pool=f"10.234.{k * 32}.0/19", **settings)  # type: ignore[arg-type]
            lab.lock = f
            return lab
        raise LabError(f"all {slots} swarm lab slots are in use (locks {LOCK_DIR}/chalk-swarm-lab-*.lock held by "
                       "other test sessions)")

    def release(self) -> None:
        """Give the slot back (after :meth:`down`)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    # -- addresses -------------------------------------------------------------------------------

    @property
    def manager_url(self) -> str:
        """Node 1's engine, the swarm manager: ``unix://BASE/node1.sock``."""
        return self.node_url(1)

    def node_url(self, n: int) -> str:
        self._check_node(n)
        return f"unix://{self.base}/node{n}.sock"

    @property
    def host_addr(self) -> str:
        """The host's address on the lab network (what containers on any node dial to reach chalkd)."""
        return f"{self.net}.1"

    def node_addr(self, n: int) -> str:
        self._check_node(n)
        return f"{self.net}.1{n}"

    def node_name(self, n: int) -> str:
        """Node n's hostname, which is its Swarm node name (``swnode2``)."""
        self._check_node(n)
        return f"{self.node_prefix}{n}"

    def node_log(self, n: int) -> Path:
        self._check_node(n)
        return self.base / f"n{n}" / "dockerd.log"

    # -- the scripts -----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The scripts' settings (common.sh documents them)."""
        env = {**os.environ, "BASE": str(self.base), "NODES": str(self.nodes), "NET": self.net,
               "NS_PREFIX": self.ns_prefix, "HOST_IF": self.host_if, "POOL": self.pool,
               "SWARM_POOL": self.swarm_pool, "NODE_PREFIX": self.node_prefix, "IMAGES": " ".join(self.images),
               "IMAGE_NODES": " ".join(str(n) for n in self.image_nodes)}
        for n in range(1, self.nodes + 1):
            env[f"DOCKERD_ARGS_{n}"] = shlex.join(self.node_args.get(n, ()))
        # A caller's PATH may lack the sbin dirs (ip, dockerd): the scripts need them.
        env["PATH"] = env.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
        return env

    def _script(self, name: str, *args: str, timeout: float) -> str:
        cmd = [str(SCRIPTS / name), *args]
        try:
            out = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{name} {' '.join(args)} (BASE={self.base}) ran past {timeout:g}s") from exc
        if out.returncode != 0:
            raise LabError(f"{name} {' '.join(args)} (BASE={self.base}) exited {out.returncode}:\n"
                           f"{out.stdout}{out.stderr}")
        if out.stderr.strip():
            log.warning("%s (BASE=%s): %s", name, self.base, out.stderr.strip())
        return out.stdout

    def up(self, timeout: float = 120.0) -> SwarmLab:
        """Tear down whatever this BASE holds (a crashed run's lab), stand the lab up, wait until every node
        is Ready in ``docker node ls``. On failure the half-made lab is torn down and :class:`LabError` raised."""
        t0 = time.monotonic()
        self.down()
        try:
            out = self._script("swarm-up.sh", timeout=timeout)
            self.is_up = True
            self.wait_ready(range(1, self.nodes + 1), timeout=max(10.0, timeout - (time.monotonic() - t0)))
        except BaseException:
            logs = "\n".join(f"--- node {n} ({self.node_log(n)}):\n{self._tail(self.node_log(n))}"
                             for n in range(1, self.nodes + 1))
            log.error("the swarm lab at %s did not come up; the nodes' logs:\n%s", self.base, logs)
            self.down()
            raise
        self.up_seconds = time.monotonic() - t0
        log.info("%s (%.1f s in all)", out.strip(), self.up_seconds)
        return self

    def down(self, timeout: float = 120.0) -> None:
        """Undo :meth:`up` (by pidfiles); a no-op when nothing is there. Keeps the slot (see :meth:`release`)."""
        self._script("swarm-down.sh", timeout=timeout)
        self.is_up = False

    # -- nodes -----------------------------------------------------------------------------------

    def node_pid(self, n: int) -> int | None:
        """Node n's dockerd pid (from its pidfile), or None when it is not running."""
        self._check_node(n)
        out = self._script("swarm-node.sh", "pid", str(n), timeout=20).strip()
        return int(out) if out else None

    def kill_node(self, n: int) -> None:
        """``kill -9`` of node n's dockerd (its containers' shims keep running, as on a real crash)."""
        self._check_node(n)
        self._script("swarm-node.sh", "kill", str(n), timeout=30)

    def restart_node(self, n: int, timeout: float = 60.0) -> None:
        """Start node n's dockerd again with its flags (killing it first when it still runs); return once the
        manager sees the node Ready again."""
        self._check_node(n)
        if self.node_pid(n) is not None:
            self.kill_node(n)
        self._script("swarm-node.sh", "start", str(n), timeout=timeout + 15)  # the script waits up to 60 s itself
        self.wait_ready([n], timeout=timeout)

    def heal(self, timeout: float = 60.0) -> None:
        """Restart every node whose dockerd is down (a test that killed one and failed before restarting it)."""
        for n in range(1, self.nodes + 1):
            if self.node_pid(n) is None:
                log.warning("swarm lab %s: node %d was down; restarting it", self.base, n)
                self.restart_node(n, timeout)

    def node_states(self) -> dict[str, str]:
        """``{hostname: state}`` as the manager sees the nodes (``ready``, ``down``, ``unknown``)."""
        out = self.docker(1, "node", "ls", "--format", "{{json .}}")
        return {row["Hostname"]: row["Status"].lower() for row in map(json.loads, out.splitlines())}

    def wait_node_state(self, n: int, state: str, timeout: float = 60.0) -> None:
        """Poll the manager until node n is in ``state`` (``ready`` / ``down``)."""
        name = self.node_name(n)
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                seen = self.node_states()
            except LabError as exc:  # the manager itself may be restarting
                seen = {"(manager)": str(exc)}
            if seen.get(name) == state:
                return
            time.sleep(0.2)  # another process's progress (the dispatcher's heartbeat): nothing to wait on
        raise LabError(f"node {name} not {state} within {timeout:g}s; the manager says {seen}")

    def wait_ready(self, nodes: Iterable[int], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for n in nodes:
            self.wait_node_state(n, "ready", max(1.0, deadline - time.monotonic()))

    def docker(self, n: int, *args: str, timeout: float = 60.0, check: bool = True,
               input: str | None = None) -> str:
        """Run the docker CLI against node n's engine and return its stdout; :class:`LabError` (with the
        command and its stderr) when it fails and ``check`` is set."""
        cmd = ["docker", "-H", self.node_url(n), *args]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                                 stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"`{shlex.join(cmd)}` ran past {timeout:g}s") from exc
        if check and out.returncode != 0:
            raise LabError(f"`{shlex.join(cmd)}` exited {out.returncode}: {out.stderr.strip()}")
        return out.stdout

    def probe_image(self, n: int) -> str:
        """An image of the host's own ``bash`` and the libraries it links (a few MB), imported on node n and named
        ``chalk-lab-probe:bash``: for reachability checks (``bash -c 'echo hi >/dev/tcp/ADDR/PORT'``) that must not
        put the base image (or any of its layers) on a node."""
        ref = "chalk-lab-probe:bash"
        if self.has_image(n, ref):
            return ref
        bash = "/bin/bash"
        ldd = subprocess.run(["ldd", bash], capture_output=True, text=True, timeout=20, check=True).stdout
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
        libs = [w for line in ldd.splitlines() for w in line.split() if w.startswith("/")]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", dereference=True) as tar:  # the files, not the symlinks
            for path in (bash, *libs):
                tar.add(path, arcname=path.lstrip("/"))
        cmd = ["docker", "-H", self.node_url(n), "import", "-", ref]
        out = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, timeout=60)
        if out.returncode != 0:
            raise LabError(f"`{shlex.join(cmd)}` exited {out.returncode}: {out.stderr.decode(errors='replace')}")
        return ref

    def has_image(self, n: int, ref: str) -> bool:
        """Whether node n's engine holds the image ``ref``."""
        cmd = ["docker", "-H", self.node_url(n), "image", "inspect", ref]
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0

    def _check_node(self, n: int) -> None:
        if not 1 <= n <= self.nodes:
            raise ValueError(f"node {n}: this lab's nodes are 1..{self.nodes}")

    @staticmethod
    def _tail(path: Path, lines: int = 15) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"({exc})"

"""The process runtime: each replica is a ``python -m chalkcompute.worker`` subprocess.

It is the embedded default when no Docker engine answers. It says plainly
what it cannot do (no isolation, no ``run_commands``): see
:mod:`chalkd.images.process_env` for how images become virtualenvs. Replicas run
as the daemon's user (a warning says so at start), but with a clean environment
(:mod:`chalkd.runtime.replica_env`), and their logs are 0600 in 0700 directories.

    runtime = ProcessRuntime(home, target="127.0.0.1:50051")
    await runtime.prepare(function_id, spec)   # a chalkd.specs.FunctionSpec
    handle = await runtime.start(ReplicaRequest(...))
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
from pathlib import Path

from chalkd.gpus import FAKE_GPUS_ENV
from chalkd.images.process_env import (
    ImageBuildError,
    ImageNotSupportedError,
    ProcessEnvBuilder,
    ProcessEnvironment,
    check_image,
)
from chalkd.logs.replica_file import ReplicaLogFile
from chalkd.model import ReplicaExit
from chalkd.runtime.base import (
    ReplicaHandle,
    ReplicaRequest,
    ReplicaStartError,
    Runtime,
    RuntimeUnsupported,
    format_size,
    refuse_placement,
)
from chalkd.runtime.keys import KEY_FILE_ENV, remove_key, write_key
from chalkd.runtime.limits import MemoryLimiter
from chalkd.runtime.replica_env import base_environment, check_env_names
from chalkd.specs import FunctionSpec

log = logging.getLogger(__name__)

ISOLATION_WARNING = (
    "the process runtime does not isolate functions: replicas run as this daemon's user, so "
    "function code can act as you (read your files, use your credentials); replicas get a clean "
    "environment (chalkd serve --replica-env NAME passes more). Use --runtime docker to isolate them.")


def private_log(path: Path) -> Path:
    """``path`` created 0600 if it does not exist yet (logs hold user output: only our user reads them),
    and tightened to 0600 if an older daemon left it readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


def _runtime_path() -> str | None:
    """The directory the daemon imports chalkcompute from, for a replica on the daemon's interpreter;
    None when that is a site-packages directory, which the interpreter finds by itself."""
    import site

    import chalkcompute

    path = Path(chalkcompute.__file__).resolve().parent.parent
    if any(Path(p).resolve() == path for p in site.getsitepackages()):
        return None
    return str(path)


class ProcessReplica(ReplicaHandle):
    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path, on_exit) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._on_exit = on_exit
        self._reader = asyncio.get_running_loop().create_task(self._read_output())

    async def _read_output(self) -> None:
        assert self.proc.stdout is not None
        with ReplicaLogFile(self.log_path) as logfile:  # 0600, rotated at its cap (chalkd.logs)
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    return
                logfile.write(line)
                self._tail.append(line.decode(errors="replace").rstrip("\n"))

    async def wait(self) -> ReplicaExit:
        rc = await self.proc.wait()
        try:
            await asyncio.wait_for(self._reader, 2.0)
        except (TimeoutError, Exception):
            self._reader.cancel()
        reason = self._on_exit() or ""
        if rc < 0:
            return ReplicaExit(signal=-rc, reason=reason)
        return ReplicaExit(code=rc, reason=reason)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(list(self._tail)[-lines:])


class ProcessRuntime(Runtime):
    name = "process"

    def __init__(self, home: Path, *, target: str, pip_extra_args: list[str] | None = None,
                 replica_env: list[str] | None = None, fast_socket: tuple[str, str] | None = None) -> None:
        self.home = Path(home)
        self.target = target
        # Names of the daemon's variables replicas also get (chalkd serve --replica-env), beyond PASS_THROUGH.
        self.replica_env = check_env_names(replica_env or [])
        self.fast_socket = fast_socket  # (path, daemon instance id): workers dial the framed socket
        self.builder = ProcessEnvBuilder(self.home, pip_extra_args=pip_extra_args)
        self.envs: dict[str, ProcessEnvironment] = {}
        self.limiter = MemoryLimiter.detect()
        self.logs = self.home / "logs" / "replicas"
        for d in (self.logs.parent, self.logs):  # replicas' output is user data: only our user reads it
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        log.warning(ISOLATION_WARNING)

    def check(self, spec: FunctionSpec) -> None:
        refuse_placement(spec, self.name)
        if spec.volumes:
            raise RuntimeUnsupported(
                f"volumes= is not supported on the process runtime (function {spec.name!r} mounts "
                f"{', '.join(repr(m.volume) for m in spec.volumes)}): run chalkd with --runtime docker")
        # With a fake inventory (CHALKD_FAKE_GPUS, tests and demos) GPU scheduling runs here too: the
        # replica is an ordinary process that gets the fake UUIDs in CUDA_VISIBLE_DEVICES.
        if spec.resources.gpu and not os.environ.get(FAKE_GPUS_ENV):
            raise RuntimeUnsupported(
                f"gpu={spec.resources.gpu!r} is not supported on the process runtime: run chalkd with --runtime docker"
            )
        try:
            check_image(spec.image)
        except ImageNotSupportedError as exc:
            raise RuntimeUnsupported(str(exc)) from None

    async def prepare(self, function_id: str, spec: FunctionSpec) -> None:
        image = spec.image
        build_log = self.home / "logs" / "builds" / f"{image.content_hash or 'default'}.log"
        build_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(private_log(build_log), "a") as out:
            def emit(line: str) -> None:
                out.write(line.rstrip("\n") + "\n")
                out.flush()
            try:
                self.envs[function_id] = await self.builder.ensure(image, log=emit)
            except (ImageBuildError, ImageNotSupportedError) as exc:
                raise ReplicaStartError(f"image build failed: {exc}") from None

    async def start(self, request: ReplicaRequest) -> ReplicaHandle:
        env_info = self.envs.get(request.function_id)
        if env_info is None:
            await self.prepare(request.function_id, request.spec)
            env_info = self.envs[request.function_id]
        fs = request.spec
        # Clean: what only the daemon was given (its tokens, cloud keys) stays with it.
        env = base_environment(self.replica_env)
        if "VIRTUAL_ENV" not in env_info.env:
            # The daemon's own interpreter, no venv: import chalkcompute from where the daemon did
            # (a source checkout or PYTHONPATH would otherwise be lost with the clean environment).
            if (path := _runtime_path()) is not None:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
        env.update(env_info.env)
        env.update(fs.env)
        env.update(request.env)
        env.update({
            "CHALK_WORKER_TARGET": self.target,
            "CHALK_COMPUTE_TARGET": self.target,
            "CHALK_REPLICA_ID": request.replica_id,
            # The key by path, not value: /proc/<pid>/environ of a replica shows no secret.
            KEY_FILE_ENV: str(write_key(self.home, request.replica_id, request.token)),
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("CHALK_REPLICA_TOKEN", None)
        # The replica's shipped code, removed with the replica (one temp dir per start piled up).
        code_dir = self.home / "replicas" / request.replica_id
        shutil.rmtree(code_dir, ignore_errors=True)
        code_dir.mkdir(mode=0o700, parents=True)
        env["CHALK_WORKER_CODE_DIR"] = str(code_dir)
        if self.fast_socket is not None:
            env["CHALK_WORKER_SOCKET"], env["CHALK_DAEMON_INSTANCE"] = self.fast_socket
        # Lets the worker pick its link before it has loaded the code.
        env["CHALK_FUNCTION_KIND"] = fs.kind
        if request.gpu_uuids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(request.gpu_uuids)
        cwd = env_info.cwd
        if cwd:
            Path(cwd).mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{request.replica_id}.log"
        proc = await asyncio.create_subprocess_exec(
            env_info.python, "-m", "chalkcompute.worker",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=env, cwd=cwd or None, start_new_session=True,
        )
        capped = self.limiter.apply(proc.pid, request.replica_id, request.memory_bytes)
        log.info("started replica %s of %s (pid %d)", request.replica_id, request.function_name, proc.pid)

        def on_exit() -> str:
            # Read the cgroup's OOM count before the group goes: it says why a SIGKILL came.
            oom = bool(capped and request.memory_bytes) and self.limiter.oom_killed(request.replica_id)
            self.limiter.release(request.replica_id)
            remove_key(self.home, request.replica_id)
            shutil.rmtree(code_dir, ignore_errors=True)
            if oom:
                return f"out of memory (over its memory limit of {format_size(request.memory_bytes)})"
            return ""

        return ProcessReplica(proc, log_path, on_exit)

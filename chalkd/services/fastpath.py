"""The daemon's end of the local fast lane (see :mod:`chalkcompute._framing`).

The same QueueService.Session and WorkerService.Connect handlers serve both
gRPC streams and framed streams on ``<home>/chalkd.sock``; only processes on
this machine that can open the socket (mode 0600: the daemon's user) use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path

from grpclib import GRPCError
from grpclib.const import Status

from chalkcompute._framing import MESSAGE, FramedStream, FrameTooLarge, read_frame, write_frame
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.auth import current_scope
from chalkd.errors import ChalkdError, Unimplemented
from chalkd.private_dir import ensure_private_dir
from chalkd.services.errors import status_of

log = logging.getLogger(__name__)

# The gRPC method each framed stream stands for, for the authenticator's scope check.
_METHODS = {b"session": "/chalk.v1.Queue/Session", b"worker": "/chalk.v1.Worker/Connect",
            b"volumes.read": "/chalk.v1.Volumes/ReadFile", b"volumes.write": "/chalk.v1.Volumes/WriteFiles",
            b"volumes.list": "/chalk.v1.Volumes/ListFiles", b"sandboxes.exec": "/chalk.v1.Sandboxes/Exec",
            b"sandboxes.read": "/chalk.v1.Sandboxes/ReadFile", b"sandboxes.write": "/chalk.v1.Sandboxes/WriteFile"}


def run_dir(home: Path) -> Path:
    """The directory of the daemon's unix sockets, private to the daemon's user: ``<home>/run``,
    or, when socket paths there would be too long for AF_UNIX, ``$XDG_RUNTIME_DIR/chalkd-<hash>``
    (when that is ours) else ``<tmp>/chalkd-<uid>/<hash>``; never a shared path another user could
    make first. Created 0700; one that exists must be ours, no symlink and closed to others, or
    :class:`~chalkd.private_dir.UnsafeDirectoryError` says why the daemon will not start. Containers
    get this directory bind-mounted at the same path, so every socket path in it means the same
    inside and out.

        run_dir(Path("/srv/chalkd"))   # -> /srv/chalkd/run
    """
    path = Path(home).resolve() / "run"
    if len(str(path)) <= 90:
        path.parent.mkdir(parents=True, exist_ok=True)
        return ensure_private_dir(path)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _ours(runtime):
        return ensure_private_dir(Path(runtime) / f"chalkd-{digest}")
    base = ensure_private_dir(Path(tempfile.gettempdir()) / f"chalkd-{os.geteuid()}")
    return ensure_private_dir(base / digest)


def _ours(directory: str) -> bool:
    """True for a real directory of ours that only we can write into (as $XDG_RUNTIME_DIR should be)."""
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def socket_path(home: Path) -> Path:
    """The framed Session/Worker socket: ``<run_dir>/chalkd.sock``."""
    return run_dir(home) / "chalkd.sock"


def grpc_socket_path(home: Path) -> Path:
    """The gRPC socket for unary calls from containers: ``<run_dir>/grpc.sock``."""
    return run_dir(home) / "grpc.sock"


class FastPathServer:
    def __init__(self, path: Path, *, session_handler, worker_handler, instance_id: str, limit: int,
                 auth=None, streams: dict[bytes, tuple] | None = None) -> None:
        self.path = path
        self.auth = auth  # chalkd.auth.Authenticator: the first frame is b"<stream> <credential>"
        self.handlers = {b"session": (pb.SessionRequest, session_handler),
                         b"worker": (pb.WorkerRequest, worker_handler),
                         **(streams or {})}  # more framed streams: name -> (request type, handler)
        self.instance_id = instance_id
        self.limit = limit
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        try:
            self.path.unlink()  # a socket left by a daemon that was killed
        except FileNotFoundError:
            pass
        self.server = await asyncio.start_unix_server(self._handle, path=str(self.path), limit=2**20)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.connections):
                task.cancel()
            if self.connections:
                await asyncio.wait(self.connections, timeout=5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.connections.add(task)
        stream = None
        try:
            first = await read_frame(reader, 256)
            if first is None:
                return
            name, _, credential = first[1].partition(b" ")
            entry = self.handlers.get(name)
            if entry is None:
                raise Unimplemented(f"no stream named {name!r}")
            if name == b"worker" and not credential:
                pass  # a worker's hello carries its replica's key, checked by WorkerService.Connect
            elif self.auth is not None:  # once per stream: its frames then go unchecked
                current_scope.set(self.auth.check(_METHODS.get(name, ""), credential.decode(errors="replace")))
            recv_type, handler = entry
            write_frame(writer, MESSAGE, self.instance_id.encode())
            stream = FramedStream(reader, writer, recv_type, limit=self.limit)
            await handler(stream)
        except GRPCError as exc:
            await _send_error(writer, exc.status, exc.message or "")
        except ChalkdError as exc:  # the auth check, or a handler without the grpc_errors decorator
            await _send_error(writer, *status_of(exc))
        except FrameTooLarge as exc:
            await _send_error(writer, Status.RESOURCE_EXHAUSTED, str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the peer went away: its calls are handled by the queue
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - logged with its traceback by status_of, answered INTERNAL
            await _send_error(writer, *status_of(exc))
        finally:
            self.connections.discard(task)
            writer.close()


async def _send_error(writer: asyncio.StreamWriter, status: Status, message: str) -> None:
    try:
        write_frame(writer, 1, f"{status.value}:{message}".encode())
        # A peer that stopped reading (a dropped session) never drains: do not wait for it forever.
        await asyncio.wait_for(writer.drain(), 5)
    except (ConnectionError, RuntimeError, TimeoutError):
        pass

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
import tempfile
from pathlib import Path

from grpclib import GRPCError
from grpclib.const import Status

from chalkcompute._framing import MESSAGE, FramedStream, FrameTooLarge, read_frame, write_frame
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.auth import current_scope

log = logging.getLogger(__name__)

# The gRPC method each framed stream stands for, for the authenticator's scope check.
_METHODS = {b"session": "/chalk.v1.Queue/Session", b"worker": "/chalk.v1.Worker/Connect"}


def run_dir(home: Path) -> Path:
    """The directory of the daemon's unix sockets: ``<home>/run``, or a short
    directory under the temp dir when socket paths there would be too long
    for AF_UNIX. Containers get this directory bind-mounted at the same path,
    so every socket path in it means the same inside and out."""
    path = Path(home).resolve() / "run"
    if len(str(path)) > 90:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"chalkd-{digest}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def socket_path(home: Path) -> Path:
    """The framed Session/Worker socket: ``<run_dir>/chalkd.sock``."""
    return run_dir(home) / "chalkd.sock"


def grpc_socket_path(home: Path) -> Path:
    """The gRPC socket for unary calls from containers: ``<run_dir>/grpc.sock``."""
    return run_dir(home) / "grpc.sock"


class FastPathServer:
    def __init__(self, path: Path, *, session_handler, worker_handler, instance_id: str, limit: int,
                 auth=None) -> None:
        self.path = path
        self.auth = auth  # chalkd.auth.Authenticator: the first frame is b"<stream> <credential>"
        self.handlers = {b"session": (pb.SessionRequest, session_handler),
                         b"worker": (pb.WorkerRequest, worker_handler)}
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
                raise GRPCError(Status.UNIMPLEMENTED, f"no stream named {name!r}")
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
        except FrameTooLarge as exc:
            await _send_error(writer, Status.RESOURCE_EXHAUSTED, str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the peer went away: its calls are handled by the queue
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("fast-path stream failed")
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

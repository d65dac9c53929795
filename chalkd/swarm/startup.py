"""Starting the Swarm runtime inside ``Server._startup`` (kept here: the server module wires, this decides).

    runtime = await start_swarm_runtime(server, builder, stack)
    # server.worker_listener: the bound TLS socket at --advertise-addr, served once the services exist
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import Any

from chalkd.connections import bind_socket
from chalkd.swarm.images import ImageShipper
from chalkd.swarm.runtime import SwarmError, SwarmRuntime

log = logging.getLogger(__name__)

__all__ = ["WorkerListener", "start_swarm_runtime"]


@dataclass
class WorkerListener:
    """Where workers on every node dial: bound now (so the port is known to the replicas' env), served later."""

    sock: socket.socket
    tls: Any   # chalkd.tls.WorkerTLS
    target: str


async def start_swarm_runtime(server: Any, builder: Any, stack: contextlib.AsyncExitStack) -> SwarmRuntime:
    """The swarm runtime for ``server`` (its config, home, engine, blobs and volumes); sets
    ``server.worker_listener``. Raises the server's StartupError naming what is wrong."""
    from chalkd.server import StartupError
    from chalkd.tls import ensure_worker_tls

    cfg = server.config
    try:
        host, port = cfg.advertise()
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        raise StartupError(f"--advertise-addr {cfg.advertise_addr}: cannot listen there ({exc.strerror}); it "
                           "must be an address of this machine that the swarm's nodes reach") from None
    stack.callback(sock.close)
    bound = sock.getsockname()[1]
    target = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    try:
        tls = ensure_worker_tls(server.home, [host])
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot make the TLS certificate for --advertise-addr {host}: {exc}") from None
    server.worker_listener = WorkerListener(sock, tls, target)
    shipper = ImageShipper(server.docker, registry=cfg.registry, node_engines=cfg.node_engines)
    runtime = SwarmRuntime(server.home, docker=server.docker, builder=builder, blobs=server.blobs,
                           volumes=server.volumes, target=target, ca_pem=tls.ca_pem, shipper=shipper,
                           instance_id=server.instance_id, pids_limit=cfg.pids_limit)
    try:
        await runtime.setup()
    except SwarmError as exc:
        await shipper.close()
        raise StartupError(str(exc)) from None
    return runtime

"""chalkd's in-container agent: PID 1, zombie reaper and a fast exec server.

Every container chalkd starts runs this as its main process::

    python3 -m chalkcompute.agent --socket /run/chalk-agent/agent.sock -- <image entrypoint and cmd>

The daemon talks to it over that unix socket (a host directory bind-mounted
into the container) with :mod:`chalkd.containers.agent_client`::

    out = await agent_exec(sock, ["echo", "hi"])     # ExecOutcome(stdout=b"hi\\n", exit_code=0, ...)

Standard library only and Python >= 3.9, because it runs under each image's
own ``python3``; nothing here imports the rest of ``chalkcompute``. The wire
format is in :mod:`.protocol`.

``python3 -m chalkcompute.agent`` imports ``chalkcompute/__init__`` first
(pyarrow, grpclib: about half a second and 40 MB more in PID 1 of every
container). :func:`entrypoint` gives a command line that finds the package
without importing it and runs the agent by path::

    config["Entrypoint"] = entrypoint("/run/chalk-agent/agent.sock")   # ends with "--"
    config["Cmd"] = [*image_entrypoint, *image_cmd]
"""

from __future__ import annotations

from .protocol import PROTOCOL_VERSION, FrameParser, ProtocolError, encode
from .server import Agent, main

__all__ = ["Agent", "main", "entrypoint", "BOOTSTRAP", "PROTOCOL_VERSION", "FrameParser", "ProtocolError",
           "encode"]

# For `python3 -c`: locate chalkcompute (find_spec of a top-level name does not
# import it) and run agent/__main__.py by path, which loads only this package.
BOOTSTRAP = ("import importlib.util, os, runpy; "
             "s = importlib.util.find_spec('chalkcompute'); "
             "runpy.run_path(os.path.join(os.path.dirname(s.origin), 'agent', '__main__.py'), run_name='__main__')")


def entrypoint(socket_path: str, *, ready_file: str | None = None, python: str = "python3",
               extra: tuple[str, ...] = ()) -> list[str]:
    """The agent's command line up to and including ``--``; append the image's own command.

        >>> entrypoint("/run/chalk-agent/agent.sock")[3:]
        ['--socket', '/run/chalk-agent/agent.sock', '--']
    """
    argv = [python, "-c", BOOTSTRAP, "--socket", socket_path]
    if ready_file:
        argv += ["--ready-file", ready_file]
    return [*argv, *extra, "--"]

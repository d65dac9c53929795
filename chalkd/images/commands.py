"""Running a build command with its output streamed line by line as it comes.

    rc, tail = await run_streamed(["pip", "install", "six"], log=print, env=os.environ)
    if rc: raise SomeError("pip failed:\\n" + "\\n".join(tail))

Used by the process runtime's virtualenv builder and the Docker runtime's
wheel and wheelhouse preparation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shlex
from collections.abc import Callable, Mapping

__all__ = ["run_streamed"]


async def run_streamed(argv: list[str], *, log: Callable[[str], None] | None, env: Mapping[str, str] | None = None,
                       tail_lines: int = 40) -> tuple[int, list[str]]:
    """Run ``argv`` (stdout and stderr merged); each line goes to ``log`` (after a
    ``$ command`` line); returns the exit status and the last ``tail_lines`` lines.
    Cancelling kills the process."""
    if log is not None:
        log(f"$ {shlex.join(argv)}")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=dict(env) if env is not None else None, limit=1 << 20)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            tail.append(line)
            if log is not None:
                log(line)
        rc = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    return rc, list(tail)

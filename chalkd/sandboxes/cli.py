"""``chalkd sandbox``: list sandboxes, run a command in one, terminate one, through the SDK.

    chalkd sandbox ls                              # id, name, status, image, created, message
    chalkd sandbox exec sb-1a2b3c -- ls -la /      # stdin and stdout passed through; its exit code is ours
    echo hi | chalkd sandbox exec sb-1a2b3c -- cat
    chalkd sandbox terminate sb-1a2b3c [--grace 5]

``exec`` streams the command's stdout and stderr to ours as they come, copies
our stdin to it (EOF closes its stdin), and turns Ctrl-C into SIGINT for the
command (a second Ctrl-C detaches and leaves it running). It exits with the
command's exit code, 128 + N when signal N ended it, as a shell does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["add_parsers", "sandbox_command"]


def add_parsers(sub: argparse._SubParsersAction, default_target: str) -> None:
    sb = sub.add_parser("sandbox", help="sandboxes: list them, run a command in one, terminate one")
    s_sub = sb.add_subparsers(dest="action", required=True)
    ls = s_sub.add_parser("ls", help="list sandboxes")
    ex = s_sub.add_parser("exec", help="run a command in a sandbox: chalkd sandbox exec [--target T] ID -- CMD ARGS...")
    ex.add_argument("id")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")
    ex.add_argument("--workdir", default=None, help="working directory inside the sandbox")
    ex.add_argument("--timeout", type=float, default=None, help="kill the command after this many seconds")
    term = s_sub.add_parser("terminate", help="terminate a sandbox (SIGTERM, then SIGKILL after --grace)")
    term.add_argument("id")
    term.add_argument("--grace", type=float, default=None, help="seconds before SIGKILL (default 10)")
    for p in (ls, ex, term):
        p.add_argument("--target", default=default_target, help="daemon address (default $CHALK_COMPUTE_TARGET "
                                                                 "or 127.0.0.1:50051)")


def sandbox_command(args) -> int:
    from chalkcompute.exceptions import ChalkError

    try:
        return _run(args)
    except (ChalkError, OSError, ValueError) as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    from chalkcompute.sandbox import SandboxClient

    client = SandboxClient(args.target)
    if args.action == "ls":
        table = Table()
        table.add_column("ID", no_wrap=True)  # whole, whatever the width: it is what the other commands take
        for col in ("NAME", "STATUS", "IMAGE", "CREATED", "MESSAGE"):
            table.add_column(col, overflow="fold")
        for info in client.list():
            table.add_row(escape(info.id), escape(info.name), info.status, escape(info.image),
                          info.created_at.strftime("%Y-%m-%d %H:%M:%S"), escape(info.status_message))
        Console().print(table)
        return 0
    if args.action == "terminate":
        client.get(args.id).terminate(args.grace)
        print(f"terminated {args.id}")
        return 0
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("chalkd: give the command after --, e.g. chalkd sandbox exec ID -- ls /", file=sys.stderr)
        return 2
    return _exec(client.get(args.id), cmd, args.workdir, args.timeout)


def _exec(sandbox, cmd: list[str], workdir: str | None, timeout: float | None) -> int:
    proc = sandbox.exec_start(cmd[0], *cmd[1:], workdir=workdir, timeout_secs=timeout)

    def pump_stdin() -> None:
        try:
            while chunk := os.read(sys.stdin.fileno(), 1 << 16):
                proc.write_stdin(chunk)
        except (OSError, ValueError):
            pass  # no stdin (closed, a terminal gone): the command just sees EOF
        finally:
            try:
                proc.close_stdin()
            except Exception:
                pass  # the command already ended

    threading.Thread(target=pump_stdin, name="stdin", daemon=True).start()
    interrupts = 0

    def on_sigint(signum, frame) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: detach, the command keeps running
        proc.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, on_sigint)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        for event in proc:
            if event.stdout is not None:
                out.write(event.stdout.encode())
                out.flush()
            elif event.stderr is not None:
                err.write(event.stderr.encode())
                err.flush()
        result = proc.wait()
    except KeyboardInterrupt:
        proc.close()
        print(f"\nchalkd: detached; exec session {proc.session_id} keeps running", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.error and result.exit_code in (126, 127, None) and result.signal is None:
        print(f"chalkd: {result.error}", file=sys.stderr)
    if result.signal is not None:
        return 128 + result.signal
    return result.exit_code if result.exit_code is not None else 1

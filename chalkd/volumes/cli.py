"""``chalkd volume``: the command-line side of the Volumes service, through the SDK.

    chalkd volume ls                          # volumes: name, files, size, created, updated
    chalkd volume ls models [checkpoints/]    # a volume's files (under a prefix): path, size, modified
    chalkd volume get models config.yaml      # to stdout, binary-safe
    chalkd volume get models w.bin -o w.bin   # streamed to a file
    chalkd volume put models config.yaml ./config.yaml   # or '-' / nothing: stdin (the volume is created if missing)
    chalkd volume rm models config.yaml
    chalkd volume delete models

Wired into :mod:`chalkd.cli`; failures print one line, ``chalkd: ...``, and exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

log = logging.getLogger(__name__)

__all__ = ["add_parsers", "volume_command"]


def add_parsers(sub: argparse._SubParsersAction, default_target: str) -> None:
    vol = sub.add_parser("volume", help="named volumes: list, read and write their files")
    v_sub = vol.add_subparsers(dest="action", required=True)
    ls = v_sub.add_parser("ls", help="list volumes, or a volume's files")
    ls.add_argument("name", nargs="?", help="list this volume's files")
    ls.add_argument("prefix", nargs="?", default="", help="only files whose paths start with this")
    get = v_sub.add_parser("get", help="print a file (or write it with -o)")
    get.add_argument("name")
    get.add_argument("path")
    get.add_argument("-o", "--output", default=None, metavar="FILE", help="write to FILE instead of stdout")
    put = v_sub.add_parser("put", help="upload a local file (or stdin) to PATH; creates the volume if missing")
    put.add_argument("name")
    put.add_argument("path")
    put.add_argument("local", nargs="?", default="-", metavar="LOCAL_FILE", help="a local file, or '-' for stdin")
    rm = v_sub.add_parser("rm", help="remove a file")
    rm.add_argument("name")
    rm.add_argument("path")
    delete = v_sub.add_parser("delete", help="delete a volume and all its files")
    delete.add_argument("name")
    for p in (ls, get, put, rm, delete):
        p.add_argument("--target", default=default_target, help="daemon address (default $CHALK_COMPUTE_TARGET "
                                                                 "or 127.0.0.1:50051)")


def volume_command(args) -> int:
    from chalkcompute.exceptions import ChalkError

    try:
        return _run(args)
    except (ChalkError, OSError, ValueError) as exc:
        print(f"chalkd: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    from chalkcompute._bridge import run_sync
    from chalkcompute.volume import VolumeClient

    console = Console()
    client = VolumeClient(args.target)
    if args.action == "ls" and args.name is None:
        table = Table("NAME", "FILES", "SIZE", "CREATED", "UPDATED")
        for info in client.list():
            table.add_row(escape(info.name), str(info.file_count), _size(info.size_bytes),
                          _when(info.created_at), _when(info.updated_at))
        console.print(table)
        return 0
    vol = client.get(args.name)
    if args.action == "ls":
        table = Table("PATH", "SIZE", "MODIFIED")
        for e in vol.iterdir(args.prefix):
            table.add_row(escape(e.path), _size(e.size), _when(dt.datetime.fromtimestamp(e.mtime, dt.UTC)))
        console.print(table)
    elif args.action == "get":
        if args.output:
            vol.get_file(args.path, args.output)
        else:
            out = sys.stdout.buffer
            agen = vol._chunks(args.path)
            try:
                while True:
                    try:
                        data, _ = run_sync(agen.__anext__())
                    except StopAsyncIteration:
                        break
                    out.write(data)
            finally:
                run_sync(agen.aclose())
            out.flush()
    elif args.action == "put":
        vol = client.create(args.name)
        if args.local == "-":
            resp = run_sync(vol._upload([(args.path, sys.stdin.buffer)]))
        else:
            resp = run_sync(vol._upload([(args.path, _local(args.local))]))
        console.print(f"{escape(args.name)}/{escape(args.path)}: {_size(resp.bytes)} written", highlight=False)
    elif args.action == "rm":
        vol.remove(args.path)
        console.print(f"{escape(args.name)}/{escape(args.path)} removed", highlight=False)
    elif args.action == "delete":
        vol.delete()
        console.print(f"volume {escape(args.name)} deleted", highlight=False)
    return 0


def _local(path: str):
    from chalkcompute.volume import _local_file

    return _local_file(path)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _when(when: dt.datetime) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")

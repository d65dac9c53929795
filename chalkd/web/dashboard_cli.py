"""``chalkd dashboard``: print and open the web dashboard's login link.

    chalkd dashboard                     # prints http://127.0.0.1:50052/login?token=... and opens a browser
    chalkd dashboard --no-open           # only prints it (a remote shell, a script)

The daemon is asked for its HTTP port (``Status``) over the authenticated gRPC channel; the link holds
the token that channel proved the daemon knows (:func:`chalkcompute._auth.find_tokens`' candidates), so
the link is only printed for a daemon that showed it has that token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

__all__ = ["add_parser", "dashboard_command"]


def add_parser(sub: argparse._SubParsersAction, default_target: str) -> None:
    p = sub.add_parser("dashboard", help="print and open the web dashboard's login link")
    p.add_argument("--target", default=default_target,
                   help="daemon address (default $CHALK_COMPUTE_TARGET or 127.0.0.1:50051)")
    p.add_argument("--no-open", action="store_true", help="print the link only, do not open a browser")


async def _login_link(target: str) -> str:
    from grpclib.client import Channel

    from chalkcompute._auth import client_ssl_context, credentials_for, tls_from_env
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import FunctionCatalogStub
    from chalkd.web.app import http_url
    from chalkd.web.dashboard import login_url

    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--target must be HOST:PORT, got {target!r}")
    tls = tls_from_env()
    channel = Channel(host.strip("[]"), int(port), ssl=client_ssl_context(tls))
    creds = credentials_for(target)
    creds.attach(channel)
    try:
        try:
            status = await asyncio.wait_for(FunctionCatalogStub(channel).Status(pb.StatusRequest()), 5)
        except (TimeoutError, OSError) as exc:
            raise ConnectionError(f"no daemon answers at {target} ({exc or 'timed out'}); "
                                  "start one with `chalkd serve`") from None
    finally:
        channel.close()
    if not status.http_port:
        raise ConnectionError(f"the daemon at {target} (chalkd {status.version}) has no HTTP port: upgrade it")
    if creds.key is None or creds.key_id:
        raise PermissionError("no token for this daemon here (a replica's credential cannot log in): "
                              "run this as the daemon's user, or set CHALK_COMPUTE_TOKEN")
    # The handshake picked the candidate the daemon proved it knows.
    return login_url(http_url(host.strip("[]"), status.http_port, bool(tls)), creds.key.decode())


def dashboard_command(args: argparse.Namespace) -> int:
    from grpclib import GRPCError

    try:
        link = asyncio.run(_login_link(args.target))
    except GRPCError as exc:
        print(f"chalkd: {exc.message}", file=sys.stderr)
        return 1
    except (ConnectionError, PermissionError, ValueError) as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1
    print(link, flush=True)
    print("the link holds the daemon's token: do not share it; it starts a dashboard session in your browser",
          file=sys.stderr)
    if args.no_open:
        return 0
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # No graphical session: webbrowser would start a text browser in this terminal.
        print("chalkd: no graphical session here (no DISPLAY): open the link above in your browser "
              "(from another machine, tunnel the HTTP port first: ssh -L PORT:127.0.0.1:PORT)", file=sys.stderr)
        return 0
    import webbrowser

    if not webbrowser.open(link):
        print("chalkd: no browser could be opened here: open the link above yourself", file=sys.stderr)
    return 0

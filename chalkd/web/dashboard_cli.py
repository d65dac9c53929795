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
    from chalkd.web.app import find_http
    from chalkd.web.dashboard import login_url

    http = await find_http(target)
    if http.token is None or http.replica_credential:
        raise PermissionError("no token for this daemon here (a replica's credential cannot log in): "
                              "run this as the daemon's user, or set CHALK_COMPUTE_TOKEN")
    # The handshake picked the candidate the daemon proved it knows.
    return login_url(http.base, http.token)


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

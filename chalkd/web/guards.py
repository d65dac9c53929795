"""The HTTP port's guards, as aiohttp middlewares: the HTTP side is guarded like the gRPC side.

Every request passes, in order:

1. :func:`host_guard` - the ``Host`` header must name this daemon (``127.0.0.1``, ``localhost``,
   ``[::1]`` or ``--host``, with the port; for a wildcard ``--host`` this machine's names and
   addresses). A page on ``evil.example`` whose name is re-pointed at 127.0.0.1 (DNS rebinding)
   sends ``Host: evil.example:50052`` and is refused.
2. :func:`origin_guard` - a request carrying an ``Origin`` (browsers send one on cross-origin fetches
   and on every POST) must come from this daemon's own origin; ``Sec-Fetch-Site`` (sent by browsers
   on every request) must be ``same-origin`` or ``none``: a scaling group's page on another port of
   the same host is same-*site*, not same-origin, and is user code, so it is refused too.
3. :func:`token_guard` - the daemon's token, as ``Authorization: Bearer <token>`` (what Prometheus
   sends with ``authorization: {credentials_file: ...}``), compared in constant time. Paths listed in
   ``app[OPEN_PATHS]`` skip it (``/metrics`` with ``--metrics-open``). The dashboard's login cookie
   goes in :class:`WebAuth.session_check` (see there): the one place a second credential plugs in.

    app = web.Application(middlewares=guards(WebAuth(token), allowed_hosts("127.0.0.1", 50052)))

Refusals are plain-text with a status and say what to fix; they never echo the token.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths that need no token (a set of exact paths), kept on the application.
OPEN_PATHS: web.AppKey[frozenset[str]] = web.AppKey("chalkd_open_paths", frozenset)
# Where the token guard records how a request was let in ("bearer", "session" or "open"): a session (a
# cookie a browser sends by itself) is what a dashboard's POST must also show a CSRF token for.
# web.RequestKey is aiohttp >= 3.12's typed key (a plain string key warns there).
AUTHORIZED_BY: Any = (web.RequestKey("chalkd_authorized_by", str) if hasattr(web, "RequestKey")
                      else "chalkd_authorized_by")

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::")


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` header values naming this daemon: the loopback names and ``host``, each with ``port``
    (lower case; IPv6 addresses in brackets, as clients write them).

    >>> sorted(allowed_hosts("127.0.0.1", 50052))
    ['127.0.0.1:50052', '[::1]:50052', 'localhost:50052']
    """
    names = {*LOOPBACK_NAMES, host.strip("[]").lower()}
    if host.strip("[]") in WILDCARDS:
        names |= _this_machine()  # a wildcard bind is not a name a client can use: the ones it can
    names -= {"", *WILDCARDS}
    return frozenset(f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names)


def _this_machine() -> set[str]:
    """This machine's names and interface addresses (a rebinding attacker controls neither: a page's
    Host is its own domain's name)."""
    import psutil  # type: ignore[import-untyped]

    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                names.add(a.address.split("%", 1)[0].lower())  # fe80::1%eth0: the zone is not in a Host
    return names


def allowed_origins(hosts: Iterable[str], tls: bool) -> frozenset[str]:
    """This daemon's own origins: the scheme it serves, then each allowed host (as browsers send them).

    >>> sorted(allowed_origins(["localhost:50052"], tls=False))
    ['http://localhost:50052']
    """
    scheme = "https" if tls else "http"
    return frozenset(f"{scheme}://{h}" for h in hosts)


@dataclass
class WebAuth:
    """Who may use the HTTP port: the daemon's token as a bearer header, or (once the dashboard adds it)
    a session ``session_check`` recognises, e.g. the HttpOnly login cookie ``chalkd dashboard`` sets.

    >>> auth = WebAuth("s3cret")
    >>> auth.bearer_ok("Bearer s3cret"), auth.bearer_ok("Bearer nope"), auth.bearer_ok(None)
    (True, False, False)
    """

    token: str
    # The dashboard's login path plugs in here: a callable saying whether a request carries a valid
    # session (cookie). None: only the bearer token is accepted.
    session_check: Callable[[web.Request], bool] | None = None
    _token: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._token = self.token.encode()

    def bearer_ok(self, header: str | None) -> bool:
        """True when ``header`` is ``Bearer <the token>``: compared with hmac.compare_digest (constant time)."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self._token)

    def authorized_by(self, request: web.Request) -> str | None:
        """``"bearer"``, ``"session"``, or None when the request carries no valid credential."""
        if self.bearer_ok(request.headers.get("Authorization")):
            return "bearer"
        if self.session_check is not None and self.session_check(request):
            return "session"
        return None


def _refuse(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers or None)


def host_guard(hosts: frozenset[str]) -> Callable:
    """Refuse (421 Misdirected Request) a request whose ``Host`` does not name this daemon: DNS rebinding."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "").strip().lower()
        if host not in hosts:
            log.info("HTTP: refused a request for Host %r from %s (not this daemon)", host[:100], request.remote)
            return _refuse(421, f"this is chalkd: Host must be one of {', '.join(sorted(hosts))} "
                                "(a request naming another host is refused: DNS rebinding)")
        return await handler(request)

    return guard


def origin_guard(origins: frozenset[str]) -> Callable:
    """Refuse (403) a cross-origin request: an ``Origin`` not this daemon's, or a browser's
    ``Sec-Fetch-Site`` other than ``same-origin``/``none`` (``none``: the user typed the address)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().lower() not in origins:
            log.info("HTTP: refused a cross-origin request from Origin %r (%s)", origin[:100], request.remote)
            return _refuse(403, "cross-origin requests are refused: this daemon's pages and /metrics are "
                                f"served only to {', '.join(sorted(origins))}")
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            log.info("HTTP: refused a %s request (Sec-Fetch-Site) from %s", site[:40], request.remote)
            return _refuse(403, f"cross-site requests are refused (Sec-Fetch-Site: {site[:40]})")
        return await handler(request)

    return guard


def token_guard(auth: WebAuth) -> Callable:
    """Refuse (401, ``WWW-Authenticate: Bearer``) a request without the token, except ``app[OPEN_PATHS]``."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in request.app[OPEN_PATHS]:
            request[AUTHORIZED_BY] = "open"
            return await handler(request)
        how = auth.authorized_by(request)
        if how is None:
            return _refuse(401, f"{request.path} needs this daemon's token: send `Authorization: Bearer <token>` "
                                "(the token is in <home>/token; `chalkd token show` prints it)"
                                + ("; or start the daemon with --metrics-open" if request.path == "/metrics"
                                   else "; in a browser, open the login link `chalkd dashboard` prints"),
                           **{"WWW-Authenticate": 'Bearer realm="chalkd"'})
        request[AUTHORIZED_BY] = how
        return await handler(request)

    return guard


def guards(auth: WebAuth, hosts: frozenset[str], *, tls: bool = False) -> list[Callable]:
    """The middlewares in their order: Host first (a rebinding page learns nothing, not even a 401),
    then Origin, then the token."""
    return [host_guard(hosts), origin_guard(allowed_origins(hosts, tls)), token_guard(auth)]

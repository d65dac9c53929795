"""The dashboard's browser sessions: a login link trades the daemon's token for a cookie.

``chalkd dashboard`` opens ``http://127.0.0.1:<http-port>/login?token=<token>`` (as Jupyter does); the
login handler checks the token in constant time, makes a session and sets a cookie holding the session's
random id, never the token: HttpOnly (no script reads it), SameSite=Strict (no other site's page makes the
browser send it), Secure when the port serves TLS. Each session has its own CSRF token, which the pages put
in their forms and :meth:`Sessions.csrf_ok` checks with ``hmac.compare_digest``.

    sessions = Sessions(port=lambda: 50052)      # the HTTP port, once bound: it names the cookie
    s = sessions.create()                        # after a good token
    response.set_cookie(cookie_name(50052), s.id, **sessions.cookie_options(tls=False))
    sessions.lookup(request)                     # the Session of a request's cookie, or None
    sessions.csrf_ok(s, form.get("csrf"))        # a POST's form field

Sessions live in memory: a daemon restart logs everyone out (run ``chalkd dashboard`` again). They expire
after :data:`SESSION_TTL` and at most :data:`MAX_SESSIONS` are kept (the oldest goes first).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, AnyStr

from aiohttp import web

# The cookie's name is this prefix and the HTTP port: browsers keep a host's cookies per host, not per port,
# so two daemons on 127.0.0.1 (other homes, other users) would otherwise overwrite each other's session.
COOKIE = "chalkd_dashboard"


def cookie_name(port: int | None) -> str:
    """The session cookie's name for the daemon on HTTP port ``port``.

    >>> cookie_name(50052)
    'chalkd_dashboard_50052'
    """
    return f"{COOKIE}_{port}"
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 64


@dataclass
class Session:
    id: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)


class Sessions:
    """See the module docstring.

    >>> sessions = Sessions(port=lambda: 50052)
    >>> s = sessions.create()
    >>> sessions.get(s.id) is s, sessions.get("nope"), sessions.csrf_ok(s, s.csrf), sessions.csrf_ok(s, "x")
    (True, None, True, False)
    """

    def __init__(self, port: Callable[[], int | None], ttl: float = SESSION_TTL, limit: int = MAX_SESSIONS) -> None:
        self._port = port
        self.ttl = ttl
        self.limit = limit
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self) -> Session:
        s = Session()
        self._by_id[s.id] = s
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        return s

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 100:
            return None
        # A dict lookup by the cookie's value: ids are 256 random bits, so a lookup's timing tells an
        # attacker nothing usable (guessing one is the attack, and there are 2**256 to try).
        s = self._by_id.get(session_id)
        if s is None:
            return None
        if time.monotonic() - s.created > self.ttl:
            self._by_id.pop(session_id, None)
            return None
        return s

    def lookup(self, request: web.Request) -> Session | None:
        """The session of the request's cookie (None: no cookie, unknown or expired)."""
        return self.get(request.cookies.get(self.cookie))

    @property
    def cookie(self) -> str:
        """This daemon's session cookie name (see :func:`cookie_name`)."""
        return cookie_name(self._port())

    def check(self, request: web.Request) -> bool:
        """For :attr:`chalkd.web.guards.WebAuth.session_check`: does the request carry a live session?"""
        return self.lookup(request) is not None

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    @staticmethod
    def csrf_ok(session: Session, value: object) -> bool:
        """A form's CSRF field against the session's, in constant time (a wrong type is simply wrong)."""
        if not isinstance(value, str) or not value:
            return False
        return hmac.compare_digest(value.encode(), session.csrf.encode())

    def cookie_options(self, *, tls: bool) -> dict:
        """``set_cookie`` keywords: HttpOnly, SameSite=Strict, path /, Secure over TLS, the session's lifetime."""
        return {"httponly": True, "samesite": "Strict", "path": "/", "secure": tls, "max_age": int(self.ttl)}


def without_session_cookie(value: AnyStr) -> AnyStr:
    """A ``Cookie`` header's value less any chalkd dashboard's session cookie (empty when nothing else is left).

    Browsers send a host's cookies to every port of it, so the session cookie set for the daemon's HTTP
    port also goes to a scaling group's port on 127.0.0.1: the group proxy drops it with this before a
    request reaches user code, which could otherwise replay it against the dashboard.

    >>> without_session_cookie("a=1; chalkd_dashboard_50052=abc; b=2"), without_session_cookie(b"chalkd_dashboard_1=x")
    ('a=1; b=2', b'')
    """
    name: Any = COOKIE if isinstance(value, str) else COOKIE.encode()
    if name not in value:
        return value
    sep, eq = (";", "=") if isinstance(value, str) else (b";", b"=")
    kept = [p for p in value.split(sep) if not p.split(eq, 1)[0].strip().startswith(name)]  # type: ignore[arg-type]
    return sep.join(kept).strip()  # type: ignore[arg-type,return-value]

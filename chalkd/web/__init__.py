"""The daemon's HTTP port: ``/metrics`` (and, later, the dashboard) behind the guards of
:mod:`chalkd.web.guards`. See :mod:`chalkd.web.app`."""

from chalkd.web.app import DEFAULT_HTTP_PORT, HttpPortError, WebServer, http_url
from chalkd.web.guards import OPEN_PATHS, WebAuth, allowed_hosts, guards

__all__ = ["DEFAULT_HTTP_PORT", "OPEN_PATHS", "HttpPortError", "WebAuth", "WebServer", "allowed_hosts", "guards",
           "http_url"]

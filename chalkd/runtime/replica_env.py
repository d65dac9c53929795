"""The environment a process replica starts with: clean, never the daemon's whole environment.

The process runtime cannot isolate user code (it runs as the daemon's user), but
it need not hand over what only the daemon was given (cloud credentials, tokens,
database URLs in the daemon's shell). A replica gets:

1. the pass-through set below, taken from the daemon's environment when set:
   what a program needs to run on this host and reach the network as the daemon
   does (``PATH``, ``HOME``, locale, temp dir, CA bundles, proxies), and the
   chalkcompute worker's own tuning knobs;
2. the names given with ``chalkd serve --replica-env NAME`` (repeatable);
3. then, by the runtime, the image's env, the function's env, its secrets and
   the worker's connection settings, which win over 1 and 2.

    env = base_environment(["MY_LICENSE_SERVER"], environ={"PATH": "/usr/bin", "AWS_SECRET_ACCESS_KEY": "x"})
    # -> {"PATH": "/usr/bin"}  (MY_LICENSE_SERVER unset, AWS_SECRET_ACCESS_KEY not passed)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

__all__ = ["PASS_THROUGH", "PASS_THROUGH_PREFIXES", "base_environment", "check_env_names"]

# What a program needs to behave on this host as the daemon does. Documented in the README.
PASS_THROUGH = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    # The chalkcompute worker's own settings (log level, grace, transport): not user data.
    "CHALK_WORKER_LOG_LEVEL", "CHALK_WORKER_GRACE",
    "CHALK_RECONNECT_TIMEOUT", "CHALK_TRANSPORT", "CHALK_MAX_MESSAGE_SIZE",
})
PASS_THROUGH_PREFIXES = ("LC_",)  # LC_ALL, LC_CTYPE, ...

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_names(names: Iterable[str], what: str = "--replica-env") -> list[str]:
    """``names`` as a list when each can be an environment variable's name, else ValueError naming it.

    >>> check_env_names(["LICENSE_SERVER"])
    ['LICENSE_SERVER']
    """
    out = []
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{what} {name!r} is not an environment variable name "
                             "(letters, digits and '_', not starting with a digit)")
        out.append(name)
    return out


def base_environment(extra: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environ`` (default: this process's) that a replica may inherit:
    :data:`PASS_THROUGH`, ``LC_*`` and the names in ``extra``; the rest stays with the daemon."""
    source = os.environ if environ is None else environ
    allowed = PASS_THROUGH | set(extra)
    return {k: v for k, v in source.items() if k in allowed or k.startswith(PASS_THROUGH_PREFIXES)}

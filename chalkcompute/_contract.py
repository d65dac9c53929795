"""The small contract the SDK, the worker and the daemon import on purpose.

Wire limits, the one message batcher and the name rules that both sides
check. The daemon already imports ``chalkcompute`` (the protobuf module, the
codecs), so these live here once instead of being written on each side; this
module imports nothing but the standard library so that it stays cheap to
import from anywhere.

    >>> [len(g) for g in batches([3, 3, 3], size=lambda n: n, limit=6)]
    [2, 1]
    >>> valid_volume_name("my-vol"), valid_volume_name("-bad")
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "MAX_BATCH_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_ENV",
    "sdk_max_payload",
    "set_max_payload",
    "too_large",
    "batches",
    "FUNCTION_NAME_RE",
    "VOLUME_NAME_RE",
    "INTEGRATION_NAME_RE",
    "ENV_NAME_RE",
    "CONTAINER_NAME_RE",
    "valid_function_name",
    "valid_volume_name",
    "valid_integration_name",
    "valid_env_name",
    "valid_container_name",
    "MAX_NAME_CHARS",
    "MAX_PATH_BYTES",
    "QUOTE_CHARS",
    "quote",
    "name_too_long",
    "path_too_long",
    "IMAGE_STEP_KINDS",
    "image_step_canonical",
    "image_content_hash",
]

T = TypeVar("T")

# -- wire limits ------------------------------------------------------------------------

#: Where several items share one gRPC message (submits in a SessionRequest, events
#: in a SessionResponse or WorkerRequest), the message is cut at this many bytes:
#: well under any ``--max-message-size`` the daemon accepts in practice, and small
#: enough that one big batch never holds up the stream for long.
MAX_BATCH_BYTES = 4 * 2**20

#: The daemon's default ``--max-message-size``: larger messages are refused with
#: RESOURCE_EXHAUSTED. The SDK checks a call's arguments against the same figure
#: (or ``$CHALK_MAX_MESSAGE_SIZE``) before sending, for a clear error at the caller.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20

#: The environment variable that tells the SDK the daemon's message limit.
MAX_MESSAGE_ENV = "CHALK_MAX_MESSAGE_SIZE"


_max_payload = [int(os.environ.get(MAX_MESSAGE_ENV, DEFAULT_MAX_MESSAGE_BYTES))]


def sdk_max_payload() -> int:
    """The largest payload (arguments, a result, one chunk) this process makes:
    ``$CHALK_MAX_MESSAGE_SIZE`` or 64 MiB; in a worker, the daemon's own limit.

    >>> sdk_max_payload() > 0
    True
    """
    return _max_payload[0]


def set_max_payload(limit: int) -> None:
    """Adopt the daemon's limit (the worker learns it when it connects)."""
    if limit > 0:
        _max_payload[0] = limit


def too_large(what: str, size: int, limit: int) -> str:
    """The one message for a payload over the limit, wherever it is made.

    >>> too_large("the result of f()", 200, 100)[:49]
    'the result of f() is 200 bytes, over the 100-byte'
    """
    return (f"{what} is {size} bytes, over the {limit}-byte limit on arguments, results and chunks "
            f"(chalkd serve --max-message-size; {MAX_MESSAGE_ENV} tells the SDK); "
            "pass large data through a volume instead")


def batches(items: Sequence[T], size: Callable[[T], int], limit: int = MAX_BATCH_BYTES,
            max_items: int | None = None) -> Iterator[list[T]]:
    """Cut ``items`` into consecutive groups whose ``size`` sum stays within ``limit``.

    Order is kept. A group holds at least one item, so one item larger than the
    limit travels alone (the receiver's own limit then decides); ``max_items``
    also caps how many items share a group. Sizes are asked once per item.

    >>> [g for g in batches([5, 1, 1, 9, 2], size=lambda n: n, limit=6)]
    [[5, 1], [1], [9], [2]]
    >>> [g for g in batches("abcde", size=lambda c: 1, limit=10, max_items=2)]
    [['a', 'b'], ['c', 'd'], ['e']]
    """
    if limit <= 0:
        raise ValueError(f"limit must be a positive number of bytes, got {limit}")
    if max_items is not None and max_items <= 0:
        raise ValueError(f"max_items must be positive or None, got {max_items}")
    cap = len(items) if max_items is None else max_items
    start, total = 0, 0
    for i, item in enumerate(items):
        n = size(item)
        if i > start and (total + n > limit or i - start >= cap):
            yield list(items[start:i])
            start, total = i, 0
        total += n
    if start < len(items):
        yield list(items[start:])


# -- quoting and length limits both sides apply first -----------------------------------

#: Every name (function, class, volume, secret, integration, container, env var) is at most this
#: many characters; checked before anything else reads the name (the rules below may be stricter).
MAX_NAME_CHARS = 128
#: Every path (in a volume, a mount point, a local directory the SDK ships) is at most this many bytes.
MAX_PATH_BYTES = 4096
#: An error message quotes at most this many characters of anything a user supplied.
QUOTE_CHARS = 100


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``value`` for an error message: its repr, cut to its first ``limit`` characters, so that
    nothing user-sized goes into a message (and so into a gRPC header, whose encoder is quadratic
    in its length: a 1 MiB function name once stalled the daemon for 52 s).

    >>> quote("etl")
    "'etl'"
    >>> quote("a" * 1000, limit=3)
    "'aaa'... (1000 characters)"
    """
    if isinstance(value, (str, bytes)) and len(value) > limit:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    try:
        text = repr(value)
    except Exception as exc:  # a user object's __repr__ may raise: the message must not
        return f"<{type(value).__name__}: repr() failed: {type(exc).__name__}>"
    return text if len(text) <= limit + 2 else text[:limit] + "..."

def name_too_long(what: str, name: object, limit: int = MAX_NAME_CHARS) -> str | None:
    """The error message when ``name`` (a str) is over ``limit`` characters, else None; cheap
    (``len``) so that it can run before any rule or lookup reads the name.

    >>> name_too_long("function name", "f") is None
    True
    >>> name_too_long("volume name", "v" * 200, limit=4)
    "invalid volume name 'vvvv'... (200 characters): longer than 4 characters"
    """
    if isinstance(name, (str, bytes)) and len(name) > limit:
        return f"invalid {what} {quote(name, limit=min(limit, QUOTE_CHARS))}: longer than {limit} characters"
    return None


def path_too_long(what: str, path: object, limit: int = MAX_PATH_BYTES) -> str | None:
    """The error message when ``path`` is over ``limit`` bytes (UTF-8), else None. A str over
    ``limit`` characters is refused without encoding it (each character is at least one byte).

    >>> path_too_long("path", "a/b") is None
    True
    >>> path_too_long("path", "é" * 3, limit=5)
    "invalid path 'ééé': longer than 5 bytes"
    """
    if isinstance(path, str):
        over = len(path) > limit or len(path.encode("utf-8", "surrogatepass")) > limit
    elif isinstance(path, bytes):
        over = len(path) > limit
    else:
        return None
    return f"invalid {what} {quote(path)}: longer than {limit} bytes" if over else None


# -- name rules both sides check ----------------------------------------------------------

#: Function names (``@function(name=...)``, the catalog). ``match`` semantics, as both
#: sides have always used them.
FUNCTION_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
#: Volume names: the SDK's ``Volume``/mounts and the daemon's volume store.
VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: Integration secret names (the same shape as volume names, a separate rule).
INTEGRATION_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: Environment variable names a secret may set.
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: Container names: one DNS label.
CONTAINER_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def valid_function_name(name: object) -> bool:
    """Whether ``name`` may name a function.

    >>> valid_function_name("etl.load-v2"), valid_function_name("2fast")
    (True, False)
    """
    return isinstance(name, str) and FUNCTION_NAME_RE.match(name) is not None


def valid_volume_name(name: object) -> bool:
    """Whether ``name`` may name a volume (1-63 of letters, digits, ``._-``; not starting with ``._-``)."""
    return isinstance(name, str) and VOLUME_NAME_RE.fullmatch(name) is not None


def valid_integration_name(name: object) -> bool:
    """Whether ``name`` may name an integration secret.

    >>> valid_integration_name("github.main")
    True
    """
    return isinstance(name, str) and INTEGRATION_NAME_RE.fullmatch(name) is not None


def valid_env_name(name: object) -> bool:
    """Whether ``name`` may be set as an environment variable by a secret.

    >>> valid_env_name("API_KEY"), valid_env_name("1X")
    (True, False)
    """
    return isinstance(name, str) and ENV_NAME_RE.fullmatch(name) is not None


def valid_container_name(name: object) -> bool:
    """Whether ``name`` may name a container (one lowercase DNS label).

    >>> valid_container_name("web-1"), valid_container_name("Web")
    (True, False)
    """
    return isinstance(name, str) and CONTAINER_NAME_RE.fullmatch(name) is not None


# -- readiness probes (ScalingGroup), checked by both sides -----------------------------------


@dataclass(frozen=True)
class Probe:
    """A scaling group's readiness probe, as both sides hold it (the SDK's ``ReadinessProbe`` adds its
    constructors; the daemon's ``ProbeSpec`` is this). Invalid values raise ValueError naming the field."""

    kind: str = "tcp"                  # "tcp": the port accepts; "http": a 2xx/3xx answer to GET path
    path: str = "/"
    period_seconds: float = 5.0
    timeout_seconds: float = 2.0
    failure_threshold: int = 3

    def __post_init__(self) -> None:
        problem = probe_problem(self.kind, self.path, self.period_seconds, self.timeout_seconds,
                                self.failure_threshold)
        if problem:
            raise ValueError(problem)


def probe_problem(kind: object, path: object, period_seconds: object, timeout_seconds: object,
                  failure_threshold: object) -> str | None:
    """What is wrong with a scaling group's readiness probe, naming the field; None when nothing is.

    >>> probe_problem("http", "health", 5, 2, 3)
    "readiness probe path must start with '/' and hold no spaces, control characters or '#', got 'health'"
    """
    if kind not in ("tcp", "http"):
        return f"readiness probe kind must be 'tcp' or 'http', got {kind!r}"
    if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in " \r\n\t#"):
        return (f"readiness probe path must start with '/' and hold no spaces, control characters or '#', "
                f"got {path!r}")
    for name, value in (("period_seconds", period_seconds), ("timeout_seconds", timeout_seconds)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            return f"readiness probe {name} must be a positive number of seconds, got {value!r}"
    t = failure_threshold
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        return f"readiness probe failure_threshold must be an integer >= 1, got {t!r}"
    return None


# -- image identity both sides compute ---------------------------------------------------

#: The step kinds of ``chalkcompute.Image`` (its builders make them, the daemon's builders honour them).
IMAGE_STEP_KINDS = frozenset({
    "pip_install", "uv_pip_install", "pip_install_from_requirements", "run_commands",
    "dockerfile_commands", "env", "workdir", "copy_file", "copy_dir", "lazy_file",
    "entrypoint", "cmd",
})


def image_step_canonical(kind: str, args: Sequence[str], env: Sequence[tuple[str, str]], path: str,
                         content: bytes, mode: int, mount_root: str, digest: str) -> str:
    """One image step's canonical text, as :func:`image_content_hash` hashes it: ``env`` sorted by
    key, file content by its sha256, the local source path left out (same content, same image)."""
    return json.dumps([kind, list(args), [list(kv) for kv in env], path, hashlib.sha256(content).hexdigest(),
                       mode or 0, mount_root, digest])


def image_content_hash(base: str, python_version: str, step_canonicals: Sequence[str]) -> str:
    """``Image.content_hash``: the SDK computes it when it builds an Image, the daemon recomputes
    it from a spec (its image cache key; a client's claim is not trusted). Never change it: built
    images are cached under it.

    >>> image_content_hash("python:3.11-slim-bookworm", "3.11", [])[:12]
    '0fd443bb9538'
    """
    canonical = [1, base, python_version or "", list(step_canonicals)]
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()

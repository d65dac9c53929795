"""How the SDK, the CLI and workers authenticate to chalkd.

The daemon keeps a token in ``<home>/token`` (0600). A client never sends it:

1. the client sends a random ``client_nonce`` (``Auth.Challenge``);
2. the daemon answers a ``server_nonce`` and ``HMAC(key, "chalkd-server" | cn | sn)``;
   the client checks it, so a listener that does not know the token is found
   out before anything else (code, arguments, ``local_secrets``) is sent;
3. the client sends ``HMAC(key, "chalkd-client" | cn | sn)`` as the
   ``x-chalk-session`` metadata of every RPC on that connection; the daemon
   checks it with one dict lookup (the warm path pays no crypto).

Once per connection: a new HTTP/2 connection (a daemon restart) does the
handshake again. The framed unix socket sends the same credential in its
first frame. Replicas use the same handshake with ``key_id`` = their replica
id and their own key, which the daemon scopes to what a replica may do.

    creds = SessionCredentials(target, key=find_token(target))
    creds.attach(channel)          # every RPC on channel now carries the session

Token discovery (:func:`find_token`): ``$CHALK_COMPUTE_TOKEN``, then
``$CHALKD_HOME/token``, then the per-user record the daemon wrote at start for
that target (:func:`record_dir`), then the default home's token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import ssl
import stat
from pathlib import Path

from grpclib import GRPCError
from grpclib.const import Status
from grpclib.events import SendRequest, listen

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import AuthStub

log = logging.getLogger(__name__)

METADATA_KEY = "x-chalk-session"
CHALLENGE_METHOD = "/chalk.v1.Auth/Challenge"
NONCE_BYTES = 16
MAX_OTHER_RECORDS = 32

TOKEN_HELP = (
    "chalkd needs its token: the SDK and CLI read $CHALK_COMPUTE_TOKEN, then $CHALKD_HOME/token, then the "
    "record a local chalkd writes for its address (under $XDG_RUNTIME_DIR/chalkd or ~/.config/chalkd/daemons), "
    "then the default home's token; on the daemon's machine `chalkd token show` prints it "
    "(set CHALK_COMPUTE_TOKEN to it)")


def server_proof(key: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the daemon shows to prove it knows ``key``."""
    return hmac.new(key, b"chalkd-server" + client_nonce + server_nonce, hashlib.sha256).digest()


def client_credential(key: bytes, client_nonce: bytes, server_nonce: bytes) -> str:
    """The per-connection session credential the client sends (hex)."""
    return hmac.new(key, b"chalkd-client" + client_nonce + server_nonce, hashlib.sha256).hexdigest()


# -- token discovery ------------------------------------------------------------------


def record_dir() -> Path:
    """The per-user directory of daemon records: ``$XDG_RUNTIME_DIR/chalkd``, else ``~/.config/chalkd/daemons``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "chalkd"
    return Path.home() / ".config" / "chalkd" / "daemons"


def normalize_target(target: str) -> str:
    """One spelling per address: ``unix:///p`` -> ``unix:/p``, ``[::1]:5`` -> ``::1:5``."""
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        return "unix:" + (path[2:] if path.startswith("//") else path)
    host, _, port = target.rpartition(":")
    return f"{host.strip('[]')}:{port}"


def record_name(target: str) -> str:
    """A file name for a target: ``127.0.0.1:50051`` -> ``127.0.0.1_50051-<hash>``."""
    target = normalize_target(target)
    return re.sub(r"[^A-Za-z0-9.-]", "_", target)[:120] + "-" + hashlib.sha256(target.encode()).hexdigest()[:8]


def _private(path: Path, is_kind, kind: str, mode: str) -> bool:
    """True when ``path`` is a ``kind`` (no symlink) owned by us and closed to others."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if not is_kind(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("ignoring %s: it must be a %s owned by uid %d with mode %s", path, kind, os.getuid(), mode)
        return False
    return True


def _private_file(path: Path) -> bool:
    return _private(path, stat.S_ISREG, "file", "0600")


def _private_dir(path: Path) -> bool:
    return _private(path, stat.S_ISDIR, "directory", "0700")


def read_token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def find_token(target: str) -> str | None:
    """The token for ``target``, found as the module docstring says; None when there is none."""
    tokens = find_tokens(target)
    return tokens[0] if tokens else None


def find_tokens(target: str) -> list[str]:
    """Candidate tokens for ``target``, best first: ``$CHALK_COMPUTE_TOKEN`` alone when set;
    else ``$CHALKD_HOME/token``, the record for ``target``, this user's other records (a
    daemon reached through a tunnel or proxy has another address), the default home's token.

    Trying several is safe: the daemon proves which one it knows before the client sends
    anything derived from any of them (:meth:`SessionCredentials.handshake`)."""
    env = os.environ.get("CHALK_COMPUTE_TOKEN")
    if env:
        return [env.strip()]
    found: list[str | None] = []  # a missing or empty file is None, dropped below
    home = os.environ.get("CHALKD_HOME")
    if home:
        found.append(read_token_file(Path(home) / "token"))
    rdir = record_dir()
    if _private_dir(rdir):
        own = rdir / record_name(target)
        others = sorted((p for p in rdir.iterdir() if p != own and not p.name.endswith(".tmp")),
                        key=lambda p: -p.stat().st_mtime)
        # Records of daemons killed without a clean stop stay behind: only the newest are tried.
        for path in (own, *others[:MAX_OTHER_RECORDS]):
            if path.exists() and _private_file(path):
                found.append(read_token_file(path))
    try:
        import platformdirs

        found.append(read_token_file(Path(platformdirs.user_data_dir("chalkd")) / "token"))
    except ImportError:  # the SDK alone, without the daemon's dependencies
        pass
    return list(dict.fromkeys(t for t in found if t))


def write_record(target: str, token: str) -> Path:
    """Write ``token`` for ``target`` into this user's record directory (0700 dir, 0600 file)."""
    rdir = record_dir()
    rdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _private_dir(rdir):
        raise PermissionError(f"{rdir} must be a directory owned by uid {os.getuid()} with mode 0700")
    path = rdir / record_name(target)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return path


def remove_record(target: str, token: str) -> None:
    """Remove the record for ``target`` if it still holds ``token`` (another daemon may have taken the port)."""
    path = record_dir() / record_name(target)
    if read_token_file(path) == token:
        path.unlink(missing_ok=True)


# -- the client side of the handshake ---------------------------------------------------


class SessionCredentials:
    """One per client channel: does the handshake once per connection, then tags every RPC.

    ``key`` None means no token was found: RPCs go out untagged and the daemon
    answers UNAUTHENTICATED with the fix (see :data:`TOKEN_HELP`).
    """

    def __init__(self, target: str, key: str | list[str] | None, key_id: str = "") -> None:
        self.target = target
        # Candidates, best first (see find_tokens); the daemon's proof picks the one it knows.
        self.keys = [k.encode() for k in ([key] if isinstance(key, str) else key or []) if k]
        self.key = self.keys[0] if self.keys else None
        self.key_id = key_id
        self.credential: str | None = None
        self._protocol = None  # the connection the credential belongs to
        self._lock: asyncio.Lock | None = None

    def attach(self, channel) -> None:
        async def on_send(event: SendRequest) -> None:
            if event.method_name == CHALLENGE_METHOD or self.key is None:
                return
            event.metadata[METADATA_KEY] = await self.for_connection(channel)

        listen(channel, SendRequest, on_send)

    async def for_connection(self, channel) -> str:
        """The credential for the channel's current connection, after a handshake when it is new."""
        # grpclib has connected before SendRequest fires; a new connection object means a new handshake.
        protocol = getattr(channel, "_protocol", None)
        if self.credential is not None and protocol is self._protocol:
            return self.credential
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.credential is None or getattr(channel, "_protocol", None) is not self._protocol:
                self.credential = await self.handshake(channel)
                self._protocol = getattr(channel, "_protocol", None)  # the handshake connected it
            return self.credential

    async def handshake(self, channel) -> str:
        """Challenge the daemon; return our credential only if it proved it knows the key."""
        assert self.key is not None
        cn = os.urandom(NONCE_BYTES)
        try:
            resp = await AuthStub(channel).Challenge(pb.ChallengeRequest(client_nonce=cn, key_id=self.key_id),
                                                     timeout=30)
        except GRPCError as exc:
            if exc.status is not Status.UNIMPLEMENTED:
                raise
            raise GRPCError(Status.UNAUTHENTICATED,
                            f"the server at {self.target} has no chalkd authentication: a chalkd older than this "
                            "SDK (upgrade it) or not chalkd; nothing was sent to it") from None
        for key in self.keys:
            if hmac.compare_digest(resp.server_proof, server_proof(key, cn, resp.server_nonce)):
                self.key = key
                return client_credential(key, cn, resp.server_nonce)
        raise GRPCError(
            Status.UNAUTHENTICATED,
            f"the server at {self.target} could not prove it knows chalkd's token, so nothing was sent to it: "
            "it is another chalkd (another home, or its token was rotated) or not chalkd at all; " + TOKEN_HELP)


async def framed_credential(creds: SessionCredentials, channel) -> bytes:
    """The credential for the first frame of a framed-socket stream (b"" without a key)."""
    if creds.key is None:
        return b""
    return (await creds.for_connection(channel)).encode()


REPLICA_KEY_FILE_ENV = "CHALK_REPLICA_KEY_FILE"


def credentials_for(target: str) -> SessionCredentials:
    """The credentials a client of ``target`` uses: inside a replica, its own scoped key for
    the daemon that started it (read from the read-only file the runtime handed over);
    elsewhere the token :func:`find_token` finds."""
    key_file, replica_id = os.environ.get(REPLICA_KEY_FILE_ENV), os.environ.get("CHALK_REPLICA_ID")
    worker_target = os.environ.get("CHALK_WORKER_TARGET")
    if key_file and replica_id and worker_target and normalize_target(target) == normalize_target(worker_target):
        return SessionCredentials(target, read_token_file(Path(key_file)), key_id=replica_id)
    return SessionCredentials(target, find_tokens(target))


def tls_from_env() -> str | bool | None:
    """``$CHALK_COMPUTE_TLS``: ``1``/``true`` for the system's roots, or a CA bundle path; unset: plain
    HTTP/2 (loopback, unix sockets). A daemon beyond loopback serves TLS only."""
    value = os.environ.get("CHALK_COMPUTE_TLS", "").strip()
    if not value or value.lower() in ("0", "false", "no"):
        return None
    return True if value.lower() in ("1", "true", "yes") else value


def client_ssl_context(credentials) -> ssl.SSLContext | None:
    """``credentials=`` as the SDK takes it: None (plain), an ``ssl.SSLContext``, a CA bundle
    path, or True (the system's roots)."""
    if credentials is None or credentials is False:
        return None
    if isinstance(credentials, ssl.SSLContext):
        ctx = credentials
    elif credentials is True:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    elif isinstance(credentials, (str, os.PathLike)):
        if not os.path.isfile(credentials):
            raise ValueError(f"credentials={str(credentials)!r}: no such CA bundle file")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(credentials))
    else:
        raise TypeError("credentials must be an ssl.SSLContext, a CA bundle path or True, "
                        f"got {type(credentials).__name__}")
    ctx.set_alpn_protocols(["h2"])
    return ctx

"""The daemon's side of authentication (the protocol is in :mod:`chalkcompute._auth`).

    auth = Authenticator(home, replica_key=scaler_key_lookup)
    auth.install(grpc_server)          # every RPC needs a session credential
    scope = auth.scope_of(credential)  # one dict lookup: FULL, a ReplicaScope, or None

Credentials are per connection, made by ``Auth.Challenge``: a challenge
answered with the daemon's token gives full access; one answered with a
replica's own key (``key_id`` = its replica id) gives a :class:`Scope` that
only reaches that replica's worker stream, the calls it submits and the
volumes. Without a credential only ``Auth.Challenge`` and a bare ``Status``
("a chalkd is here: authenticate") answer; everything else is UNAUTHENTICATED.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grpclib.events import RecvRequest, listen

from chalkcompute._auth import METADATA_KEY, TOKEN_HELP, client_credential, server_proof
from chalkcompute._contract import quote
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import AuthBase
from chalkd.errors import ChalkdError, InvalidArgument, PermissionDenied, Unauthenticated
from chalkd.services.errors import grpc_errors, to_grpc

log = logging.getLogger(__name__)

MAX_PENDING = 4096      # answered challenges not used yet (anyone can make these: bounded separately)
MAX_SESSIONS = 65536    # credentials that were used at least once


@dataclass(frozen=True)
class Scope:
    """Who a credential speaks for: the daemon's owner (``replica_id`` "") or one replica."""

    replica_id: str = ""

    @property
    def full(self) -> bool:
        return not self.replica_id


FULL = Scope()

# The scope of the RPC being handled (set per request, before its handler runs).
current_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("chalkd_scope", default=None)

# What a replica's credential reaches. Everything else is PERMISSION_DENIED.
REPLICA_METHODS = frozenset({
    "/chalk.v1.Worker/Connect",              # its own stream only (checked in WorkerService)
    "/chalk.v1.Queue/Session",               # nested calls, from_id().get()/cancel
    "/chalk.v1.FunctionCatalog/Status",
    "/chalk.v1.FunctionCatalog/GetFunction",  # Function.from_name for nested calls
    "/chalk.v1.FunctionCatalog/WaitReady",
    "/chalk.v1.FunctionCatalog/GetCall",
    "/chalk.v1.Volumes/Get",
    "/chalk.v1.Volumes/ListFiles",
    "/chalk.v1.Volumes/ReadFile",
    "/chalk.v1.Volumes/WriteFiles",
    "/chalk.v1.Volumes/RemoveFile",
})
OPEN_METHODS = frozenset({"/chalk.v1.Auth/Challenge"})
STATUS_METHOD = "/chalk.v1.FunctionCatalog/Status"


def load_or_create_token(home: Path) -> str:
    """``<home>/token``: made at first start (0600); refused when others can read it or it is a symlink."""
    path = Path(home) / "token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or st.st_uid != os.getuid():
            raise PermissionError(
                f"{path} must be a regular file owned by uid {os.getuid()} with mode 0600 "
                f"(is mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}); fix it or remove it to make a new token"
            ) from None
        token = path.read_text().strip()
        if len(token) < 16:
            raise PermissionError(
                f"{path} holds no usable token; remove it to make a new one (`chalkd token rotate`)") from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("made a new token in %s", path)
    return token


def rotate_token(home: Path) -> str:
    """Write a new token to ``<home>/token``; a running daemon picks it up on restart."""
    path = Path(home) / "token"
    tmp = path.with_name(f"token.{os.getpid()}.tmp")
    token = secrets.token_urlsafe(32)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


class Authenticator(AuthBase):
    """The ``Auth`` service plus the per-request check installed on gRPC servers."""

    def __init__(self, token: str, replica_key: Callable[[str], str | None]) -> None:
        self.token = token
        self.replica_key = replica_key  # replica id -> its key while it runs, else None
        self.pending: OrderedDict[str, Scope] = OrderedDict()
        self.sessions: OrderedDict[str, Scope] = OrderedDict()

    @grpc_errors
    async def Challenge(self, stream) -> None:
        req = await stream.recv_message()
        if len(req.client_nonce) < 16:
            raise InvalidArgument("client_nonce must be at least 16 random bytes")
        if req.key_id:
            key = self.replica_key(req.key_id)
            if key is None:
                raise Unauthenticated(f"no running replica {quote(req.key_id)} on this daemon")
            scope = Scope(req.key_id)
        else:
            key, scope = self.token, FULL
        sn = os.urandom(16)
        k = key.encode()
        self.pending[client_credential(k, req.client_nonce, sn)] = scope
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)
        proof = server_proof(k, req.client_nonce, sn)
        await stream.send_message(pb.ChallengeResponse(server_nonce=sn, server_proof=proof))

    def scope_of(self, credential: str | None) -> Scope | None:
        """The scope of a credential, or None: a dict lookup on the warm path."""
        if not credential:
            return None
        scope = self.sessions.get(credential)
        if scope is None:
            scope = self.pending.pop(credential, None)
            if scope is None:
                return None
            self.sessions[credential] = scope
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        if scope.replica_id and self.replica_key(scope.replica_id) is None:
            return None  # the replica stopped: its credential dies with it
        return scope

    def forget_replica(self, replica_id: str) -> None:
        """Drop a stopped replica's sessions (their lookups already fail; this frees the entries)."""
        for table in (self.pending, self.sessions):
            for cred in [c for c, s in table.items() if s.replica_id == replica_id]:
                del table[cred]

    def check(self, method_name: str, credential: str | None) -> Scope:
        """The scope for one RPC, or the Unauthenticated/PermissionDenied that refuses it."""
        scope = self.scope_of(credential)
        if scope is None:
            if credential:
                raise Unauthenticated(
                    "this connection's chalkd session is unknown (the daemon restarted, or the token "
                    "was rotated): reconnect; " + TOKEN_HELP)
            raise Unauthenticated("a chalkd is here: authenticate. " + TOKEN_HELP)
        if scope.replica_id and method_name not in REPLICA_METHODS:
            raise PermissionDenied(
                f"replica {scope.replica_id}'s credential does not allow {method_name} "
                "(function code may call functions, read its calls and use volumes, nothing more)")
        return scope

    def install(self, server) -> None:
        """Check every RPC on ``server`` before its handler runs."""

        async def on_request(event: RecvRequest) -> None:
            if event.method_name in OPEN_METHODS:
                return
            values = event.metadata.getall(METADATA_KEY, ()) if hasattr(event.metadata, "getall") else ()
            # grpclib runs this listener in the request's own task, right before the handler.
            try:
                scope = self.check(event.method_name, values[0] if values else None)
            except ChalkdError as exc:  # grpclib answers a listener's GRPCError as the RPC's status
                raise to_grpc(exc) from None
            current_scope.set(scope)

        listen(server, RecvRequest, on_request)

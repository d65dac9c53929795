"""The authenticator's bookkeeping and the token files (no daemon needed)."""

from __future__ import annotations

import asyncio
import os

import pytest
from grpclib.const import Status

from chalkcompute import _auth
from chalkd import auth
from chalkd.auth import FULL, Authenticator, Scope, load_or_create_token, rotate_token
from chalkd.errors import PermissionDenied, Unauthenticated
from chalkd.services.errors import status_of

pytestmark = pytest.mark.timeout(30)


class _Stream:
    def __init__(self, request) -> None:
        self.request = request
        self.sent = []

    async def recv_message(self):
        return self.request

    async def send_message(self, message) -> None:
        self.sent.append(message)


def _challenge(a: Authenticator, key: str, key_id: str = "") -> str:
    """The client's side of one handshake, against ``a``; returns the credential."""
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

    cn = os.urandom(16)
    stream = _Stream(pb.ChallengeRequest(client_nonce=cn, key_id=key_id))
    asyncio.run(a.Challenge(stream))
    [resp] = stream.sent
    assert resp.server_proof == _auth.server_proof(key.encode(), cn, resp.server_nonce)
    return _auth.client_credential(key.encode(), cn, resp.server_nonce)


def test_token_made_once_0600_and_refused_when_others_can_read_it(tmp_path):
    token = load_or_create_token(tmp_path)
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(tmp_path) == token
    os.chmod(tmp_path / "token", 0o644)
    with pytest.raises(PermissionError, match="mode 0600"):
        load_or_create_token(tmp_path)
    os.chmod(tmp_path / "token", 0o600)
    assert rotate_token(tmp_path) != token


def test_a_credential_is_a_dict_lookup_and_scopes_replicas():
    keys = {"r-1": "replica-one-key-0123456789"}
    a = Authenticator("owner-token-0123456789", keys.get)
    owner = _challenge(a, "owner-token-0123456789")
    assert a.check("/chalk.v1.Secrets/ListSecrets", owner) is FULL
    rep = _challenge(a, keys["r-1"], key_id="r-1")
    assert a.check("/chalk.v1.Queue/Session", rep) == Scope("r-1")
    with pytest.raises(PermissionDenied) as denied:
        a.check("/chalk.v1.Secrets/ListSecrets", rep)
    status, message = status_of(denied.value)
    assert status == Status.PERMISSION_DENIED and "ListSecrets" in message
    with pytest.raises(Unauthenticated) as unknown:
        a.check("/chalk.v1.Queue/Session", "f" * 64)
    status, message = status_of(unknown.value)
    assert status == Status.UNAUTHENTICATED and "reconnect" in message
    del keys["r-1"]  # the replica stopped: its credential dies with it
    with pytest.raises(Unauthenticated):
        a.check("/chalk.v1.Queue/Session", rep)


def test_unused_challenges_are_bounded_and_cannot_evict_sessions(monkeypatch):
    monkeypatch.setattr(auth, "MAX_PENDING", 8)
    a = Authenticator("owner-token-0123456789", lambda rid: None)
    used = _challenge(a, "owner-token-0123456789")
    assert a.check("/chalk.v1.Queue/Session", used) is FULL
    for _ in range(50):  # anyone can ask for challenges
        _challenge(a, "owner-token-0123456789")
    assert len(a.pending) == 8
    assert a.check("/chalk.v1.Queue/Session", used) is FULL


def test_find_tokens_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("CHALK_COMPUTE_TOKEN", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text("home-token\n")
    monkeypatch.setenv("CHALKD_HOME", str(home))
    _auth.write_record("127.0.0.1:7", "record-token")
    assert _auth.find_tokens("127.0.0.1:7")[:2] == ["home-token", "record-token"]
    monkeypatch.setenv("CHALK_COMPUTE_TOKEN", "env-token")
    assert _auth.find_tokens("127.0.0.1:7") == ["env-token"]
    # A record readable by others is ignored.
    monkeypatch.delenv("CHALK_COMPUTE_TOKEN")
    monkeypatch.delenv("CHALKD_HOME")
    os.chmod(_auth.record_dir() / _auth.record_name("127.0.0.1:7"), 0o644)
    assert "record-token" not in _auth.find_tokens("127.0.0.1:7")

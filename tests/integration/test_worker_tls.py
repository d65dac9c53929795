"""Workers dialing chalkd over TCP + TLS, as workers on other swarm nodes do.

The daemon serves TLS on its TCP listener with a certificate chalkd.tls made
(``--tls-cert``/``--tls-key``); workers get chalkd's CA as ``$CHALK_COMPUTE_TLS``
and ``CHALK_TRANSPORT=grpc`` keeps them off the local framed socket, so their
worker stream and nested calls go over TCP + TLS. The hostile cases start
``python -m chalkcompute.worker`` by hand, as a process on another node would:
without a credential, with another replica's key, with a replica id the daemon
did not start, against a server whose certificate another CA signed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from chalkd.tls import ensure_worker_tls
from tests.conftest import ROOT, Daemon

pytestmark = pytest.mark.timeout(180)
PROBE = Path(__file__).with_name("worker_probe.py")


def _where(x: int) -> dict:
    """Runs in a replica: how its worker reached the daemon."""
    import os

    import psutil

    port = int(os.environ["CHALK_WORKER_TARGET"].rsplit(":", 1)[1])
    tcp = [c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port]
    return {"x": x, "tcp_to_daemon": len(tcp), "tls": os.environ.get("CHALK_COMPUTE_TLS", ""),
            "transport": os.environ.get("CHALK_TRANSPORT", "")}


def _nested(x: int) -> int:
    """Runs in a replica: a nested call, through chalkcompute._client.Client over TCP + TLS."""
    import os

    import chalkcompute as cc

    return cc.RemoteFunction.from_name("tls-where", target=os.environ["CHALK_COMPUTE_TARGET"])(x)["x"] * 2


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("worker-tls")
    certs = base / "certs"
    certs.mkdir(mode=0o700)
    tls = ensure_worker_tls(certs, ["127.0.0.1"])
    ca = certs / "tls" / "ca.pem"
    d = Daemon(base / "home", extra_args=("--tls-cert", str(tls.cert_path), "--tls-key", str(tls.key_path),
                                          "--replica-env", "CHALK_COMPUTE_TLS"),
               env={"CHALK_COMPUTE_TLS": str(ca)}).start()
    mp = pytest.MonkeyPatch()
    mp.setenv("CHALK_COMPUTE_TLS", str(ca))
    mp.setenv("CHALKD_HOME", str(d.home))
    mp.delenv("CHALK_COMPUTE_TOKEN", raising=False)
    try:
        yield d, ca
    finally:
        mp.undo()
        d.stop()


@pytest.fixture(scope="module")
def two_replicas(tls_daemon):
    """Two running replicas whose workers dialed over TCP + TLS: [(replica id, its key file)]."""
    import chalkcompute as cc

    d, _ = tls_daemon
    env = {"CHALK_TRANSPORT": "grpc"}  # off the local socket: the worker link and nested calls use TCP + TLS
    where = cc.RemoteFunction(_where, name="tls-where", env=env, min_replicas=1, target=d.target)
    nested = cc.RemoteFunction(_nested, name="tls-nested", env=env, min_replicas=1, target=d.target)
    got = where(7)
    doubled = nested(5)
    keys = sorted((d.home / "replica-keys").iterdir())
    assert len(keys) >= 2, d.log()
    return got, doubled, [(p.name, p) for p in keys]


def test_a_replica_worker_dials_over_tls_and_nested_calls_work(tls_daemon, two_replicas):
    d, ca = tls_daemon
    got, doubled, _ = two_replicas
    assert got["transport"] == "grpc" and got["tls"] == str(ca)
    # Its worker link is a TCP connection to the daemon's TLS listener (a plain one would get no answer).
    assert got["tcp_to_daemon"] >= 1, got
    assert doubled == 10  # a nested call from inside a replica, over TCP + TLS with its scoped key


def _worker(d: Daemon, tmp_path: Path, *, replica_id: str, key: str | None, ca: Path | None,
            port: int | None = None) -> subprocess.CompletedProcess:
    """``python -m chalkcompute.worker`` started by hand, as on another node: how it ends."""
    key_file = tmp_path / f"key-{os.urandom(4).hex()}"
    key_file.write_text(key or "")
    os.chmod(key_file, 0o600)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHALK_", "CHALKD_")) or k == "CHALK_REGISTER_AT_EXIT"}
    env.update(CHALK_WORKER_TARGET=f"127.0.0.1:{port or d.port}", CHALK_REPLICA_ID=replica_id,
               CHALK_REPLICA_KEY_FILE=str(key_file), CHALK_TRANSPORT="grpc", CHALK_RECONNECT_TIMEOUT="1")
    if ca is not None:
        env["CHALK_COMPUTE_TLS"] = str(ca)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "chalkcompute.worker"], capture_output=True, text=True,
                          timeout=90, cwd=tmp_path, env=env)


def _probe(**args: str) -> dict:
    """tests/integration/worker_probe.py's answer: what an attacker's own client got."""
    run = subprocess.run([sys.executable, str(PROBE), json.dumps(args)], capture_output=True, text=True,
                         timeout=90, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _refused(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode != 0, run.stdout + run.stderr
    assert "UNAUTHENTICATED" in run.stderr or "PERMISSION_DENIED" in run.stderr \
        or "certificate verify failed" in run.stderr, run.stderr
    for word in words:
        assert word in run.stderr, run.stderr


def test_a_worker_without_its_credential_cannot_connect(tls_daemon, two_replicas, tmp_path):
    d, ca = tls_daemon
    (rid, _), _ = two_replicas[2][:2]
    run = _worker(d, tmp_path, replica_id=rid, key=None, ca=ca)
    # grpclib reports the daemon's UNAUTHENTICATED, or the stream reset that ends it when the reset wins.
    assert run.returncode != 0 and ("UNAUTHENTICATED" in run.stderr or "Stream reset by remote party" in run.stderr), \
        run.stderr

    # An attacker's own client: the hello, even with the right key, on a connection with no session.
    got = _probe(target=d.target, ca=str(ca), hello_id=rid, hello_token=(d.home / "replica-keys" / rid).read_text())
    assert got["messages"] == 0, got  # no function version, no secret env came back
    assert got["status"] == "UNAUTHENTICATED" or got["error"] == "StreamTerminatedError", got


def test_a_worker_with_another_replicas_key_cannot_connect(tls_daemon, two_replicas, tmp_path):
    d, ca = tls_daemon
    (a, _), (_, b_key) = two_replicas[2][:2]
    # The daemon proves itself with A's key; B's key cannot check that proof, so nothing is sent.
    _refused(_worker(d, tmp_path, replica_id=a, key=b_key.read_text(), ca=ca), "could not prove")


def test_a_replicas_key_under_an_id_the_daemon_did_not_start_is_refused(tls_daemon, two_replicas, tmp_path):
    d, ca = tls_daemon
    (_, a_key), _ = two_replicas[2][:2]
    _refused(_worker(d, tmp_path, replica_id="r-notstarted0000", key=a_key.read_text(), ca=ca),
             "no running replica")


def test_a_replicas_credential_cannot_open_another_replicas_worker_stream(tls_daemon, two_replicas):
    # With A's own credential (its key, its id), a hello naming B is refused before B's stream opens.
    d, ca = tls_daemon
    (a, a_key), (b, b_key) = two_replicas[2][:2]

    got = _probe(target=d.target, ca=str(ca), session_id=a, session_key=a_key.read_text(),
                 hello_id=b, hello_token=b_key.read_text())
    assert got["messages"] == 0 and got["status"] == "PERMISSION_DENIED" and b in got["message"], got


def test_a_worker_without_chalkds_ca_gets_no_answer(tls_daemon, two_replicas, tmp_path):
    d, _ = tls_daemon
    (a, a_key), _ = two_replicas[2][:2]
    run = _worker(d, tmp_path, replica_id=a, key=a_key.read_text(), ca=None)  # plain HTTP/2 to a TLS listener
    # The TLS listener drops the plain connection: not even the challenge is answered.
    assert run.returncode != 0 and "Connection lost" in run.stderr, run.stdout + run.stderr


def test_a_worker_refuses_a_server_signed_by_another_ca_and_sends_nothing(tls_daemon, two_replicas, tmp_path):
    # A listener that is not chalkd (another CA's certificate for the same IP) gets no byte of the
    # worker's: the TLS handshake fails at the worker before the replica key's challenge goes out.
    d, ca = tls_daemon
    (a, a_key), _ = two_replicas[2][:2]
    other_home = tmp_path / "other"
    other_home.mkdir(mode=0o700)
    other = ensure_worker_tls(other_home, ["127.0.0.1"])
    received: list[bytes] = []
    handshakes: list[str] = []

    async def run() -> subprocess.CompletedProcess:
        async def serve(reader, writer):
            handshakes.append("tls")  # only reached when the handshake completed
            try:
                while data := await reader.read(65536):
                    received.append(data)
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda *_: None)  # the refused handshakes, logged by asyncio
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=other.server_context())
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(_worker, d, tmp_path, replica_id=a, key=a_key.read_text(), ca=ca,
                                           port=port)
        finally:
            server.close()
            await server.wait_closed()

    run = asyncio.run(asyncio.wait_for(run(), 120))
    _refused(run, "certificate verify failed")
    assert handshakes == [] and received == []
    assert psutil.pid_exists(d.proc.pid)  # the daemon itself was never involved
